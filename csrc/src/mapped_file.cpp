#include "cliprt/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "cliprt/errors.h"

namespace cliprt {

void throw_errno(const std::string& what, const std::string& path) {
  throw IOError(what + " '" + path + "': " + std::strerror(errno));
}

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path, bool use_mmap) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) { ::close(fd); throw_errno("cannot stat", path); }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = size_t(st.st_size);
  if (f->size_ == 0) { ::close(fd); return f; }
  if (use_mmap) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw_errno("cannot mmap", path);
    f->data_ = static_cast<const uint8_t*>(p);
    f->mapped_ = true;
    return f;
  }
  void* buf = nullptr;
  if (::posix_memalign(&buf, 4096, f->size_) != 0) { ::close(fd); throw std::bad_alloc(); }
  f->owned_ = buf;
  size_t done = 0;
  while (done < f->size_) {
    ssize_t r = ::read(fd, static_cast<uint8_t*>(buf) + done, f->size_ - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { ::close(fd); throw_errno("cannot read", path); }
    done += size_t(r);
  }
  ::close(fd);
  f->data_ = static_cast<const uint8_t*>(buf);
  return f;
}

MappedFile::~MappedFile() {
  if (mapped_ && data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  std::free(owned_);
}

AlignedBytes::~AlignedBytes() { std::free(p_); }

void AlignedBytes::grow(size_t n, size_t keep) {
  if (n <= cap_) return;
  void* q = nullptr;
  size_t alloc = (n + 63) / 64 * 64;
  if (::posix_memalign(&q, 64, alloc) != 0) throw std::bad_alloc();
  if (p_ && keep) std::memcpy(q, p_, keep);
  std::memset(static_cast<uint8_t*>(q) + keep, 0, alloc - keep);
  std::free(p_);
  p_ = static_cast<uint8_t*>(q);
  cap_ = alloc;
}

}  // namespace cliprt
