#include "cliprt/index.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "cliprt/codec.h"
#include "cliprt/errors.h"
#include "cliprt/hash.h"
#include "cliprt/persist.h"

namespace cliprt {

namespace {
constexpr uint32_t kSegmentFile = 'S';
constexpr uint32_t kDeletionFile = 'D';
constexpr int64_t kMinSegmentCapacity = 1024;

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string canonical_dir(const std::string& dir) {
  char buf[PATH_MAX];
  if (!::realpath(dir.c_str(), buf)) throw_errno("cannot resolve", dir);
  return buf;
}

void set_owned_pointers(Segment& s) {
  s.codes = s.codes_buf.data();
  s.ids = reinterpret_cast<const int64_t*>(s.ids_buf.data());
  s.scale = s.layout.has_scale() ? reinterpret_cast<const float*>(s.scale_buf.data()) : nullptr;
  s.orig = s.has_originals ? reinterpret_cast<const float*>(s.orig_buf.data()) : nullptr;
}

// Names an index directory may contain: the manifest, segment and deletion files, and the
// temporaries of an interrupted save.
bool is_index_file_name(const std::string& n) {
  return n == "MANIFEST" || n == "MANIFEST.tmp" || (n.rfind("seg-", 0) == 0 && n.find(".cseg") != std::string::npos);
}

int64_t popcount_bits(const std::vector<uint64_t>& bits) {
  int64_t n = 0;
  for (uint64_t w : bits) n += __builtin_popcountll(w);
  return n;
}
}  // namespace

Index::Index(int dim, Metric metric, Storage storage, bool keep_originals)
    : dim_(dim), metric_(metric), storage_(storage), keep_originals_(keep_originals),
      layout_(make_layout(storage, dim)) {}

int64_t Index::size() const {
  std::shared_lock<RwLock> lock(mu_);
  return live_;
}

int64_t Index::num_segments() const {
  std::shared_lock<RwLock> lock(mu_);
  return int64_t(segments_.size());
}

int64_t Index::memory_bytes() const {
  std::shared_lock<RwLock> lock(mu_);
  int64_t b = 0;
  for (auto& s : segments_)
    b += int64_t(s->codes_buf.capacity() + s->ids_buf.capacity() + s->scale_buf.capacity() +
                 s->orig_buf.capacity() + s->deleted.size() * 8);
  return b;
}

const float* Index::prepare_rows(const float* x, int64_t n, bool stored, std::vector<float>* normed) const {
  const char* what = stored ? "vectors" : "queries";
  const float lim = storage_max_abs(storage_);
  const size_t total = size_t(n) * size_t(dim_);
  for (size_t i = 0; i < total; ++i) {
    const float v = x[i];
    if (!std::isfinite(v))
      throw ValueError(std::string(what) + " contain NaN or Inf (row " + std::to_string(i / size_t(dim_)) +
                       ", column " + std::to_string(i % size_t(dim_)) + ")");
    if (stored && metric_ == Metric::IP && std::fabs(v) > lim)
      throw ValueError(std::string(what) + " exceed the range of " + storage_name(storage_) +
                       " storage (row " + std::to_string(i / size_t(dim_)) + ")");
  }
  if (metric_ != Metric::Cosine) return x;
  normed->assign(x, x + total);
  for (int64_t i = 0; i < n; ++i) {
    float* r = normed->data() + size_t(i) * size_t(dim_);
    double ss = 0;
    for (int d = 0; d < dim_; ++d) ss += double(r[d]) * r[d];
    if (!(ss > 0))
      throw ValueError(std::string(stored ? "vector " : "query ") + std::to_string(i) +
                       " has zero norm and cannot be normalised (metric='cosine')");
    normalise_row(r, dim_, ss);
  }
  return normed->data();
}

void Index::ensure_id_map() const {
  if (map_ready_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(map_mu_);
  if (map_ready_.load(std::memory_order_relaxed)) return;
  IdMap m;
  m.reserve(live_);
  for (size_t si = 0; si < segments_.size(); ++si) {
    const Segment& s = *segments_[si];
    for (int64_t r = 0; r < s.rows; ++r) {
      if (s.is_deleted(r)) continue;
      if (m.find(s.ids[r]) >= 0)
        throw FormatError("index holds id " + std::to_string(s.ids[r]) + " twice");
      m.put(s.ids[r], make_loc(int64_t(si), r));
    }
  }
  id_map_ = std::move(m);
  map_ready_.store(true, std::memory_order_release);
}

Segment& Index::writable_segment(int64_t extra) {
  if (segments_.empty() || segments_.back()->sealed) {
    auto s = std::make_shared<Segment>();
    s->layout = layout_;
    s->has_originals = keep_originals_;
    segments_.push_back(s);
  }
  Segment& s = *segments_.back();
  const int64_t need = s.rows + extra;
  if (need > s.capacity) {
    int64_t cap = std::max<int64_t>({need, s.capacity * 2, kMinSegmentCapacity});
    cap = blocks_for_rows(cap) * kBlockRows;
    const size_t nb = size_t(blocks_for_rows(s.rows));
    s.codes_buf.grow(size_t(cap / kBlockRows) * layout_.block_bytes(), nb * layout_.block_bytes());
    s.ids_buf.grow(size_t(cap) * 8, size_t(s.rows) * 8);
    if (layout_.has_scale()) s.scale_buf.grow(size_t(cap) * 4, size_t(s.rows) * 4);
    if (keep_originals_) s.orig_buf.grow(size_t(cap) * size_t(dim_) * 4, size_t(s.rows) * size_t(dim_) * 4);
    s.deleted.resize(size_t(cap / 64 + 1), 0);
    s.capacity = cap;
    set_owned_pointers(s);
  }
  return s;
}

std::vector<int64_t> checked_new_ids(const int64_t* ids, int64_t n) {
  std::vector<int64_t> out(static_cast<size_t>(n));
  if (ids) {
    for (int64_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || ids[i] == std::numeric_limits<int64_t>::max())
        throw ValueError("ids must be in [0, 2**63 - 2] (got " + std::to_string(ids[i]) +
                         "; -1 marks empty result slots)");
      out[size_t(i)] = ids[i];
    }
    std::vector<int64_t> sorted(out);
    std::sort(sorted.begin(), sorted.end());
    auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    if (dup != sorted.end()) throw ValueError("duplicate id " + std::to_string(*dup) + " within this add");
  }
  return out;
}

std::vector<int64_t> Index::add(const float* x, int64_t n, const int64_t* ids) {
  if (int64_t(n) >= (int64_t(1) << kLocShift)) throw ValueError("too many vectors in one add");
  std::vector<float> normed;
  const float* src = prepare_rows(x, n, true, &normed);
  std::vector<int64_t> out = checked_new_ids(ids, n);
  // Encode outside the lock.
  const size_t rb = layout_.row_bytes();
  std::vector<uint8_t> codes(static_cast<size_t>(n) * rb);
  std::vector<float> scales(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    encode_row(layout_, src + size_t(i) * size_t(dim_), codes.data() + size_t(i) * rb, &scales[size_t(i)]);

  std::unique_lock<RwLock> lock(mu_);
  ensure_id_map();
  if (ids) {
    for (int64_t i = 0; i < n; ++i)
      if (id_map_.find(ids[i]) >= 0)
        throw ValueError("id " + std::to_string(ids[i]) + " is already in the index");
  } else {
    if (next_id_ > std::numeric_limits<int64_t>::max() - n) throw ValueError("automatic ids exhausted: pass explicit ids");
    for (int64_t i = 0; i < n; ++i) out[size_t(i)] = next_id_ + i;
  }
  if (n == 0) return out;
  id_map_.reserve(id_map_.size() + n);
  Segment& s = writable_segment(n);  // allocation happens before any state changes
  const int64_t si = int64_t(segments_.size()) - 1;
  auto* codes_dst = s.codes_buf.data();
  auto* ids_dst = reinterpret_cast<int64_t*>(s.ids_buf.data());
  auto* scale_dst = reinterpret_cast<float*>(s.scale_buf.data());
  auto* orig_dst = reinterpret_cast<float*>(s.orig_buf.data());
  int64_t max_id = next_id_ - 1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = s.rows + i;
    scatter_row(layout_, codes.data() + size_t(i) * rb, codes_dst, r);
    ids_dst[r] = out[size_t(i)];
    if (scale_dst) scale_dst[r] = scales[size_t(i)];
    if (orig_dst) std::memcpy(orig_dst + size_t(r) * size_t(dim_), src + size_t(i) * size_t(dim_), size_t(dim_) * 4);
    id_map_.put(out[size_t(i)], make_loc(si, r));
    max_id = std::max(max_id, out[size_t(i)]);
  }
  s.rows += n;
  live_ += n;
  next_id_ = max_id + 1;
  return out;
}

int64_t Index::remove(const int64_t* ids, int64_t n) {
  std::unique_lock<RwLock> lock(mu_);
  ensure_id_map();
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t loc = id_map_.find(ids[i]);
    if (loc < 0) continue;
    Segment& s = *segments_[size_t(loc_segment(loc))];
    const int64_t r = loc_row(loc);
    s.deleted[size_t(r >> 6)] |= uint64_t(1) << (r & 63);
    ++s.n_deleted;
    s.del_dirty = true;
    id_map_.erase(ids[i]);
    ++removed;
  }
  live_ -= removed;
  return removed;
}

