// Scan kernels: similarity of a tile of prepared queries against a span of packed blocks.
// One scalar reference (scan_scalar.cpp, the spec) plus SIMD variants chosen at run time.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "cliprt/features.h"
#include "cliprt/types.h"

namespace cliprt {

// Queries encoded for one storage. Row q starts at data() + q * stride bytes:
//   f32, f16: float[dim]                       (the query itself; f16 widens the database)
//   bf16:     uint32[ngroups]  (bf16 of dim 2g in the low half, 2g+1 in the high half)
//   i8:       int8[ngroups*4]  (i8 codec of the query) ; qsum[q] = sum of its codes
//   b1:       uint64[ngroups]  (b1 codec bits of the query)
// qscale[q] is the query's codec scale (i8, b1) and 1 otherwise.
struct PreparedQueries {
  Layout layout;
  int nq = 0;
  size_t stride = 0;
  std::vector<uint64_t> storage_;  // 8-byte aligned backing store
  std::vector<float> qscale;
  std::vector<int32_t> qsum;
  const uint8_t* row(int q) const {
    return reinterpret_cast<const uint8_t*>(storage_.data()) + size_t(q) * stride;
  }
  uint8_t* mutable_row(int q) { return reinterpret_cast<uint8_t*>(storage_.data()) + size_t(q) * stride; }
};

// Encodes nq float queries (already normalised for cosine) for the layout's storage.
void prepare_queries(const Layout& L, const float* x, int nq, PreparedQueries* out);

// A contiguous run of blocks of one segment; scale points at the per-row scale of the
// span's first row (i8, b1) and is null otherwise.
struct BlockSpan {
  const uint8_t* codes = nullptr;
  const float* scale = nullptr;
  int64_t nblocks = 0;
};

// Writes out[i * ld + r] = score of query q0+i against row r of the span, for i < nq and
// r < 16 * nblocks. Scores (dot product with the dequantised row):
//   f32, f16: sum_d q[d] * x[d]                       (float accumulation)
//   bf16:     sum_d bf16(q[d]) * x[d]                 (float accumulation)
//   i8:       float(sum_d qcode[d] * xcode[d]) * qscale * xscale   (exact integer dot)
//   b1:       float(D - 2 * hamming(q, x)) * qscale * xscale      (exact integer)
using ScoreFn = void (*)(const PreparedQueries& Q, int q0, int nq, const BlockSpan& span,
                         float* out, int64_t ld);
// Writes the indices i < n with scores[i] >= threshold into idx, returns their count.
// idx must have room for n + kSelectSlack entries (SIMD variants store whole registers).
constexpr int64_t kSelectSlack = 16;
using SelectFn = int64_t (*)(const float* scores, int64_t n, float threshold, uint32_t* idx);

// Exact dot product of two float32 vectors accumulated in float64 (rescoring).
using DotFn = double (*)(const float* a, const float* b, int n);

struct ScanKernels {
  const char* name;
  ScoreFn score[kNumStorages];
  SelectFn select;
  DotFn dot_f64;
};

const ScanKernels& scalar_kernels();
#if CLIPRT_HAVE_X86_VARIANTS
const ScanKernels& avx2_kernels();
const ScanKernels& avx512_kernels();
#endif

// Run-time dispatch. The variant is picked from CPU features, or forced by the environment
// variable CLIPRT_SIMD=scalar|avx2|avx512 (an unavailable forced variant is an error).
const ScanKernels& active_kernels();
std::vector<std::string> available_variants();   // supported by this build and this CPU
std::vector<std::string> compiled_variants();    // compiled into this build
void set_active_variant(const std::string& name);  // throws ValueError if unavailable

}  // namespace cliprt
