// Moves codes between the CPU index's packed block layout (types.h: 16 rows interleaved by
// group) and the device layout (row-major, `pitch` bytes per row, zero past row_bytes), and
// gathers rows by index. Pure byte moves: codes are never re-encoded.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cliprt/types.h"

namespace cliprt {
namespace cuda {

// packed: blocks_for_rows(rows) blocks -> dst rows [0, rows) (row_bytes of each row).
void launch_unpack_rows(const Layout& L, const uint8_t* packed, int64_t rows, uint8_t* dst, int64_t pitch,
                        cudaStream_t stream);
// src rows [0, rows) -> packed blocks (the caller zeroes the tail of the last block).
void launch_pack_rows(const Layout& L, const uint8_t* src, int64_t pitch, int64_t rows, uint8_t* packed,
                      cudaStream_t stream);
// dst[i * width, +width) = src[rows[i] * src_pitch, +width) for i < n.
void launch_gather_rows(const uint8_t* src, int64_t src_pitch, const uint32_t* rows, int64_t n, int64_t width,
                        uint8_t* dst, cudaStream_t stream);

}  // namespace cuda
}  // namespace cliprt
