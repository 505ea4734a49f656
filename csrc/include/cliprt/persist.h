// On-disk format (version 1). An index is a directory:
//   MANIFEST                  text, last line "end <xxh64 of all bytes before it>"
//   seg-G-I.cseg              one segment: 4 KiB header, then 4 KiB-aligned sections
//                             ids int64 (rows) | scale f32 (rows) | codes (packed blocks)
//                             | originals f32 (rows, dim); each section has its xxh64
//   seg-G-I.cseg.del-G2       deletion bitmap of that segment (same container format)
//   LOCK                      the writers' lock (dir_lock.h); readers never touch it
// A save takes LOCK, writes new files (each through a uniquely named temporary), fsyncs
// them, then atomically renames a temporary manifest over MANIFEST and fsyncs the directory.
// A save killed at any moment leaves the previous MANIFEST and every file it names intact.
// Files are removed only when neither the new manifest nor the one it replaced names them:
// a reader that read the previous manifest still finds its files, and a reader slower than
// a whole further save sees a file vanish, re-reads MANIFEST and starts over (Index::load).
// Why a grace generation and not pinning (LevelDB/RocksDB pin the versions live readers use,
// inside one process): pins across processes would need readers to write (a pin file, a
// shared lock), and readers here never write. A reader needs the files only between reading
// MANIFEST and opening them: once open (mapped or read), a removed file's inode lives on.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cliprt/mapped_file.h"
#include "cliprt/types.h"

namespace cliprt {

constexpr uint32_t kFormatVersion = 1;
// Bounds every loader applies to sizes read from a file before any arithmetic with them, so
// a crafted header cannot wrap a size product or ask for an absurd allocation.
constexpr uint64_t kMaxRows = uint64_t(1) << 40;
constexpr int kMaxDim = 65536;

enum class SectionKind : uint32_t { Ids = 1, Scale = 2, Codes = 3, Originals = 4, Deleted = 5 };

struct SectionData {
  SectionKind kind;
  const void* data;
  uint64_t bytes;
};

struct SectionInfo {
  SectionKind kind;
  uint64_t offset = 0, bytes = 0, hash = 0;
};

struct ContainerHeader {
  uint32_t file_kind = 0;  // 'S' segment, 'D' deletions
  uint32_t storage = 0, dim = 0, flags = 0;
  uint64_t rows = 0;
  std::vector<SectionInfo> sections;
};

// Writes header + sections to `path` (via path.tmp, fsync, rename). Returns the header hash.
uint64_t write_container(const std::string& path, const ContainerHeader& h,
                         const std::vector<SectionData>& sections);
// Parses and checks the header against the file size; throws FormatError naming the file.
ContainerHeader read_container_header(const MappedFile& f);
const SectionInfo* find_section(const ContainerHeader& h, SectionKind kind);
void verify_section(const MappedFile& f, const SectionInfo& s, const char* what);
uint64_t container_header_hash(const MappedFile& f);

struct ManifestSegment {
  std::string file;
  int64_t rows = 0;
  uint64_t hash = 0;       // header hash of the segment file
  std::string del_file;    // empty when nothing is deleted
  uint64_t del_hash = 0;
};

struct Manifest {
  uint64_t generation = 0;
  int dim = 0;
  Metric metric = Metric::Cosine;
  Storage storage = Storage::F32;
  bool keep_originals = false;
  int64_t next_id = 0;
  std::vector<ManifestSegment> segments;
};

std::string manifest_to_text(const Manifest& m);
Manifest manifest_from_text(const std::string& text, const std::string& path);  // FormatError

void fsync_dir(const std::string& dir);
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace cliprt
