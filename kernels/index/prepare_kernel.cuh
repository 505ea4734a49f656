// Row preparation kernel (prepare.h), one block per row. Validation first (every column of
// the row; the smallest bad column wins, so the host can name the first bad value in
// row-major order as the CPU does), then the float64 sum of squares in the CPU's
// sequential order (one thread: bit-exact normalisation matters, because the i8 and b1
// codes of the normalised row must equal the CPU's), then the normalised float row, then
// the storage codes.
#pragma once
#include <climits>

#include "index/prepare.h"
#include "quant/encode_row.cuh"

namespace cliprt {
namespace cuda {
namespace prepare_detail {

__global__ void __launch_bounds__(kEncodeThreads) prepare_rows_kernel(const PrepareParams p) {
  const int64_t r = blockIdx.x;
  const int dim = p.dim;
  const float* xr = p.x + r * dim;
  __shared__ int s_bad;
  __shared__ double s_ss;
  if (threadIdx.x == 0) {
    s_bad = INT_MAX;
    s_ss = 1.0;
  }
  __syncthreads();
  int bad = INT_MAX;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const float v = xr[d];
    if (!isfinite(v) || (p.check_range && fabsf(v) > p.max_abs)) {
      bad = d;
      break;
    }
  }
  if (bad != INT_MAX) atomicMin(&s_bad, bad);
  __syncthreads();
  bool invalid = s_bad != INT_MAX;
  if (invalid && threadIdx.x == 0)
    atomicMin(p.first_bad, (unsigned long long)(p.row0 + r) * (unsigned long long)dim + (unsigned long long)s_bad);
  if (!invalid && p.cosine) {
    if (threadIdx.x == 0) {
      double ss = 0.0;
      for (int d = 0; d < dim; ++d) ss = __dadd_rn(ss, __dmul_rn(double(xr[d]), double(xr[d])));
      s_ss = ss;
      if (!(ss > 0.0)) atomicMin(p.first_zero, (unsigned long long)(p.row0 + r));
    }
    __syncthreads();
    invalid = !(s_ss > 0.0);
  }

  const float* src = xr;
  if (p.f32) {
    float* fr = p.f32 + r * p.f32_stride;
    if (invalid) {
      for (int64_t d = threadIdx.x; d < p.f32_stride; d += blockDim.x) fr[d] = 0.0f;
    } else if (p.cosine) {
      const double inv64 = __ddiv_rn(1.0, __dsqrt_rn(s_ss));
      const float inv = __double2float_rn(inv64);
      const bool finite = isfinite(inv);
      for (int d = threadIdx.x; d < dim; d += blockDim.x)
        fr[d] = finite ? __fmul_rn(xr[d], inv) : __double2float_rn(__dmul_rn(double(xr[d]), inv64));
      for (int64_t d = dim + threadIdx.x; d < p.f32_stride; d += blockDim.x) fr[d] = 0.0f;
    } else {
      for (int d = threadIdx.x; d < dim; d += blockDim.x) fr[d] = xr[d];
      for (int64_t d = dim + threadIdx.x; d < p.f32_stride; d += blockDim.x) fr[d] = 0.0f;
    }
    src = fr;
    __syncthreads();
    if (p.f32_bf16) {
      float* br = p.f32_bf16 + r * p.f32_stride;
      for (int64_t d = threadIdx.x; d < p.f32_stride; d += blockDim.x)
        br[d] = __bfloat162float(__float2bfloat16_rn(fr[d]));
    }
  }

  if (p.codes) {
    const int row_bytes = p.code_row_bytes;
    uint8_t* cr = p.codes + r * p.code_pitch;
    if (invalid) {
      for (int64_t i = threadIdx.x; i < p.code_pitch; i += blockDim.x) cr[i] = 0;
      if (threadIdx.x == 0 && p.scales) p.scales[r] = 0.0f;
      __syncthreads();
    } else {
      float scale = 0.0f;
      encode_row_block(p.storage, src, dim, row_bytes, cr, &scale);
      if (threadIdx.x == 0 && p.scales) p.scales[r] = scale;
      for (int64_t i = row_bytes + threadIdx.x; i < p.code_pitch; i += blockDim.x) cr[i] = 0;
      __syncthreads();
    }
    if (p.b1x) {
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(cr);
      int8_t* xr8 = p.b1x + r * p.b1x_pitch;
      for (int64_t j = threadIdx.x; j < p.b1x_pitch; j += blockDim.x)
        xr8[j] = j < dim ? (((bits[j >> 5] >> (j & 31)) & 1u) ? int8_t(1) : int8_t(-1)) : int8_t(0);
    }
  }
}

}  // namespace prepare_detail
}  // namespace cuda
}  // namespace cliprt
