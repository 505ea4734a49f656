// Rescoring kernel (rescore.h): one warp per candidate; lanes stride over the dimensions
// with float64 FMAs (the product of two floats is exact in float64, so FMA and
// multiply-add agree), then a shuffle reduction and a single rounding to float32.
#pragma once
#include "common/keys.cuh"
#include "search/rescore.h"

namespace cliprt {
namespace cuda {
namespace rescore_detail {

constexpr int kWarpsPerBlock = 8;

__global__ void __launch_bounds__(kWarpsPerBlock * 32) rescore_kernel(const RescoreParams p) {
  const int64_t w = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (w >= int64_t(p.nq) * p.kc) return;
  const int q = int(w / p.kc);
  const uint32_t row = p.rows[w];
  if (row == 0xffffffffu) return;
  const float* qv = p.q + int64_t(q) * p.q_stride;
  const float* xv = p.orig + int64_t(row) * p.dim;
  double acc = 0.0;
  for (int d = lane; d < p.dim; d += 32) acc = fma(double(qv[d]), double(xv[d]), acc);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    const unsigned pos = atomicAdd(&p.count[q], 1u);
    p.cand[int64_t(q) * p.kc + pos] = make_candidate(__double2float_rn(acc), row);
  }
}

}  // namespace rescore_detail
}  // namespace cuda
}  // namespace cliprt
