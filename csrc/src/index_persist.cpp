// Saving and loading the CPU index (the file format and the commit protocol are in persist.h).
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "cliprt/codec.h"
#include "cliprt/dir_lock.h"
#include "cliprt/errors.h"
#include "cliprt/hash.h"
#include "cliprt/index.h"
#include "cliprt/persist.h"

namespace cliprt {

namespace {
constexpr uint32_t kSegmentFile = 'S';
constexpr uint32_t kDeletionFile = 'D';

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string canonical_dir(const std::string& dir) {
  char buf[PATH_MAX];
  if (!::realpath(dir.c_str(), buf)) throw_errno("cannot resolve", dir);
  return buf;
}

// Names an index directory may contain: the manifest, segment and deletion files, the
// writers' lock, and the temporaries of an interrupted save ("NAME.tmp-PID-N"; "MANIFEST.tmp"
// from older builds).
bool is_index_file_name(const std::string& n) {
  return n == "MANIFEST" || n == "LOCK" || n.rfind("MANIFEST.tmp", 0) == 0 ||
         (n.rfind("seg-", 0) == 0 && n.find(".cseg") != std::string::npos);
}

// Files a manifest names.
void add_names(const Manifest& m, std::set<std::string>* out) {
  for (auto& s : m.segments) {
    out->insert(s.file);
    if (!s.del_file.empty()) out->insert(s.del_file);
  }
}

// A file the manifest names is gone: a writer removed it after this load read MANIFEST.
struct Vanished {
  std::string path;
};

struct SegmentSnapshot {
  std::shared_ptr<Segment> seg;
  DeletionBitmap deleted;
  bool del_dirty;
};

std::string read_text_file(const std::string& path) {
  constexpr off_t kMaxManifestBytes = off_t(1) << 28;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && (!S_ISREG(st.st_mode) || st.st_size > kMaxManifestBytes))
    throw FormatError("corrupt index manifest '" + path + "': not a regular file of at most 256 MiB");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_errno("cannot open", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

void Index::save(const std::string& dir_in, double lock_timeout_s) {
  std::lock_guard<std::mutex> save_lock(save_mu_);
  if (::mkdir(dir_in.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("cannot create directory", dir_in);
  const std::string dir = canonical_dir(dir_in);
  const std::string manifest_path = dir + "/MANIFEST";
  // Refuse a directory that holds something else before creating LOCK in it.
  {
    DIR* d = ::opendir(dir.c_str());
    if (!d) throw_errno("cannot list", dir);
    bool foreign = false;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != ".." && !is_index_file_name(n)) foreign = true;
    }
    ::closedir(d);
    if (foreign && !file_exists(manifest_path))
      throw ValueError("'" + dir_in + "' exists, is not empty and is not a cliprt index: refusing to write into it");
  }
  // 0. One writer at a time; everything below sees the directory as the last writer left it.
  auto dir_lock = DirLock::acquire(dir, lock_timeout_s, "index directory");
  uint64_t disk_generation = 0;
  bool previous_ok = false;
  Manifest previous;
  if (file_exists(manifest_path)) {
    try {
      previous = manifest_from_text(read_text_file(manifest_path), manifest_path);
      disk_generation = previous.generation;
      previous_ok = true;
    } catch (const FormatError&) {
      // Replacing a damaged index is allowed; its generation is unknown, so jump ahead.
      disk_generation = generation_ + 1000;
    }
  }
  if (previous_ok && home_dir_ == dir && disk_generation != generation_)
    throw ConflictError("index directory '" + dir_in + "' was saved by another writer (generation " +
                        std::to_string(disk_generation) + ") since this index was loaded from or saved to it " +
                        "(generation " + std::to_string(generation_) +
                        "); saving now would drop that writer's rows: load the directory again and redo the changes");
  // New files are named past every generation present (an interrupted save may have left
  // files of a generation no manifest names), so none is overwritten.
  {
    DIR* d = ::opendir(dir.c_str());
    if (!d) throw_errno("cannot list", dir);
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("seg-", 0) != 0) continue;
      const uint64_t g = std::strtoull(n.c_str() + 4, nullptr, 10);
      if (g < (uint64_t(1) << 62)) disk_generation = std::max(disk_generation, g);
    }
    ::closedir(d);
  }

