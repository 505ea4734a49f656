// CPU emulation of kernels/common/ptx.cuh (see tests/cuda_emulation/cusim.h): same interface.
#pragma once
#include <cstdint>
#include <cstring>

#define CLIPRT_DYNAMIC_SMEM(name) uint8_t* name = ::cusim::dynamic_smem()

namespace cliprt {
namespace cuda {
namespace ptx {

inline void cp_async16(void* smem, const void* gmem, bool valid) {
  if (valid)
    std::memcpy(smem, gmem, 16);
  else
    std::memset(smem, 0, 16);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem) { ::cusim::ldmatrix_x4(r, smem); }

inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::cusim::mma<float, __nv_bfloat16, 16>(d, a, b0, b1);
}
inline void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::cusim::mma<int, int8_t, 32>(d, a, b0, b1);
}

}  // namespace ptx
}  // namespace cuda
}  // namespace cliprt
