// The CPU index: rows in segments (add, remove, lookups, copies to and from devices).
// Search is in search.cpp, save / load in index_persist.cpp.
#include "cliprt/index.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cliprt/codec.h"
#include "cliprt/errors.h"

namespace cliprt {

namespace {
constexpr int64_t kMinSegmentCapacity = 1024;

void set_owned_pointers(Segment& s) {
  s.codes = s.codes_buf.data();
  s.ids = reinterpret_cast<const int64_t*>(s.ids_buf.data());
  s.scale = s.layout.has_scale() ? reinterpret_cast<const float*>(s.scale_buf.data()) : nullptr;
  s.orig = s.has_originals ? reinterpret_cast<const float*>(s.orig_buf.data()) : nullptr;
}
}  // namespace

Index::Index(int dim, Metric metric, Storage storage, bool keep_originals)
    : dim_(dim), metric_(metric), storage_(storage), keep_originals_(keep_originals),
      layout_(make_layout(storage, dim)) {}

RowPart Index::part(int64_t i) const {
  Segment& s = *segments_[size_t(i)];
  return {s.ids, s.rows, &s.deleted};
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
                 s->orig_buf.capacity() + s->deleted.heap_bytes());
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
    s.deleted.reserve_rows(cap);
    s.capacity = cap;
    set_owned_pointers(s);
  }
  return s;
}

std::vector<int64_t> Index::add(const float* x, int64_t n, const int64_t* ids) {
  std::vector<float> normed;
  const float* src = prepare_rows(x, n, true, &normed);
  std::vector<int64_t> out = RowCatalog::checked_new_ids(ids, n);
  // Encode outside the lock.
  const size_t rb = layout_.row_bytes();
  std::vector<uint8_t> codes(static_cast<size_t>(n) * rb);
  std::vector<float> scales(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    encode_row(layout_, src + size_t(i) * size_t(dim_), codes.data() + size_t(i) * rb, &scales[size_t(i)]);

  std::unique_lock<RwLock> lock(mu_);
  catalog_.assign(out, ids != nullptr);
  if (n == 0) return out;
  Segment& s = writable_segment(n);  // allocation happens before any state changes
  auto* codes_dst = s.codes_buf.data();
  auto* ids_dst = reinterpret_cast<int64_t*>(s.ids_buf.data());
  auto* scale_dst = reinterpret_cast<float*>(s.scale_buf.data());
  auto* orig_dst = reinterpret_cast<float*>(s.orig_buf.data());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = s.rows + i;
    scatter_row(layout_, codes.data() + size_t(i) * rb, codes_dst, r);
    ids_dst[r] = out[size_t(i)];
    if (scale_dst) scale_dst[r] = scales[size_t(i)];
    if (orig_dst) std::memcpy(orig_dst + size_t(r) * size_t(dim_), src + size_t(i) * size_t(dim_), size_t(dim_) * 4);
  }
  catalog_.added(out, int64_t(segments_.size()) - 1, s.rows);
  s.rows += n;
  return out;
}

int64_t Index::remove(const int64_t* ids, int64_t n) {
  std::unique_lock<RwLock> lock(mu_);
  const std::vector<int64_t> locs = catalog_.remove(ids, n);
  for (int64_t loc : locs) segments_[size_t(loc_segment(loc))]->del_dirty = true;
  return int64_t(locs.size());
}

void Index::reconstruct(const int64_t* ids, int64_t n, float* out) const {
  std::shared_lock<RwLock> lock(mu_);
  std::vector<uint8_t> code(layout_.row_bytes());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t loc = catalog_.locate(ids[i]);
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
    v.deleted = s->deleted.count() ? s->deleted.data() : nullptr;
    v.n_deleted = s->deleted.count();
    fn(v);
  }
  return catalog_.next_id();
}

void Index::append_packed(const SegmentView& v, int64_t next_id) {
  std::unique_lock<RwLock> lock(mu_);
  CLIPRT_ASSERT(catalog_.live() == 0 && segments_.empty());
  CLIPRT_ASSERT(v.rows >= 0 && v.rows < (int64_t(1) << kLocShift) && next_id >= 0);
  if (v.rows == 0) {
    catalog_.reset(std::max(catalog_.next_id(), next_id), 0);
    return;
  }
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
  s->deleted.assign(v.deleted, v.rows, cap);
  s->rows = v.rows;
  s->capacity = cap;
  set_owned_pointers(*s);
  segments_.push_back(s);
  catalog_.reset(std::max(catalog_.next_id(), next_id), s->rows - s->deleted.count());
}

}  // namespace cliprt
