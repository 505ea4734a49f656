// Bounded top-k collector: keeps the k best (score desc, id asc) of what it is offered.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace cliprt {

struct Hit {
  float score;
  int64_t id;
  int64_t loc;  // where the row lives (segment, row); see id_map.h
};

// a ranks before b: higher score, then smaller id.
inline bool ranks_before(const Hit& a, const Hit& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

class TopK {
 public:
  explicit TopK(int64_t k = 0) : k_(k) { heap_.reserve(size_t(std::min<int64_t>(k, 1 << 16))); }
  int64_t k() const { return k_; }
  int64_t size() const { return int64_t(heap_.size()); }
  // Scores below this can never enter; ties with it may (smaller id wins).
  float threshold() const {
    return int64_t(heap_.size()) < k_ ? -std::numeric_limits<float>::infinity() : heap_.front().score;
  }
  void push(float score, int64_t id, int64_t loc) {
    Hit h{score, id, loc};
    if (int64_t(heap_.size()) < k_) {
      heap_.push_back(h);
      std::push_heap(heap_.begin(), heap_.end(), ranks_before);
    } else if (k_ > 0 && ranks_before(h, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), ranks_before);
      heap_.back() = h;
      std::push_heap(heap_.begin(), heap_.end(), ranks_before);
    }
  }
  // Best first; leaves the collector empty.
  std::vector<Hit> take_sorted() {
    std::sort(heap_.begin(), heap_.end(), ranks_before);
    return std::move(heap_);
  }
  const std::vector<Hit>& items() const { return heap_; }

 private:
  int64_t k_;
  std::vector<Hit> heap_;  // heap ordered so that front() is the worst kept hit
};

}  // namespace cliprt
