// Launcher of the row preparation kernel (index/prepare_kernel.cuh).
#include "common/check.h"
#include "index/prepare_kernel.cuh"

namespace cliprt {
namespace cuda {
using namespace prepare_detail;

void launch_prepare_rows(const PrepareParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  CLIPRT_ASSERT(p.n < (int64_t(1) << 31));
  CLIPRT_ASSERT(!(p.cosine && p.codes) || p.f32);
  CLIPRT_ASSERT(!p.f32_bf16 || p.f32);
  prepare_rows_kernel<<<unsigned(p.n), kEncodeThreads, 0, stream>>>(p);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace cliprt
