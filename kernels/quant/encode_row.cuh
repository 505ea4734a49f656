// Block-cooperative row codec, shared by the encode kernel and the device index's row
// preparation. Bit-exactness with the CPU codec (codec.h): f16/bf16 use the
// round-to-nearest-even intrinsics; i8 computes 127 / max|x| and x * inv as single IEEE
// float operations (no contraction), with the same float64 fallback for tiny vectors; b1's
// float64 sum of squares is accumulated sequentially by one thread, in the CPU's order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cliprt/types.h"

namespace cliprt {
namespace cuda {

constexpr int kEncodeThreads = 256;

// Encodes row xr (dim floats, global memory) into cr (row_bytes bytes, global memory) and
// *scale. Called by all kEncodeThreads threads of a block; cr must not alias xr.
__device__ __forceinline__ void encode_row_block(Storage storage, const float* __restrict__ xr, int dim,
                                                 int row_bytes, uint8_t* __restrict__ cr, float* scale) {
  __shared__ float s_amax[kEncodeThreads];
  __shared__ float s_inv;
  __shared__ double s_inv64;
  __shared__ bool s_tiny;
  for (int i = threadIdx.x; i < row_bytes; i += blockDim.x) cr[i] = 0;
  __syncthreads();
  switch (storage) {
    case Storage::F32:
      for (int d = threadIdx.x; d < dim; d += blockDim.x) reinterpret_cast<float*>(cr)[d] = xr[d];
      if (threadIdx.x == 0) *scale = 1.0f;
      break;
    case Storage::F16:
      for (int d = threadIdx.x; d < dim; d += blockDim.x)
        reinterpret_cast<__half*>(cr)[d] = __float2half_rn(xr[d]);
      if (threadIdx.x == 0) *scale = 1.0f;
      break;
    case Storage::BF16:
      for (int d = threadIdx.x; d < dim; d += blockDim.x)
        reinterpret_cast<__nv_bfloat16*>(cr)[d] = __float2bfloat16_rn(xr[d]);
      if (threadIdx.x == 0) *scale = 1.0f;
      break;
    case Storage::I8: {
      float m = 0.0f;
      for (int d = threadIdx.x; d < dim; d += blockDim.x) m = fmaxf(m, fabsf(xr[d]));
      s_amax[threadIdx.x] = m;
      __syncthreads();
      for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) s_amax[threadIdx.x] = fmaxf(s_amax[threadIdx.x], s_amax[threadIdx.x + s]);
        __syncthreads();
      }
      const float amax = s_amax[0];
      if (threadIdx.x == 0) {
        s_inv = __fdiv_rn(127.0f, amax);
        s_tiny = !isfinite(s_inv);
        s_inv64 = 127.0 / double(amax);
        *scale = amax > 0.0f ? __fdiv_rn(amax, 127.0f) : 0.0f;
      }
      __syncthreads();
      if (amax > 0.0f) {
        int8_t* c = reinterpret_cast<int8_t*>(cr);
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
          if (!s_tiny) {
            const float v = rintf(__fmul_rn(xr[d], s_inv));
            c[d] = int8_t(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
          } else {
            const double v = rint(__dmul_rn(double(xr[d]), s_inv64));
            c[d] = int8_t(v > 127.0 ? 127.0 : (v < -127.0 ? -127.0 : v));
          }
        }
      }
      break;
    }
    case Storage::B1: {
      unsigned long long* w = reinterpret_cast<unsigned long long*>(cr);
      for (int d = threadIdx.x; d < dim; d += blockDim.x)
        if (xr[d] > 0.0f) atomicOr(&w[d >> 6], 1ull << (d & 63));
      if (threadIdx.x == 0) {
        double sum_sq = 0.0;
        for (int d = 0; d < dim; ++d) sum_sq = __dadd_rn(sum_sq, __dmul_rn(double(xr[d]), double(xr[d])));
        *scale = float(sqrt(sum_sq / dim));
      }
      break;
    }
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace cliprt
