// Read-only file contents, either memory-mapped or read into an owned buffer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace cliprt {

class MappedFile {
 public:
  // Throws IOError when the file cannot be opened, mapped or read.
  static std::shared_ptr<MappedFile> open(const std::string& path, bool mmap);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  bool mapped() const { return mapped_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  void* owned_ = nullptr;
};

// 64-byte aligned, growable byte buffer for in-memory segments.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  ~AlignedBytes();
  AlignedBytes(const AlignedBytes&) = delete;
  AlignedBytes& operator=(const AlignedBytes&) = delete;
  // Grows to at least n bytes, keeping the first `keep` bytes; new bytes are zero.
  void grow(size_t n, size_t keep);
  uint8_t* data() const { return p_; }
  size_t capacity() const { return cap_; }

 private:
  uint8_t* p_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace cliprt
