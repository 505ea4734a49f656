// Bounded top-k collector: keeps the k best (score desc, id asc) of what it is offered.
//
// Candidates at or above the running threshold are appended to a buffer; when the buffer
// holds 2k of them, a partial selection keeps the best k and raises the threshold to the
// k-th score. Pushes cost O(1) amortised whatever k is (a heap costs O(log k) per push,
// which dominates scans that keep thousands of candidates for rescoring).
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

// a ranks before b: higher score, then smaller id. A function object, so the selection and
// sort algorithms inline it.
struct RanksBefore {
  bool operator()(const Hit& a, const Hit& b) const {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
  }
};
constexpr RanksBefore ranks_before{};

class TopK {
 public:
  explicit TopK(int64_t k = 0) : k_(k) {
    buf_.reserve(size_t(std::min<int64_t>(capacity(), 4096)));
  }
  int64_t k() const { return k_; }
  // Scores below this can never enter; ties with it may (smaller id wins).
  float threshold() const { return threshold_; }
  void push(float score, int64_t id, int64_t loc) {
    // Below the k-th kept hit, or tied with it and a larger id: can never enter. (Quantized
    // scores tie often; rejecting ties here keeps them from filling the buffer.)
    if (score < threshold_ || (score == threshold_ && id > threshold_id_) || k_ <= 0) return;
    buf_.push_back(Hit{score, id, loc});
    if (int64_t(buf_.size()) >= capacity()) compact();
  }
  // Best first, at most k; leaves the collector empty.
  std::vector<Hit> take_sorted() {
    compact();
    std::sort(buf_.begin(), buf_.end(), ranks_before);
    threshold_ = -std::numeric_limits<float>::infinity();
    threshold_id_ = std::numeric_limits<int64_t>::max();
    return std::move(buf_);
  }
  // Every kept candidate (a superset of the top k, unordered).
  const std::vector<Hit>& items() const { return buf_; }

 private:
  int64_t capacity() const { return std::max<int64_t>(2 * k_, k_ + 64); }
  void compact() {
    if (int64_t(buf_.size()) <= k_) return;
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), ranks_before);
    buf_.resize(size_t(k_));
    threshold_ = buf_[size_t(k_ - 1)].score;
    threshold_id_ = buf_[size_t(k_ - 1)].id;
  }

  int64_t k_;
  float threshold_ = -std::numeric_limits<float>::infinity();
  int64_t threshold_id_ = std::numeric_limits<int64_t>::max();
  std::vector<Hit> buf_;
};

}  // namespace cliprt
