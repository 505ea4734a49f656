// Kernels of the block-per-query selection (select.h); launchers in select.cu.
// block_topk: a list of at most kSortCap candidates is sorted whole; a longer one is cut at
// its k-th best key first (radix select), ties at the cut are decided by id with a second
// radix select, and only the survivors are gathered into shared memory and bitonic-sorted
// by (key desc, id asc).
#pragma once
#include <cmath>
#include <cstdint>

#include "common/keys.cuh"
#include "topk/block_select.cuh"
#include "topk/select.h"

namespace cliprt {
namespace cuda {
namespace select_detail {

constexpr int kSortCap = int(kBlockTopKMax);
constexpr uint32_t kNoRow = 0xffffffffu;

__global__ void __launch_bounds__(kThreads) kth_threshold_kernel(const CandidateLists c, int64_t k, float* thresh) {
  __shared__ Shared sh;
  const int q = blockIdx.x;
  const unsigned long long* list = c.cand + int64_t(q) * c.cap;
  const int64_t m = c.count[q] < c.cap ? int64_t(c.count[q]) : c.cap;
  if (m < k) {
    if (threadIdx.x == 0) thresh[q] = -INFINITY;
    return;
  }
  int64_t ties = 0, equal = 0;
  const uint32_t key = kth_largest<uint32_t>(
      m, k, [&](int64_t i, uint32_t& key) { key = candidate_key(list[i]); return true; }, sh, &ties, &equal);
  if (threadIdx.x == 0) thresh[q] = key_score(key);
}

__device__ __forceinline__ bool ranks_before(uint32_t ka, int64_t ia, uint32_t kb, int64_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

__global__ void __launch_bounds__(kThreads) block_topk_kernel(const CandidateLists c, int64_t k, const int64_t* ids,
                                                              const TopKOut out, unsigned int* overflow) {
  __shared__ Shared sh;
  __shared__ uint32_t s_key[kSortCap];
  __shared__ int64_t s_id[kSortCap];
  __shared__ uint32_t s_row[kSortCap];
  __shared__ unsigned int s_n;
  const int q = blockIdx.x;
  const int tid = threadIdx.x;
  const unsigned long long* list = c.cand + int64_t(q) * c.cap;
  const unsigned count = c.count[q];
  if (count > c.cap && tid == 0) atomicOr(overflow, 1u);
  const int64_t m = count < c.cap ? int64_t(count) : c.cap;
  if (tid == 0) s_n = 0;
  __syncthreads();

  if (m <= kSortCap) {
    for (int64_t i = tid; i < m; i += kThreads) {
      const unsigned long long e = list[i];
      s_key[i] = candidate_key(e);
      s_row[i] = candidate_row(e);
      s_id[i] = ids[candidate_row(e)];
    }
    if (tid == 0) s_n = unsigned(m);
  } else {
    int64_t ties = 0, equal = 0;
    const uint32_t cut = kth_largest<uint32_t>(
        m, k, [&](int64_t i, uint32_t& key) { key = candidate_key(list[i]); return true; }, sh, &ties, &equal);
    const int64_t above = k - ties;  // keys strictly greater than the cut
    // Ties: all of them when they fit, else the `ties` smallest ids (largest ~id).
    const bool all_ties = above + equal <= kSortCap;
    unsigned long long id_cut = 0;
    if (!all_ties) {
      int64_t unused_ties = 0, unused_equal = 0;
      id_cut = kth_largest<unsigned long long>(
          m, ties,
          [&](int64_t i, unsigned long long& key) {
            const unsigned long long e = list[i];
            if (candidate_key(e) != cut) return false;
            key = ~(unsigned long long)ids[candidate_row(e)];
            return true;
          },
          sh, &unused_ties, &unused_equal);
    }
    for (int64_t i = tid; i < m; i += kThreads) {
      const unsigned long long e = list[i];
      const uint32_t key = candidate_key(e);
      if (key < cut) continue;
      const int64_t id = ids[candidate_row(e)];
      if (key == cut && !all_ties && ~(unsigned long long)id < id_cut) continue;
      const unsigned pos = atomicAdd(&s_n, 1u);
      if (pos < unsigned(kSortCap)) {
        s_key[pos] = key;
        s_row[pos] = candidate_row(e);
        s_id[pos] = id;
      }
    }
  }
  __syncthreads();
  const int n_sel = int(s_n < unsigned(kSortCap) ? s_n : unsigned(kSortCap));
  int n_pad = 1;
  while (n_pad < n_sel) n_pad <<= 1;
  for (int i = n_sel + tid; i < n_pad; i += kThreads) {
    s_key[i] = 0;
    s_id[i] = INT64_MAX;
    s_row[i] = kNoRow;
  }
  __syncthreads();
  for (int size = 2; size <= n_pad; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < n_pad / 2; i += kThreads) {
        const int lo = 2 * stride * (i / stride) + (i % stride);
        const int hi = lo + stride;
        const bool forward = (lo & size) == 0;
        const bool swap = forward ? ranks_before(s_key[hi], s_id[hi], s_key[lo], s_id[lo])
                                  : ranks_before(s_key[lo], s_id[lo], s_key[hi], s_id[hi]);
        if (swap) {
          const uint32_t tk = s_key[lo];
          s_key[lo] = s_key[hi];
          s_key[hi] = tk;
          const int64_t ti = s_id[lo];
          s_id[lo] = s_id[hi];
          s_id[hi] = ti;
          const uint32_t tr = s_row[lo];
          s_row[lo] = s_row[hi];
          s_row[hi] = tr;
        }
      }
      __syncthreads();
    }
  }
  const int64_t base = int64_t(q) * out.ld;
  for (int64_t j = tid; j < k; j += kThreads) {
    const bool has = j < n_sel;
    if (out.scores) out.scores[base + j] = has ? key_score(s_key[j]) : -INFINITY;
    if (out.ids) out.ids[base + j] = has ? s_id[j] : -1;
    if (out.rows) out.rows[base + j] = has ? s_row[j] : kNoRow;
  }
}

__global__ void fill_empty_kernel(const TopKOut out, int nq, int64_t k) {
  const int64_t total = int64_t(nq) * k;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i / k, j = i % k;
    if (out.scores) out.scores[q * out.ld + j] = -INFINITY;
    if (out.ids) out.ids[q * out.ld + j] = -1;
    if (out.rows) out.rows[q * out.ld + j] = kNoRow;
  }
}

__global__ void fill_value_kernel(float* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) p[i] = v;
}

}  // namespace select_detail
}  // namespace cuda
}  // namespace cliprt
