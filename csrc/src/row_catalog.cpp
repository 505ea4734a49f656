#include "cliprt/row_catalog.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <shared_mutex>
#include <string>

#include "cliprt/errors.h"

namespace cliprt {

void DeletionBitmap::set(int64_t r) {
  CLIPRT_ASSERT(!test(r));
  words_[size_t(r >> 6)] |= uint64_t(1) << (r & 63);
  ++count_;
}

void DeletionBitmap::clear(int64_t r) {
  CLIPRT_ASSERT(test(r));
  words_[size_t(r >> 6)] &= ~(uint64_t(1) << (r & 63));
  --count_;
}

void DeletionBitmap::assign(const void* words, int64_t rows, int64_t capacity_rows) {
  words_.assign(size_t(std::max(rows, capacity_rows) / 64 + 1), 0);
  if (words) std::memcpy(words_.data(), words, size_t((rows + 63) / 64) * 8);
  count_ = 0;
  for (uint64_t w : words_) count_ += __builtin_popcountll(w);
}

void RowCatalog::check_add_count(int64_t n) {
  if (n >= (int64_t(1) << kLocShift)) throw ValueError("too many vectors in one add");
}

std::vector<int64_t> RowCatalog::checked_new_ids(const int64_t* ids, int64_t n) {
  check_add_count(n);
  std::vector<int64_t> out(static_cast<size_t>(n));
  if (!ids) return out;
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
  return out;
}

void RowCatalog::assign(std::vector<int64_t>& ids, bool explicit_ids) const {
  const int64_t n = int64_t(ids.size());
  if (explicit_ids) {
    ensure_map();
    for (int64_t id : ids)
      if (map_.find(id) >= 0) throw ValueError("id " + std::to_string(id) + " is already in the index");
    return;
  }
  if (next_id_ > std::numeric_limits<int64_t>::max() - n) throw ValueError("automatic ids exhausted: pass explicit ids");
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = next_id_ + i;
}

void RowCatalog::added(const std::vector<int64_t>& ids, int64_t part, int64_t row0) {
  const bool mapped = map_ready_.load(std::memory_order_relaxed);
  if (mapped) map_.reserve(map_.size() + int64_t(ids.size()));
  int64_t max_id = next_id_ - 1;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (mapped) map_.put(ids[i], make_loc(part, row0 + int64_t(i)));
    max_id = std::max(max_id, ids[i]);
  }
  live_ += int64_t(ids.size());
  next_id_ = max_id + 1;
}

std::vector<int64_t> RowCatalog::remove(const int64_t* ids, int64_t n) {
  ensure_map();
  std::vector<int64_t> locs;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t loc = map_.find(ids[i]);
    if (loc < 0) continue;
    src_.part(loc_segment(loc)).deleted->set(loc_row(loc));
    map_.erase(ids[i]);
    locs.push_back(loc);
  }
  live_ -= int64_t(locs.size());
  return locs;
}

void RowCatalog::restore(const std::vector<int64_t>& locs) {
  for (int64_t loc : locs) {
    const RowPart p = src_.part(loc_segment(loc));
    p.deleted->clear(loc_row(loc));
    map_.put(p.ids[loc_row(loc)], loc);
  }
  live_ += int64_t(locs.size());
}

void RowCatalog::reset(int64_t next_id, int64_t live) {
  next_id_ = next_id;
  live_ = live;
  map_ready_.store(false);
}

int64_t RowCatalog::find(int64_t id) const {
  ensure_map();
  return map_.find(id);
}

int64_t RowCatalog::locate(int64_t id) const {
  const int64_t loc = find(id);
  if (loc < 0) throw KeyError("id " + std::to_string(id) + " is not in the index");
  return loc;
}

std::vector<int64_t> RowCatalog::locations(const int64_t* ids, int64_t n) const {
  ensure_map();
  std::vector<int64_t> locs;
  locs.reserve(size_t(std::min(n, live_)));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t loc = map_.find(ids[i]);
    if (loc >= 0) locs.push_back(loc);
  }
  std::sort(locs.begin(), locs.end());
  locs.erase(std::unique(locs.begin(), locs.end()), locs.end());
  return locs;
}

std::vector<int64_t> RowCatalog::ids() const {
  std::vector<int64_t> out;
  out.reserve(size_t(live_));
  for (int64_t pi = 0, np = src_.num_parts(); pi < np; ++pi) {
    const RowPart p = src_.part(pi);
    for (int64_t r = 0; r < p.rows; ++r)
      if (!p.deleted->test(r)) out.push_back(p.ids[r]);
  }
  return out;
}

void RowCatalog::ensure_map() const {
  if (map_ready_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(map_mu_);
  if (map_ready_.load(std::memory_order_relaxed)) return;
  IdMap m;
  m.reserve(live_);
  for (int64_t pi = 0, np = src_.num_parts(); pi < np; ++pi) {
    const RowPart p = src_.part(pi);
    for (int64_t r = 0; r < p.rows; ++r) {
      if (p.deleted->test(r)) continue;
      if (m.find(p.ids[r]) >= 0) throw FormatError("index holds id " + std::to_string(p.ids[r]) + " twice");
      m.put(p.ids[r], make_loc(pi, r));
    }
  }
  map_ = std::move(m);
  map_ready_.store(true, std::memory_order_release);
}

int64_t CataloguedIndex::next_id() const {
  std::shared_lock<RwLock> lock(mu_);
  return catalog_.next_id();
}

int64_t CataloguedIndex::size() const {
  std::shared_lock<RwLock> lock(mu_);
  return catalog_.live();
}

bool CataloguedIndex::contains(int64_t id) const {
  std::shared_lock<RwLock> lock(mu_);
  return catalog_.find(id) >= 0;
}

std::vector<int64_t> CataloguedIndex::ids() const {
  std::shared_lock<RwLock> lock(mu_);
  return catalog_.ids();
}

}  // namespace cliprt
