// Launchers of the layout kernels (index/layout_kernels.cuh).
#include <algorithm>

#include "common/check.h"
#include "index/layout.h"
#include "index/layout_kernels.cuh"

namespace cliprt {
namespace cuda {
using namespace layout_detail;
namespace {

unsigned grid_for(int64_t n) { return unsigned(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 65536))); }

}  // namespace

void launch_unpack_rows(const Layout& L, const uint8_t* packed, int64_t rows, uint8_t* dst, int64_t pitch,
                        cudaStream_t stream) {
  if (rows == 0) return;
  unpack_kernel<<<grid_for(rows * L.ngroups), 256, 0, stream>>>(packed, rows, L.ngroups, L.group_bytes, dst, pitch);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

void launch_pack_rows(const Layout& L, const uint8_t* src, int64_t pitch, int64_t rows, uint8_t* packed,
                      cudaStream_t stream) {
  if (rows == 0) return;
  pack_kernel<<<grid_for(rows * L.ngroups), 256, 0, stream>>>(src, pitch, rows, L.ngroups, L.group_bytes, packed);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

void launch_gather_rows(const uint8_t* src, int64_t src_pitch, const uint32_t* rows, int64_t n, int64_t width,
                        uint8_t* dst, cudaStream_t stream) {
  if (n == 0 || width == 0) return;
  gather_kernel<<<grid_for(n * width), 256, 0, stream>>>(src, src_pitch, rows, n, width, dst);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace cliprt