bool Index::contains(int64_t id) const {
  std::shared_lock<RwLock> lock(mu_);
  ensure_id_map();
  return id_map_.find(id) >= 0;
}

std::vector<int64_t> Index::ids() const {
  std::shared_lock<RwLock> lock(mu_);
  std::vector<int64_t> out;
  out.reserve(size_t(live_));
  for (auto& s : segments_)
    for (int64_t r = 0; r < s->rows; ++r)
      if (!s->is_deleted(r)) out.push_back(s->ids[r]);
  return out;
}

void Index::reconstruct(const int64_t* ids, int64_t n, float* out) const {
  std::shared_lock<RwLock> lock(mu_);
  ensure_id_map();
  std::vector<uint8_t> code(layout_.row_bytes());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t loc = id_map_.find(ids[i]);
    if (loc < 0) throw KeyError("id " + std::to_string(ids[i]) + " is not in the index");
    const Segment& s = *segments_[size_t(loc_segment(loc))];
    const int64_t r = loc_row(loc);
    gather_row(layout_, s.codes, r, code.data());
    decode_row(layout_, code.data(), s.scale ? s.scale[r] : 1.0f, out + size_t(i) * size_t(dim_));
  }
}

int64_t Index::visit_segments(const std::function<void(const SegmentView&)>& fn) const {
  std::shared_lock<RwLock> lock(mu_);
  for (auto& s : segments_) {
    if (s->rows == 0) continue;
    SegmentView v;
    v.rows = s->rows;
    v.codes = s->codes;
    v.ids = s->ids;
    v.scale = s->scale;
    v.orig = s->orig;
    v.deleted = s->n_deleted ? s->deleted.data() : nullptr;
    v.n_deleted = s->n_deleted;
    fn(v);
  }
  return next_id_;
}

