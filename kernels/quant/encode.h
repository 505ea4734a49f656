// Device-side codecs: the same codes as the CPU specification (csrc/include/cliprt/codec.h)
// for the same input, so an index moves between CPU and GPU without re-encoding.
#pragma once
#include <cstdint>
#include <vector>

#include "cliprt/types.h"

namespace cliprt {
namespace cuda {

// Encodes n rows of dim floats (host, row-major) on device 0 into contiguous row codes
// (n * row_bytes, group order as encode_row) and per-row scales; copies both back.
void encode_rows(const Layout& L, const float* x, int64_t n, std::vector<uint8_t>* codes,
                 std::vector<float>* scales);

}  // namespace cuda
}  // namespace cliprt
