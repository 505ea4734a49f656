// Container files: a 4 KiB header (magic, version, fields, section table, header hash) and
// 4 KiB-aligned sections, so a mapped section is page- and cache-line-aligned.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cliprt/dir_lock.h"
#include "cliprt/errors.h"
#include "cliprt/hash.h"
#include "cliprt/persist.h"

namespace cliprt {
namespace {

constexpr char kMagic[8] = {'C', 'L', 'I', 'P', 'R', 'T', 'C', '1'};
constexpr size_t kHeaderBytes = 4096;
constexpr uint32_t kMaxSections = 8;

// Fixed header fields, little-endian, followed by the section table and the header hash.
struct RawHeader {
  char magic[8];
  uint32_t version;
  uint32_t file_kind;
  uint32_t storage;
  uint32_t dim;
  uint32_t flags;
  uint32_t nsections;
  uint64_t rows;
};
struct RawSection {
  uint32_t kind;
  uint32_t reserved;
  uint64_t offset;
  uint64_t bytes;
  uint64_t hash;
};
constexpr size_t kHashOffset = sizeof(RawHeader) + kMaxSections * sizeof(RawSection);

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n > (1u << 30) ? (1u << 30) : n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw_errno("cannot write", path);
    p += w;
    n -= size_t(w);
  }
}

[[noreturn]] void bad(const MappedFile& f, const std::string& what) {
  throw FormatError("corrupt index file '" + f.path() + "': " + what);
}

}  // namespace

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open directory", dir);
  if (::fsync(fd) != 0) { ::close(fd); throw_errno("cannot fsync directory", dir); }
  ::close(fd);
}

// Writes through a temporary file of a name no other writer uses, created with O_EXCL and
// O_NOFOLLOW (a file or symlink planted under a temporary name is never written through),
// then renames it over `path` (rename replaces a symlink there, it does not follow it).
static void write_synced(const std::string& path, const std::vector<std::pair<const void*, size_t>>& parts) {
  std::string tmp;
  int fd = create_temp_file(path, &tmp);
  try {
    for (auto& p : parts) write_all(fd, p.first, p.second, tmp);
    if (::fsync(fd) != 0) throw_errno("cannot fsync", tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    errno = err;
    throw_errno("cannot rename into", path);
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  write_synced(path, {{contents.data(), contents.size()}});
}

uint64_t write_container(const std::string& path, const ContainerHeader& h,
                         const std::vector<SectionData>& sections) {
  CLIPRT_ASSERT(sections.size() <= kMaxSections);
  std::vector<uint8_t> header(kHeaderBytes, 0);
  RawHeader rh{};
  std::memcpy(rh.magic, kMagic, 8);
  rh.version = kFormatVersion;
  rh.file_kind = h.file_kind;
  rh.storage = h.storage;
  rh.dim = h.dim;
  rh.flags = h.flags;
  rh.nsections = uint32_t(sections.size());
  rh.rows = h.rows;
  std::memcpy(header.data(), &rh, sizeof rh);
  std::vector<std::pair<const void*, size_t>> parts;
  parts.push_back({header.data(), header.size()});
  static const std::vector<uint8_t> zeros(4096, 0);
  size_t offset = kHeaderBytes;
  for (size_t i = 0; i < sections.size(); ++i) {
    RawSection rs{};
    rs.kind = uint32_t(sections[i].kind);
    rs.offset = offset;
    rs.bytes = sections[i].bytes;
    rs.hash = xxh64(sections[i].data, sections[i].bytes);
    std::memcpy(header.data() + sizeof rh + i * sizeof rs, &rs, sizeof rs);
    if (sections[i].bytes) parts.push_back({sections[i].data, sections[i].bytes});
    size_t next = align_up(offset + sections[i].bytes, 4096);
    if (next - offset - sections[i].bytes) parts.push_back({zeros.data(), next - offset - sections[i].bytes});
    offset = next;
  }
  uint64_t hh = xxh64(header.data(), kHashOffset);
  std::memcpy(header.data() + kHashOffset, &hh, 8);
  write_synced(path, parts);
  return hh;
}

uint64_t container_header_hash(const MappedFile& f) {
  uint64_t hh;
  std::memcpy(&hh, f.data() + kHashOffset, 8);
  return hh;
}

ContainerHeader read_container_header(const MappedFile& f) {
  if (f.size() < kHeaderBytes) bad(f, "truncated header (" + std::to_string(f.size()) + " bytes)");
  RawHeader rh;
  std::memcpy(&rh, f.data(), sizeof rh);
  if (std::memcmp(rh.magic, kMagic, 8) != 0) bad(f, "bad magic (not a cliprt index file)");
  if (xxh64(f.data(), kHashOffset) != container_header_hash(f)) bad(f, "header checksum mismatch");
  if (rh.version != kFormatVersion)
    bad(f, "unsupported format version " + std::to_string(rh.version) + " (this build reads " +
               std::to_string(kFormatVersion) + ")");
  if (rh.nsections > kMaxSections) bad(f, "bad section count");
  ContainerHeader h;
  h.file_kind = rh.file_kind;
  h.storage = rh.storage;
  h.dim = rh.dim;
  h.flags = rh.flags;
  h.rows = rh.rows;
  // Every size derived from these fields below stays far from 2^64: rows < 2^40, dim <= 2^16.
  if (rh.rows >= kMaxRows) bad(f, "row count " + std::to_string(rh.rows) + " is over the format's limit of 2^40");
  if (rh.dim > uint32_t(kMaxDim)) bad(f, "dim " + std::to_string(rh.dim) + " is over the format's limit of 65536");
  for (uint32_t i = 0; i < rh.nsections; ++i) {
    RawSection rs;
    std::memcpy(&rs, f.data() + sizeof rh + i * sizeof rs, sizeof rs);
    if (rs.offset < kHeaderBytes || rs.offset > f.size() || rs.bytes > f.size() - rs.offset)
      bad(f, "truncated: section " + std::to_string(i) + " ends past the end of the file");
    if (rs.offset % kHeaderBytes != 0)
      bad(f, "section " + std::to_string(i) + " at offset " + std::to_string(rs.offset) + " is not 4 KiB-aligned");
    for (auto& other : h.sections) {
      if (uint32_t(other.kind) == rs.kind) bad(f, "section kind " + std::to_string(rs.kind) + " listed twice");
      if (rs.bytes && other.bytes && rs.offset < other.offset + other.bytes && other.offset < rs.offset + rs.bytes)
        bad(f, "section " + std::to_string(i) + " overlaps another section");
    }
    h.sections.push_back({static_cast<SectionKind>(rs.kind), rs.offset, rs.bytes, rs.hash});
  }
  return h;
}

const SectionInfo* find_section(const ContainerHeader& h, SectionKind kind) {
  for (auto& s : h.sections)
    if (s.kind == kind) return &s;
  return nullptr;
}

void verify_section(const MappedFile& f, const SectionInfo& s, const char* what) {
  if (xxh64(f.data() + s.offset, s.bytes) != s.hash) bad(f, std::string(what) + " checksum mismatch");
}

}  // namespace cliprt