void Index::append_packed(const SegmentView& v, int64_t next_id) {
  std::unique_lock<RwLock> lock(mu_);
  CLIPRT_ASSERT(live_ == 0 && segments_.empty());
  CLIPRT_ASSERT(v.rows >= 0 && v.rows < (int64_t(1) << kLocShift) && next_id >= 0);
  next_id_ = std::max(next_id_, next_id);
  if (v.rows == 0) return;
  CLIPRT_ASSERT((v.scale != nullptr) == layout_.has_scale() && (v.orig != nullptr) == keep_originals_);
  auto s = std::make_shared<Segment>();
  s->layout = layout_;
  s->has_originals = keep_originals_;
  const int64_t cap = blocks_for_rows(v.rows) * kBlockRows;
  const size_t code_bytes = size_t(cap / kBlockRows) * layout_.block_bytes();
  s->codes_buf.grow(code_bytes, 0);
  std::memcpy(s->codes_buf.data(), v.codes, code_bytes);
  s->ids_buf.grow(size_t(cap) * 8, 0);
  std::memcpy(s->ids_buf.data(), v.ids, size_t(v.rows) * 8);
  if (v.scale) {
    s->scale_buf.grow(size_t(cap) * 4, 0);
    std::memcpy(s->scale_buf.data(), v.scale, size_t(v.rows) * 4);
  }
  if (v.orig) {
    s->orig_buf.grow(size_t(cap) * size_t(dim_) * 4, 0);
    std::memcpy(s->orig_buf.data(), v.orig, size_t(v.rows) * size_t(dim_) * 4);
  }
  s->deleted.assign(size_t(cap / 64 + 1), 0);
  if (v.deleted) std::memcpy(s->deleted.data(), v.deleted, size_t((v.rows + 63) / 64) * 8);
  s->n_deleted = popcount_bits(s->deleted);
  s->rows = v.rows;
  s->capacity = cap;
  set_owned_pointers(*s);
  live_ = s->rows - s->n_deleted;
  segments_.push_back(s);
  map_ready_.store(false);
}