  // 1. Seal the open segment and snapshot what to write, under the exclusive lock.
  Manifest m;
  std::vector<SegmentSnapshot> snap;
  {
    std::unique_lock<RwLock> lock(mu_);
    if (!segments_.empty()) segments_.back()->sealed = true;
    for (auto& s : segments_)
      if (s->rows > 0) snap.push_back({s, s->deleted, s->del_dirty});
    m.generation = std::max(generation_, disk_generation) + 1;
    m.dim = dim_;
    m.metric = metric_;
    m.storage = storage_;
    m.keep_originals = keep_originals_;
    m.next_id = catalog_.next_id();
  }

  // 2. Write new files without blocking searches (sealed segments are immutable).
  std::vector<std::string> new_files;
  try {
    for (size_t i = 0; i < snap.size(); ++i) {
      Segment& s = *snap[i].seg;
      ManifestSegment ms;
      ms.rows = s.rows;
      const bool here = s.saved_dir == dir && !s.file_name.empty() && file_exists(dir + "/" + s.file_name);
      if (here) {
        ms.file = s.file_name;
        ms.hash = s.file_hash;
      } else {
        ms.file = "seg-" + std::to_string(m.generation) + "-" + std::to_string(i) + ".cseg";
        ContainerHeader h;
        h.file_kind = kSegmentFile;
        h.storage = uint32_t(storage_);
        h.dim = uint32_t(dim_);
        h.flags = s.has_originals ? 1 : 0;
        h.rows = uint64_t(s.rows);
        std::vector<SectionData> sec = {
            {SectionKind::Ids, s.ids, uint64_t(s.rows) * 8},
            {SectionKind::Scale, s.scale, s.scale ? uint64_t(s.rows) * 4 : 0},
            {SectionKind::Codes, s.codes, uint64_t(blocks_for_rows(s.rows)) * layout_.block_bytes()},
            {SectionKind::Originals, s.orig, s.orig ? uint64_t(s.rows) * uint64_t(dim_) * 4 : 0}};
        ms.hash = write_container(dir + "/" + ms.file, h, sec);
        new_files.push_back(ms.file);
      }
      if (snap[i].deleted.count() > 0) {
        if (here && !snap[i].del_dirty && !s.del_file.empty() && file_exists(dir + "/" + s.del_file)) {
          ms.del_file = s.del_file;
          ms.del_hash = s.del_hash;
        } else {
          ms.del_file = ms.file + ".del-" + std::to_string(m.generation);
          ContainerHeader h;
          h.file_kind = kDeletionFile;
          h.storage = uint32_t(storage_);
          h.dim = uint32_t(dim_);
          h.rows = uint64_t(s.rows);
          const size_t words = (size_t(s.rows) + 63) / 64;
          ms.del_hash = write_container(dir + "/" + ms.del_file, h,
                                        {{SectionKind::Deleted, snap[i].deleted.data(), words * 8}});
          new_files.push_back(ms.del_file);
        }
      }
      m.segments.push_back(ms);
    }
    fsync_dir(dir);
    // 3. The commit point: atomically replace the manifest.
    write_file_atomic(manifest_path, manifest_to_text(m));
    fsync_dir(dir);
  } catch (...) {
    for (auto& f : new_files) ::unlink((dir + "/" + f).c_str());
    throw;
  }

