// Per-query selection over the candidate lists a scan produced (search/scan.h):
//   kth_threshold: the k-th best score of each list (-inf when it holds fewer than k), the
//                  running threshold of the next scan;
//   block_topk:    the k best of each list, sorted by score descending then id ascending,
//                  one thread block per query (k <= kBlockTopKMax);
//   large_topk:    the same for any k, with two stable CUB radix sorts (ids, then scores);
//   fill_empty:    all slots (-inf, -1); fill_value: a float array to one value.
// Selection is a radix select over order-preserving score keys (common/keys.cuh, 11-bit
// digits), so a crowded band of scores costs no more than a spread one; ties at the k-th
// score are resolved by a second radix select over the ids, never by arrival order.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace cliprt {
namespace cuda {

constexpr int64_t kBlockTopKMax = 2048;

struct CandidateLists {
  const unsigned long long* cand = nullptr;  // [nq][cap]
  int64_t cap = 0;
  const unsigned int* count = nullptr;       // [nq]; entries past cap were dropped
  int nq = 0;
};

// Outputs of a top-k, each optional: scores (float32), ids (int64, via ids[row]) and rows,
// ld entries per query. Empty slots hold -inf, -1 and 0xffffffff.
struct TopKOut {
  float* scores = nullptr;
  int64_t* ids = nullptr;
  uint32_t* rows = nullptr;
  int64_t ld = 0;
};

void launch_kth_threshold(const CandidateLists& c, int64_t k, float* thresh, cudaStream_t stream);
// Sets *overflow (device) to 1 when a list lost candidates (count > cap).
void launch_block_topk(const CandidateLists& c, int64_t k, const int64_t* ids, const TopKOut& out,
                       unsigned int* overflow, cudaStream_t stream);
// counts: the lists' sizes on the host, already clamped to cap.
void large_topk(const CandidateLists& c, const std::vector<unsigned int>& counts, int64_t k, const int64_t* ids,
                const TopKOut& out, cudaStream_t stream);
void launch_fill_empty(const TopKOut& out, int nq, int64_t k, cudaStream_t stream);
// p[i] = v for i < n.
void launch_fill_value(float* p, int64_t n, float v, cudaStream_t stream);

}  // namespace cuda
}  // namespace cliprt