// ---------------------------------------------------------------------------------------
// Persistence (format in persist.h)

namespace {
struct SegmentSnapshot {
  std::shared_ptr<Segment> seg;
  std::vector<uint64_t> deleted;
  int64_t n_deleted;
  bool del_dirty;
};

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_errno("cannot open", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

void Index::save(const std::string& dir_in) {
  std::lock_guard<std::mutex> save_lock(save_mu_);
  if (::mkdir(dir_in.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("cannot create directory", dir_in);
  const std::string dir = canonical_dir(dir_in);
  const std::string manifest_path = dir + "/MANIFEST";
  uint64_t disk_generation = 0;
  if (file_exists(manifest_path)) {
    try {
      disk_generation = manifest_from_text(read_text_file(manifest_path), manifest_path).generation;
    } catch (const FormatError&) {
      // Replacing a damaged index is allowed; its generation is unknown, so jump ahead.
      disk_generation = generation_ + 1000;
    }
  } else {
  }
  // Without a manifest the directory may hold only what an interrupted first save left.
  // New files are named past every generation already present, so none is overwritten.
  {
    DIR* d = ::opendir(dir.c_str());
    if (!d) throw_errno("cannot list", dir);
    bool foreign = false;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      if (!is_index_file_name(n)) foreign = true;
      else if (n.rfind("seg-", 0) == 0)
        disk_generation = std::max<uint64_t>(disk_generation, std::strtoull(n.c_str() + 4, nullptr, 10));
    }
    ::closedir(d);
    if (foreign && !file_exists(manifest_path))
      throw ValueError("'" + dir_in + "' exists, is not empty and is not a cliprt index: refusing to write into it");
  }

  // 1. Seal the open segment and snapshot what to write, under the exclusive lock.
  Manifest m;
  std::vector<SegmentSnapshot> snap;
  {
    std::unique_lock<RwLock> lock(mu_);
    if (!segments_.empty()) segments_.back()->sealed = true;
    for (auto& s : segments_)
      if (s->rows > 0) snap.push_back({s, s->deleted, s->n_deleted, s->del_dirty});
    m.generation = std::max(generation_, disk_generation) + 1;
    m.dim = dim_;
    m.metric = metric_;
    m.storage = storage_;
    m.keep_originals = keep_originals_;
    m.next_id = next_id_;
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
      if (snap[i].n_deleted > 0) {
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
      if (s.n_deleted == snap[i].n_deleted) s.del_dirty = false;
    }
    generation_ = m.generation;
  }

  // 5. Remove files that no manifest references any more.
  std::set<std::string> keep;
  for (auto& s : m.segments) {
    keep.insert(s.file);
    if (!s.del_file.empty()) keep.insert(s.del_file);
  }
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> drop;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (is_index_file_name(n) && n != "MANIFEST" && !keep.count(n)) drop.push_back(n);
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
  if (!file_exists(manifest_path))
    throw FormatError("'" + dir_in + "' is not a cliprt index (no MANIFEST)");
  Manifest m = manifest_from_text(read_text_file(manifest_path), manifest_path);
  if (m.next_id < 0) throw FormatError("corrupt index manifest '" + manifest_path + "': negative next_id");
  {
    std::set<std::string> names;
    for (auto& ms : m.segments)
      if (!names.insert(ms.file).second || (!ms.del_file.empty() && !names.insert(ms.del_file).second))
        throw FormatError("corrupt index manifest '" + manifest_path + "': file '" + ms.file + "' listed twice");
  }
  auto ix = std::make_unique<Index>(m.dim, m.metric, m.storage, m.keep_originals);
  ix->next_id_ = m.next_id;
  ix->generation_ = m.generation;
  const Layout& L = ix->layout_;
  for (size_t i = 0; i < m.segments.size(); ++i) {
    const ManifestSegment& ms = m.segments[i];
    const std::string path = dir + "/" + ms.file;
    if (!file_exists(path)) throw FormatError("index file missing: '" + path + "'");
    auto f = MappedFile::open(path, opt.mmap);
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
    s->deleted.assign(size_t(rows / 64 + 1), 0);
    if (!ms.del_file.empty()) {
      const std::string dpath = dir + "/" + ms.del_file;
      if (!file_exists(dpath)) throw FormatError("index file missing: '" + dpath + "'");
      auto df = MappedFile::open(dpath, false);
      ContainerHeader dh = read_container_header(*df);
      const SectionInfo* del = find_section(dh, SectionKind::Deleted);
      const size_t words = (size_t(rows) + 63) / 64;
      if (dh.file_kind != kDeletionFile || dh.rows != rows || !del || del->bytes != words * 8 ||
          container_header_hash(*df) != ms.del_hash)
        throw FormatError("corrupt index file '" + dpath + "': does not match its segment");
      verify_section(*df, *del, "deletions");
      std::memcpy(s->deleted.data(), df->data() + del->offset, words * 8);
      if (rows % 64 && (s->deleted[words - 1] >> (rows % 64)))
        throw FormatError("corrupt index file '" + dpath + "': bits set past the last row");
      s->n_deleted = popcount_bits(s->deleted);
      s->del_file = ms.del_file;
      s->del_hash = ms.del_hash;
    }
    for (int64_t r = 0; r < int64_t(rows); ++r)
      if (s->ids[r] < 0 || s->ids[r] >= m.next_id)
        throw FormatError("corrupt index: manifest '" + manifest_path + "' has next_id " +
                          std::to_string(m.next_id) + " but '" + path + "' stores id " + std::to_string(s->ids[r]));
    ix->live_ += s->rows - s->n_deleted;
    ix->segments_.push_back(s);
  }
  ix->map_ready_.store(false);
  return ix;
}

void Index::verify() const {
  std::shared_lock<RwLock> lock(mu_);
  for (auto& s : segments_) {
    if (!s->file) continue;
    ContainerHeader h = read_container_header(*s->file);
    for (auto& sec : h.sections) verify_section(*s->file, sec, "section");
  }
  ensure_id_map();
}

}  // namespace cliprt
