// Order-preserving keys for float32 scores: key(a) < key(b) exactly when a < b (for
// non-NaN scores), with -0.0 and +0.0 mapped to one key so they tie as they do on the CPU.
// Candidates travel as one 64-bit word, key in the high half and database row in the low
// half, so a single 8-byte store publishes both.
#pragma once
#include <cstdint>

namespace cliprt {
namespace cuda {

__host__ __device__ __forceinline__ uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  __builtin_memcpy(&b, &f, 4);
  return b;
#endif
}

__host__ __device__ __forceinline__ float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  __builtin_memcpy(&f, &b, 4);
  return f;
#endif
}

__host__ __device__ __forceinline__ uint32_t score_key(float s) {
  uint32_t b = float_bits(s);
  if (b == 0x80000000u) b = 0;  // -0.0 ties with +0.0
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__host__ __device__ __forceinline__ float key_score(uint32_t k) {
  return bits_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__host__ __device__ __forceinline__ unsigned long long make_candidate(float score, uint32_t row) {
  return (static_cast<unsigned long long>(score_key(score)) << 32) | row;
}
__host__ __device__ __forceinline__ uint32_t candidate_key(unsigned long long c) { return uint32_t(c >> 32); }
__host__ __device__ __forceinline__ uint32_t candidate_row(unsigned long long c) { return uint32_t(c); }

}  // namespace cuda
}  // namespace cliprt
