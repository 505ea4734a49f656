// Open-addressing hash map from int64 id to int64 location (linear probing, backward-shift
// deletion). Location encodes (segment << kLocShift) | row.
#pragma once
#include <cstdint>
#include <vector>

namespace cliprt {

constexpr int kLocShift = 40;
inline int64_t make_loc(int64_t seg, int64_t row) { return (seg << kLocShift) | row; }
inline int64_t loc_segment(int64_t loc) { return loc >> kLocShift; }
inline int64_t loc_row(int64_t loc) { return loc & ((int64_t(1) << kLocShift) - 1); }

class IdMap {
 public:
  IdMap() { rehash(16); }
  int64_t size() const { return size_; }
  void reserve(int64_t n) {
    if ((n + 1) * 10 > int64_t(keys_.size()) * 7) rehash(capacity_for(n));
  }
  // Returns the location or -1.
  int64_t find(int64_t id) const {
    size_t m = keys_.size() - 1;
    for (size_t i = slot(id) & m;; i = (i + 1) & m) {
      if (!used_[i]) return -1;
      if (keys_[i] == id) return vals_[i];
    }
  }
  // Inserts or overwrites.
  void put(int64_t id, int64_t loc) {
    reserve(size_ + 1);
    size_t m = keys_.size() - 1;
    for (size_t i = slot(id) & m;; i = (i + 1) & m) {
      if (!used_[i]) { used_[i] = 1; keys_[i] = id; vals_[i] = loc; ++size_; return; }
      if (keys_[i] == id) { vals_[i] = loc; return; }
    }
  }
  bool erase(int64_t id) {
    size_t m = keys_.size() - 1;
    size_t i = slot(id) & m;
    for (;; i = (i + 1) & m) {
      if (!used_[i]) return false;
      if (keys_[i] == id) break;
    }
    // Backward-shift: pull later members of the probe run into the hole.
    size_t hole = i;
    for (size_t j = (hole + 1) & m; used_[j]; j = (j + 1) & m) {
      size_t home = slot(keys_[j]) & m;
      bool movable = (hole <= j) ? (home <= hole || home > j) : (home <= hole && home > j);
      if (movable) {
        keys_[hole] = keys_[j];
        vals_[hole] = vals_[j];
        hole = j;
      }
    }
    used_[hole] = 0;
    --size_;
    return true;
  }
  void clear() { rehash(16); }

 private:
  static size_t slot(int64_t id) {
    uint64_t x = uint64_t(id) * 0x9E3779B97F4A7C15ull;
    return size_t(x ^ (x >> 29));
  }
  static size_t capacity_for(int64_t n) {
    size_t c = 16;
    while (int64_t(c) * 7 < (n + 1) * 10) c <<= 1;
    return c;
  }
  void rehash(size_t cap) {
    std::vector<int64_t> k(cap), v(cap);
    std::vector<uint8_t> u(cap, 0);
    k.swap(keys_); v.swap(vals_); u.swap(used_);
    size_ = 0;
    for (size_t i = 0; i < u.size(); ++i)
      if (u[i]) put(k[i], v[i]);
  }
  std::vector<int64_t> keys_, vals_;
  std::vector<uint8_t> used_;
  int64_t size_ = 0;
};

}  // namespace cliprt
