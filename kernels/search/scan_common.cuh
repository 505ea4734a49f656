// Device pieces shared by the two scan kernel families: row lookup, deletion test and the
// candidate appends.
#pragma once
#include "common/keys.cuh"
#include "search/scan.h"

namespace cliprt {
namespace cuda {
namespace scan_detail {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ int64_t physical_row(const ScanParams& p, int64_t logical) {
  return p.rows ? int64_t(p.rows[logical * p.stride]) : logical * p.stride;
}

__device__ __forceinline__ bool is_deleted(const uint32_t* deleted, int64_t row) {
  return deleted && ((deleted[row >> 5] >> (row & 31)) & 1u);
}

// Appends one candidate to query q's list (per-thread; survivors are rare after the first
// tiles, so contention on count[q] stays low).
__device__ __forceinline__ void append(const ScanParams& p, int q, float score, int64_t row) {
  const unsigned pos = atomicAdd(&p.count[q], 1u);
  if (pos < p.cap) p.cand[int64_t(q) * p.cap + pos] = make_candidate(score, uint32_t(row));
}

// Warp-aggregated append: every lane of the warp calls it (keep is per lane, q uniform).
__device__ __forceinline__ void append_warp(const ScanParams& p, int q, bool keep, float score, int64_t row) {
  const unsigned mask = __ballot_sync(kFullMask, keep);
  if (mask == 0) return;
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(mask) - 1;
  unsigned base = 0;
  if (lane == leader) base = atomicAdd(&p.count[q], unsigned(__popc(mask)));
  base = __shfl_sync(kFullMask, base, leader);
  if (keep) {
    const unsigned pos = base + unsigned(__popc(mask & ((1u << lane) - 1u)));
    if (pos < p.cap) p.cand[int64_t(q) * p.cap + pos] = make_candidate(score, uint32_t(row));
  }
}

}  // namespace scan_detail
}  // namespace cuda
}  // namespace cliprt
