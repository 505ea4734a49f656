// Similarity scans with a fused candidate filter. A scan scores queries against database
// rows and appends every (score, row) with score >= the query's threshold, and the row
// neither deleted nor padding, to that query's candidate list; the full (queries x rows)
// score matrix never exists. Two kernel families share this contract:
//   simt: CUDA cores, a tile of QT queries against 256 rows (scan_simt.cuh); for few
//         queries it streams the database at memory bandwidth, and it is the f32/f16 path
//         for every batch size (their scores need float32 products).
//   mma:  tensor cores (mma.sync bf16 / int8; b1 as +-1 int8), a tile of BM queries against
//         128 rows, the filter in the epilogue (scan_mma.cuh).
// plan_scan and launch_scan in dispatch.cu are the one place where run-time values
// (storage, batch size) become template parameters.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cliprt/types.h"

namespace cliprt {
namespace cuda {

struct ScanParams {
  // Database: row r's code is codes[r * pitch, r * pitch + pitch), zero past row_bytes.
  const uint8_t* codes = nullptr;
  int64_t pitch = 0;                 // bytes, a multiple of 16
  const float* xscale = nullptr;     // per-row scale (i8, b1), else null
  const uint32_t* deleted = nullptr; // bitmap over rows (bit r % 32 of word r / 32), or null
  // Rows scanned: logical i < n is row (rows ? rows[i * stride] : i * stride).
  const uint32_t* rows = nullptr;
  int64_t n = 0;
  int64_t stride = 1;
  int dim = 0;
  // Queries in the form the plan asks for (QueryForm), q_pitch bytes apart, zero padded to
  // cover pitch (times 2 for f32 queries against f16 rows, times 8 for expanded b1).
  const uint8_t* q = nullptr;
  int64_t q_pitch = 0;
  const float* qscale = nullptr;  // i8, b1
  int nq = 0;
  const float* thresh = nullptr;  // per query: keep scores >= thresh[q]
  // Output: list q is cand[q * cap, q * cap + cap); count[q] counts every candidate found,
  // including those past cap (which are dropped: the caller sees count > cap and retries).
  unsigned long long* cand = nullptr;
  int64_t cap = 0;
  unsigned int* count = nullptr;
};

// How the queries are prepared for a scan:
//   F32:        float32 rows (f32 and f16 storage)
//   F32Rounded: float32 of the bf16-rounded query (bf16 storage, simt)
//   Codes:      the query's own storage codes (bf16 mma, i8, b1 simt)
//   B1Expanded: the query's sign bits as +1/-1 int8, 0 past dim (b1 mma)
enum class QueryForm { F32, F32Rounded, Codes, B1Expanded };

struct ScanPlan {
  bool mma = false;
  int tile = 1;  // queries per tile: QT (simt) or BM (mma)
  QueryForm form = QueryForm::F32;
  int q_ratio = 1;  // query bytes per database byte (f32 queries on f16 rows: 2; b1 mma: 8)
};

ScanPlan plan_scan(Storage storage, int nq);
void launch_scan(Storage storage, const ScanPlan& plan, const ScanParams& p, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace cliprt
