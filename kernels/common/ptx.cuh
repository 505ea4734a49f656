// Thin wrappers over the PTX the scan kernels need: asynchronous global->shared copies
// (cp.async, sm_80+), ldmatrix and the bf16 / int8 warp-level MMAs (mma.sync, sm_80+).
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 / m16n8k32"): with
// g = lane / 4 and t = lane % 4, A register i holds row g + 8 * (i % 2), bytes
// 16 * (i / 2) + 4 * t .. + 3 of the 32-byte k-slice; B register i holds column g, bytes
// 16 * i + 4 * t .. + 3; accumulator c holds row g + 8 * (c / 2), column 2 * t + c % 2.
// bf16 (2 bytes) and int8 (1 byte) share that byte layout, so one ldmatrix addressing
// serves both. (tests/cuda_emulation/ holds a CPU emulation of this header for kernel tests.)
#pragma once
#include <cstdint>

// Declares a kernel's dynamic shared memory as `uint8_t name[]`, 128-byte aligned.
#define CLIPRT_DYNAMIC_SMEM(name) extern __shared__ __align__(128) uint8_t name[]

namespace cliprt {
namespace cuda {
namespace ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte copy global -> shared that bypasses L1; valid == false writes 16 zero bytes and
// reads nothing (gmem must still be a mapped address: callers pass a base pointer).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// d += a * b, m16n8k16, bf16 inputs, float32 accumulation.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a * b, m16n8k32, int8 inputs, exact int32 accumulation.
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace ptx
}  // namespace cuda
}  // namespace cliprt
