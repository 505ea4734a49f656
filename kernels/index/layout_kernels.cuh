// Layout kernels (layout.h): one thread per (row, group) for the block layout conversions;
// groups are 2, 4 or 8 bytes, copied byte by byte (alignment of either side is not assumed).
#pragma once
#include <cstdint>

#include "cliprt/types.h"

namespace cliprt {
namespace cuda {
namespace layout_detail {

__global__ void unpack_kernel(const uint8_t* __restrict__ packed, int64_t rows, int ngroups, int group_bytes,
                              uint8_t* __restrict__ dst, int64_t pitch) {
  const int64_t total = rows * ngroups;
  const int64_t block_bytes = int64_t(ngroups) * kBlockRows * group_bytes;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / ngroups;
    const int g = int(i % ngroups);
    const uint8_t* s = packed + (row / kBlockRows) * block_bytes + (int64_t(g) * kBlockRows + row % kBlockRows) * group_bytes;
    uint8_t* d = dst + row * pitch + int64_t(g) * group_bytes;
    for (int b = 0; b < group_bytes; ++b) d[b] = s[b];
  }
}

__global__ void pack_kernel(const uint8_t* __restrict__ src, int64_t pitch, int64_t rows, int ngroups,
                            int group_bytes, uint8_t* __restrict__ packed) {
  const int64_t total = rows * ngroups;
  const int64_t block_bytes = int64_t(ngroups) * kBlockRows * group_bytes;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / ngroups;
    const int g = int(i % ngroups);
    uint8_t* d = packed + (row / kBlockRows) * block_bytes + (int64_t(g) * kBlockRows + row % kBlockRows) * group_bytes;
    const uint8_t* s = src + row * pitch + int64_t(g) * group_bytes;
    for (int b = 0; b < group_bytes; ++b) d[b] = s[b];
  }
}

__global__ void gather_kernel(const uint8_t* __restrict__ src, int64_t src_pitch, const uint32_t* __restrict__ rows,
                              int64_t n, int64_t width, uint8_t* __restrict__ dst) {
  const int64_t total = n * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, b = i % width;
    dst[i] = src[int64_t(rows[r]) * src_pitch + b];
  }
}

}  // namespace layout_detail
}  // namespace cuda
}  // namespace cliprt
