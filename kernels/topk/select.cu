// Launchers of the block-per-query selection kernels (topk/select_kernels.cuh).
#include <algorithm>

#include "common/check.h"
#include "topk/select_kernels.cuh"

namespace cliprt {
namespace cuda {
using namespace select_detail;

void launch_kth_threshold(const CandidateLists& c, int64_t k, float* thresh, cudaStream_t stream) {
  if (c.nq == 0) return;
  kth_threshold_kernel<<<c.nq, kThreads, 0, stream>>>(c, k, thresh);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

void launch_block_topk(const CandidateLists& c, int64_t k, const int64_t* ids, const TopKOut& out,
                       unsigned int* overflow, cudaStream_t stream) {
  CLIPRT_ASSERT(k >= 1 && k <= kBlockTopKMax);
  if (c.nq == 0) return;
  block_topk_kernel<<<c.nq, kThreads, 0, stream>>>(c, k, ids, out, overflow);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

void launch_fill_empty(const TopKOut& out, int nq, int64_t k, cudaStream_t stream) {
  const int64_t total = int64_t(nq) * k;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 4096);
  fill_empty_kernel<<<unsigned(blocks), 256, 0, stream>>>(out, nq, k);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

void launch_fill_value(float* p, int64_t n, float v, cudaStream_t stream) {
  if (n == 0) return;
  fill_value_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 1024)), 256, 0, stream>>>(p, n, v);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace cliprt