  // 4. Record where each segment now lives.
  {
    std::unique_lock<RwLock> lock(mu_);
    for (size_t i = 0; i < snap.size(); ++i) {
      Segment& s = *snap[i].seg;
      s.saved_dir = dir;
      s.file_name = m.segments[i].file;
      s.file_hash = m.segments[i].hash;
      s.del_file = m.segments[i].del_file;
      s.del_hash = m.segments[i].del_hash;
      if (s.deleted.count() == snap[i].deleted.count()) s.del_dirty = false;
    }
    generation_ = m.generation;
    home_dir_ = dir;
  }

  // 5. Remove what neither this manifest nor the one it replaced names (a reader may still be
  // opening the files of the previous one), and the temporaries of interrupted saves: only
  // writers create those, and this one holds the lock.
  std::set<std::string> keep;
  add_names(m, &keep);
  if (previous_ok) add_names(previous, &keep);
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> drop;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (is_index_file_name(n) && n != "MANIFEST" && n != "LOCK" && !keep.count(n)) drop.push_back(n);
    }
    ::closedir(d);
    for (auto& n : drop) ::unlink((dir + "/" + n).c_str());
  }
}

std::unique_ptr<Index> Index::load(const std::string& dir_in, const LoadOptions& opt) {
  struct stat st;
  if (::stat(dir_in.c_str(), &st) != 0) throw_errno("cannot open index", dir_in);
  const std::string dir = canonical_dir(dir_in);
  const std::string manifest_path = dir + "/MANIFEST";
  // Readers take no lock. A writer keeps the files of the manifest it replaces, so a load
  // races only with a second save completing meanwhile; then a named file is gone, MANIFEST
  // has changed, and the load starts over from the new one.
  constexpr int kAttempts = 20;
  for (int attempt = 1;; ++attempt) {
    if (!file_exists(manifest_path))
      throw FormatError("'" + dir_in + "' is not a cliprt index (no MANIFEST)");
    const std::string text = read_text_file(manifest_path);
    try {
      return load_manifest(dir, text, opt);
    } catch (const Vanished& v) {
      std::string now;
      try {
        now = read_text_file(manifest_path);
      } catch (const IOError&) {
      }
      if (now == text || attempt == kAttempts) throw FormatError("index file missing: '" + v.path + "'");
    }
  }
}

