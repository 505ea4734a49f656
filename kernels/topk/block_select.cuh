// Block-wide radix select: the k-th largest key among the elements of a list that a
// predicate accepts, digit by digit from the most significant (11 bits per pass, a
// 2048-bin shared histogram, warp-aggregated increments so equal digits do not serialise).
#pragma once
#include <cstdint>

namespace cliprt {
namespace cuda {
namespace select_detail {

constexpr int kThreads = 512;
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr unsigned kFullMask = 0xffffffffu;

struct Shared {
  unsigned int hist[kBins];
  unsigned long long warp_sums[kThreads / 32];
  int digit;
  unsigned long long above;  // elements in digits above the chosen one
  unsigned long long equal;  // elements in the chosen digit
};

// Exclusive prefix sum of v over the threads of the block, in thread order.
__device__ __forceinline__ unsigned long long block_exclusive_sum(unsigned long long v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(kFullMask, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) sh.warp_sums[warp] = x;
  __syncthreads();
  unsigned long long before = 0;
  for (int w = 0; w < warp; ++w) before += sh.warp_sums[w];
  __syncthreads();
  return before + x - v;
}

// Returns the k-th largest key (1-based) among elements i < m for which get(i, key) is
// true; at least k such elements must exist. *ties_in_topk: how many elements equal to the
// result belong to the top k; *equal: how many elements equal the result. Called by all
// threads of the block.
template <class Key, class Get>
__device__ Key kth_largest(int64_t m, int64_t k, Get get, Shared& sh, int64_t* ties_in_topk, int64_t* equal) {
  const int tid = threadIdx.x, lane = tid & 31;
  Key prefix = 0, mask = 0;
  int64_t kk = k;
  int remaining = int(sizeof(Key) * 8);
  while (remaining > 0) {
    const int width = remaining < kDigitBits ? remaining : kDigitBits;
    const int shift = remaining - width;
    const int nb = 1 << width;
    for (int i = tid; i < nb; i += kThreads) sh.hist[i] = 0;
    __syncthreads();
    for (int64_t base = 0; base < m; base += kThreads) {
      const int64_t i = base + tid;
      Key key = 0;
      const bool ok = i < m && get(i, key) && (key & mask) == prefix;
      const unsigned d = ok ? unsigned((key >> shift) & Key(nb - 1)) : 0xffffffffu;
      const unsigned peers = __match_any_sync(kFullMask, d);
      if (ok && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[d], unsigned(__popc(peers)));
    }
    __syncthreads();
    // Thread t looks at `per` bins from the top: bins nb-1-t*per down to nb-(t+1)*per.
    const int per = (nb + kThreads - 1) / kThreads;
    const int top = nb - 1 - tid * per;
    unsigned long long local = 0;
    for (int j = 0; j < per && top - j >= 0; ++j) local += sh.hist[top - j];
    unsigned long long cum = block_exclusive_sum(local, sh);
    for (int j = 0; j < per && top - j >= 0; ++j) {
      const unsigned long long h = sh.hist[top - j];
      if (cum < (unsigned long long)kk && cum + h >= (unsigned long long)kk) {
        sh.digit = top - j;
        sh.above = cum;
        sh.equal = h;
      }
      cum += h;
    }
    __syncthreads();
    prefix |= Key(sh.digit) << shift;
    mask |= Key(nb - 1) << shift;
    kk -= int64_t(sh.above);
    remaining = shift;
    if (remaining == 0) *equal = int64_t(sh.equal);
    __syncthreads();
  }
  *ties_in_topk = kk;
  return prefix;
}

}  // namespace select_detail
}  // namespace cuda
}  // namespace cliprt
