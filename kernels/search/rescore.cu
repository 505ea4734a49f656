// Launcher of the rescoring kernel (search/rescore_kernel.cuh).
#include "common/check.h"
#include "search/rescore_kernel.cuh"

namespace cliprt {
namespace cuda {
using namespace rescore_detail;

void launch_rescore(const RescoreParams& p, cudaStream_t stream) {
  const int64_t warps = int64_t(p.nq) * p.kc;
  if (warps == 0) return;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  CLIPRT_ASSERT(blocks < (int64_t(1) << 31));
  rescore_kernel<<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(p);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace cliprt