std::unique_ptr<Index> Index::load_manifest(const std::string& dir, const std::string& text,
                                            const LoadOptions& opt) {
  const std::string manifest_path = dir + "/MANIFEST";
  Manifest m = manifest_from_text(text, manifest_path);
  {
    std::set<std::string> names;
    for (auto& ms : m.segments)
      if (!names.insert(ms.file).second || (!ms.del_file.empty() && !names.insert(ms.del_file).second))
        throw FormatError("corrupt index manifest '" + manifest_path + "': file '" + ms.file + "' listed twice");
  }
  // A file the manifest names: missing means removed by a writer after MANIFEST was read.
  auto open_listed = [&](const std::string& path, bool mmap) {
    if (!file_exists(path)) throw Vanished{path};
    try {
      return MappedFile::open(path, mmap);
    } catch (const IOError&) {
      if (!file_exists(path)) throw Vanished{path};
      throw;
    }
  };
  auto ix = std::make_unique<Index>(m.dim, m.metric, m.storage, m.keep_originals);
  ix->generation_ = m.generation;
  int64_t live = 0;
  const Layout& L = ix->layout_;
  for (size_t i = 0; i < m.segments.size(); ++i) {
    const ManifestSegment& ms = m.segments[i];
    const std::string path = dir + "/" + ms.file;
    auto f = open_listed(path, opt.mmap);
    ContainerHeader h = read_container_header(*f);
    auto bad = [&](const std::string& what) -> void {
      throw FormatError("corrupt index file '" + path + "': " + what);
    };
    if (h.file_kind != kSegmentFile) bad("not a segment file");
    if (container_header_hash(*f) != ms.hash) bad("does not match the manifest (header checksum)");
    if (h.storage != uint32_t(m.storage) || h.dim != uint32_t(m.dim) || int64_t(h.rows) != ms.rows)
      bad("storage, dim or row count differ from the manifest");
    const SectionInfo* ids = find_section(h, SectionKind::Ids);
    const SectionInfo* scale = find_section(h, SectionKind::Scale);
    const SectionInfo* codes = find_section(h, SectionKind::Codes);
    const SectionInfo* orig = find_section(h, SectionKind::Originals);
    if (!ids || !scale || !codes || !orig) bad("missing section");
    const uint64_t rows = h.rows;
    if (ids->bytes != rows * 8) bad("ids section has the wrong size");
    if (scale->bytes != (L.has_scale() ? rows * 4 : 0)) bad("scale section has the wrong size");
    if (codes->bytes != uint64_t(blocks_for_rows(int64_t(rows))) * L.block_bytes()) bad("codes section has the wrong size");
    if (orig->bytes != (m.keep_originals ? rows * uint64_t(m.dim) * 4 : 0)) bad("originals section has the wrong size");
    if (opt.verify) {
      verify_section(*f, *ids, "ids");
      verify_section(*f, *scale, "scale");
      verify_section(*f, *codes, "codes");
    }
    if (opt.verify_originals) verify_section(*f, *orig, "originals");
    auto s = std::make_shared<Segment>();
    s->layout = L;
    s->has_originals = m.keep_originals;
    s->rows = s->capacity = int64_t(rows);
    s->codes = f->data() + codes->offset;
    s->ids = reinterpret_cast<const int64_t*>(f->data() + ids->offset);
    s->scale = L.has_scale() ? reinterpret_cast<const float*>(f->data() + scale->offset) : nullptr;
    s->orig = m.keep_originals ? reinterpret_cast<const float*>(f->data() + orig->offset) : nullptr;
    s->file = f;
    s->sealed = true;
    s->saved_dir = dir;
    s->file_name = ms.file;
    s->file_hash = ms.hash;
    s->deleted.reserve_rows(int64_t(rows));
    if (!ms.del_file.empty()) {
      const std::string dpath = dir + "/" + ms.del_file;
      auto df = open_listed(dpath, false);
      ContainerHeader dh = read_container_header(*df);
      const SectionInfo* del = find_section(dh, SectionKind::Deleted);
      const size_t words = (size_t(rows) + 63) / 64;
      if (dh.file_kind != kDeletionFile || dh.rows != rows || !del || del->bytes != words * 8 ||
          container_header_hash(*df) != ms.del_hash)
        throw FormatError("corrupt index file '" + dpath + "': does not match its segment");
      verify_section(*df, *del, "deletions");
      const uint8_t* bits = df->data() + del->offset;
      uint64_t last = 0;
      std::memcpy(&last, df->data() + del->offset + (words - 1) * 8, 8);
      if (rows % 64 && (last >> (rows % 64)))
        throw FormatError("corrupt index file '" + dpath + "': bits set past the last row");
      s->deleted.assign(bits, int64_t(rows), int64_t(rows));
      s->del_file = ms.del_file;
      s->del_hash = ms.del_hash;
    }
    for (int64_t r = 0; r < int64_t(rows); ++r)
      if (s->ids[r] < 0 || s->ids[r] >= m.next_id)
        throw FormatError("corrupt index: manifest '" + manifest_path + "' has next_id " +
                          std::to_string(m.next_id) + " but '" + path + "' stores id " + std::to_string(s->ids[r]));
    live += s->rows - s->deleted.count();
    ix->segments_.push_back(s);
  }
  ix->catalog_.reset(m.next_id, live);
  ix->home_dir_ = dir;
  return ix;
}

void Index::verify() const {
  std::shared_lock<RwLock> lock(mu_);
  for (auto& s : segments_) {
    if (!s->file) continue;
    ContainerHeader h = read_container_header(*s->file);
    for (auto& sec : h.sections) verify_section(*s->file, sec, "section");
  }
  catalog_.check();
}

}  // namespace cliprt
