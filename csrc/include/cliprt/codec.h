// Scalar codecs: the specification of every storage format. SIMD and CUDA code must produce
// the same codes for the same input.
//   f16:  IEEE binary16, round to nearest even.      bf16: round to nearest even.
//   i8:   symmetric per-vector absmax: scale = max|x| / 127, code = rint(x * (127 / max|x|))
//         in float32 (in float64 when 127 / max|x| overflows float32), clamped to
//         [-127, 127]; a zero vector has scale 0 and zero codes.
//   b1:   bit = (x > 0); scale = ||x|| / sqrt(D) (so the dequantised row keeps the norm);
//         dequantised value = (bit ? +scale : -scale). For unit vectors the scale is the same
//         for every row and scores rank exactly as Hamming distance does.
#pragma once
#include <cstdint>
#include "cliprt/types.h"

namespace cliprt {

uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);

// Largest finite magnitude the storage can hold (inputs beyond it are rejected).
float storage_max_abs(Storage s);

// Encodes one row (dim floats, already normalised for cosine) into row_bytes() contiguous
// bytes in group order, plus its per-row scale (i8, b1; else 1).
void encode_row(const Layout& L, const float* x, uint8_t* code, float* scale);
// Inverse of encode_row for the stored value (dequantised float32).
void decode_row(const Layout& L, const uint8_t* code, float scale, float* out);

// L2-normalises a row in place given its float64 sum of squares (> 0): one float32 multiply
// by 1/norm rounded to float32, or a float64 division where 1/norm overflows float32.
void normalise_row(float* x, int dim, double sum_sq);

// Moves one contiguous row code into / out of the packed block layout.
void scatter_row(const Layout& L, const uint8_t* code, uint8_t* blocks, int64_t row);
void gather_row(const Layout& L, const uint8_t* blocks, int64_t row, uint8_t* code);

}  // namespace cliprt
