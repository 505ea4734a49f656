// Row preparation on the device, shared by add (stored rows) and search (queries): the
// validation, normalisation and encoding the CPU index does in Index::prepare_rows and
// encode_row, with the same results bit for bit.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cliprt/types.h"

namespace cliprt {
namespace cuda {

struct PrepareParams {
  const float* x = nullptr;  // (n, dim) float32 rows, device memory
  int64_t n = 0;
  int dim = 0;
  Storage storage = Storage::F32;
  bool cosine = false;
  // Stored rows of an "ip" index must fit the storage: |v| <= max_abs.
  bool check_range = false;
  float max_abs = 0.0f;
  // Error reports (device, initialised to ~0ull by the caller): the smallest flat index
  // (row0 + row) * dim + column of a NaN/Inf/out-of-range value, and the smallest row with
  // zero norm (cosine only). Rows with either problem produce all-zero outputs.
  unsigned long long* first_bad = nullptr;
  unsigned long long* first_zero = nullptr;
  int64_t row0 = 0;
  // Outputs, each optional. f32: the prepared float rows (normalised for cosine), zero
  // padded to f32_stride floats; required when cosine and codes are both wanted.
  float* f32 = nullptr;
  int64_t f32_stride = 0;
  // f32_bf16: the prepared rows rounded to bf16 and widened back (the bf16 storage's query
  // operand on CUDA cores), same stride as f32.
  float* f32_bf16 = nullptr;
  // codes: the storage codec of each prepared row (codec.h group order), zero padded to
  // code_pitch bytes; scales: its per-row scale.
  uint8_t* codes = nullptr;
  int code_row_bytes = 0;  // Layout::row_bytes() of (storage, dim)
  int64_t code_pitch = 0;
  float* scales = nullptr;
  // b1 only: the sign bits expanded to +1/-1 int8 (0 past dim), b1x_pitch bytes per row.
  int8_t* b1x = nullptr;
  int64_t b1x_pitch = 0;
};

// One thread block per row; n must be < 2^31.
void launch_prepare_rows(const PrepareParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace cliprt
