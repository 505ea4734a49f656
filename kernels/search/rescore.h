// Exact rescoring of code-scan candidates against the float32 originals kept on the device:
// the dot product of the prepared float32 query with the original row, accumulated in
// float64 and rounded once to float32 (the CPU's dot_f64). Candidates are given as rows
// (0xffffffff = empty slot), kc per query; the rescored candidates become candidate lists
// (scan.h) for the final top-k.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cliprt {
namespace cuda {

struct RescoreParams {
  const float* q = nullptr;     // (nq, q_stride) prepared float32 queries
  int64_t q_stride = 0;
  const float* orig = nullptr;  // (rows, dim) originals
  int dim = 0;
  const uint32_t* rows = nullptr;  // (nq, kc)
  int nq = 0;
  int64_t kc = 0;
  unsigned long long* cand = nullptr;  // (nq, kc) output lists
  unsigned int* count = nullptr;       // (nq), zeroed by the caller
};

void launch_rescore(const RescoreParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace cliprt
