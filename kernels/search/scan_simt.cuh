// CUDA-core scan: a CTA of 256 threads holds a tile of QT queries and streams 256-row tiles
// of the database through shared memory with a 3-stage cp.async pipeline, 64 bytes of every
// row per stage. Thread t owns row t of the tile and accumulates its dot products with all
// QT queries in registers; the query chunk is read from shared memory as a broadcast. The
// stage loop runs over (tile, chunk) pairs without a break between tiles, so the loads of
// the next tile are in flight while a tile's epilogue filters its scores against the
// per-query thresholds and appends the survivors (warp-aggregated).
//
// Per storage (a 16-byte chunk of the row):
//   f32:  4 floats x float32 query               (4 FMA)
//   f16:  8 halves widened x float32 query       (8 FMA, query chunk is 32 bytes)
//   bf16: 8 bf16 widened x bf16-rounded float32 query (8 FMA, query chunk 32 bytes)
//   i8:   16 int8 x int8 query codes             (4 dp4a, exact)
//   b1:   128 sign bits x query bits             (4 xor + popc, exact)
// Scores follow scan.h of the CPU core: float accumulation for f32/f16/bf16;
// float(dot) * qscale * xscale for i8; float(D - 2 * hamming) * qscale * xscale for b1.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "common/ptx.cuh"
#include "search/scan_common.cuh"

namespace cliprt {
namespace cuda {
namespace simt {

constexpr int kThreads = 256;
constexpr int kRows = 256;         // rows per tile (one per thread)
constexpr int kChunk = 64;         // database bytes per row per stage
constexpr int kRowStride = 80;     // shared-memory row stride: 64 + 16 keeps LDS.128 conflict-free
constexpr int kStages = 3;

template <Storage S>
struct Traits {
  static constexpr bool kInt = S == Storage::I8 || S == Storage::B1;
  static constexpr int kRatio = (S == Storage::F16 || S == Storage::BF16) ? 2 : 1;  // query bytes per db byte
};

template <Storage S, int QT>
constexpr int smem_bytes() {
  return kStages * (kRows * kRowStride + QT * kChunk * Traits<S>::kRatio);
}

// Widens a 16-byte chunk of 8 half / bf16 values to floats.
template <Storage S>
__device__ __forceinline__ void widen8(const uint4& v, float* out) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (S == Storage::F16) {
      out[2 * i] = __half2float(__ushort_as_half((unsigned short)(w[i] & 0xffffu)));
      out[2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(w[i] >> 16)));
    } else {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}

template <Storage S, int QT>
__global__ void __launch_bounds__(kThreads, 2) scan_kernel(const ScanParams p, int64_t tiles_per_cta) {
  using namespace scan_detail;
  using Acc = typename std::conditional<Traits<S>::kInt, int, float>::type;
  constexpr int R = Traits<S>::kRatio;
  constexpr int kQChunk = kChunk * R;  // query bytes per stage
  CLIPRT_DYNAMIC_SMEM(smem);
  uint8_t* s_rows = smem;                                      // [stage][row][kRowStride]
  uint8_t* s_q = smem + kStages * kRows * kRowStride;          // [stage][QT][kQChunk]
  __shared__ float s_thresh[QT];
  __shared__ float s_qscale[QT];

  const int tid = threadIdx.x;
  const int q0 = blockIdx.x * QT;
  const int64_t ntiles = (p.n + kRows - 1) / kRows;
  const int64_t tile0 = int64_t(blockIdx.y) * tiles_per_cta;
  const int64_t tile1 = min(ntiles, tile0 + tiles_per_cta);
  if (tile0 >= tile1) return;
  for (int i = tid; i < QT; i += kThreads) {
    const int q = q0 + i;
    s_thresh[i] = q < p.nq ? p.thresh[q] : 0.0f;
    s_qscale[i] = (q < p.nq && p.qscale) ? p.qscale[q] : 1.0f;
  }
  const int kch = int((p.pitch + kChunk - 1) / kChunk);
  const int64_t total = (tile1 - tile0) * kch;

  // Producer position (the stage being loaded) and consumer position, advanced in step.
  int64_t ld_tile = tile0;
  int ld_kc = 0, ld_buf = 0;
  int64_t issued = 0;
  auto issue_stage = [&]() {
    if (issued < total) {
      uint8_t* dst_rows = s_rows + ld_buf * (kRows * kRowStride);
#pragma unroll
      for (int j = 0; j < (kRows * kChunk / 16) / kThreads; ++j) {
        const int id = tid + j * kThreads;
        const int r = id >> 2, c = id & 3;
        const int64_t logical = ld_tile * kRows + r;
        const int64_t off = int64_t(ld_kc) * kChunk + c * 16;
        const bool valid = logical < p.n && off < p.pitch;
        const uint8_t* src = valid ? p.codes + physical_row(p, logical) * p.pitch + off : p.codes;
        ptx::cp_async16(dst_rows + r * kRowStride + c * 16, src, valid);
      }
      uint8_t* dst_q = s_q + ld_buf * (QT * kQChunk);
      for (int id = tid; id < QT * (kQChunk / 16); id += kThreads) {
        const int qi = id / (kQChunk / 16), c = id % (kQChunk / 16);
        const int q = q0 + qi;
        const int64_t off = int64_t(ld_kc) * kQChunk + c * 16;
        const bool valid = q < p.nq && off < p.q_pitch;
        const uint8_t* src = valid ? p.q + int64_t(q) * p.q_pitch + off : p.q;
        ptx::cp_async16(dst_q + qi * kQChunk + c * 16, src, valid);
      }
    }
    ptx::cp_async_commit();
    ++issued;
    if (++ld_kc == kch) {
      ld_kc = 0;
      ++ld_tile;
    }
    if (++ld_buf == kStages) ld_buf = 0;
  };

  for (int s = 0; s < kStages - 1; ++s) issue_stage();

  Acc acc[QT];
#pragma unroll
  for (int i = 0; i < QT; ++i) acc[i] = Acc(0);

  int64_t tile = tile0;
  int kc = 0, buf = 0;
  for (int64_t s = 0; s < total; ++s) {
    ptx::cp_async_wait<kStages - 2>();
    __syncthreads();
    issue_stage();  // refills the buffer consumed in the previous iteration

    const uint8_t* row = s_rows + buf * (kRows * kRowStride) + tid * kRowStride;
    const uint8_t* qbase = s_q + buf * (QT * kQChunk);
    uint4 rv[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) rv[c] = *reinterpret_cast<const uint4*>(row + c * 16);

    if constexpr (S == Storage::F32) {
#pragma unroll
      for (int i = 0; i < QT; ++i) {
        const float4* qv = reinterpret_cast<const float4*>(qbase + i * kQChunk);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const float4 x = *reinterpret_cast<const float4*>(&rv[c]);
          const float4 y = qv[c];
          acc[i] = fmaf(y.x, x.x, acc[i]);
          acc[i] = fmaf(y.y, x.y, acc[i]);
          acc[i] = fmaf(y.z, x.z, acc[i]);
          acc[i] = fmaf(y.w, x.w, acc[i]);
        }
      }
    } else if constexpr (S == Storage::F16 || S == Storage::BF16) {
      float xf[32];
#pragma unroll
      for (int c = 0; c < 4; ++c) widen8<S>(rv[c], xf + 8 * c);
#pragma unroll
      for (int i = 0; i < QT; ++i) {
        const float4* qv = reinterpret_cast<const float4*>(qbase + i * kQChunk);
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const float4 y = qv[c];
          acc[i] = fmaf(y.x, xf[4 * c], acc[i]);
          acc[i] = fmaf(y.y, xf[4 * c + 1], acc[i]);
          acc[i] = fmaf(y.z, xf[4 * c + 2], acc[i]);
          acc[i] = fmaf(y.w, xf[4 * c + 3], acc[i]);
        }
      }
    } else if constexpr (S == Storage::I8) {
#pragma unroll
      for (int i = 0; i < QT; ++i) {
        const int4* qv = reinterpret_cast<const int4*>(qbase + i * kQChunk);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int4 y = qv[c];
          acc[i] = __dp4a(int(rv[c].x), y.x, acc[i]);
          acc[i] = __dp4a(int(rv[c].y), y.y, acc[i]);
          acc[i] = __dp4a(int(rv[c].z), y.z, acc[i]);
          acc[i] = __dp4a(int(rv[c].w), y.w, acc[i]);
        }
      }
    } else {  // B1: accumulate the Hamming distance
#pragma unroll
      for (int i = 0; i < QT; ++i) {
        const uint4* qv = reinterpret_cast<const uint4*>(qbase + i * kQChunk);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const uint4 y = qv[c];
          acc[i] += __popc(rv[c].x ^ y.x) + __popc(rv[c].y ^ y.y) + __popc(rv[c].z ^ y.z) +
                    __popc(rv[c].w ^ y.w);
        }
      }
    }

    if (kc == kch - 1) {
      // Epilogue of a tile: every thread of the CTA runs it (warp-level appends).
      const int64_t logical = tile * kRows + tid;
      const bool valid = logical < p.n;
      const int64_t prow = valid ? physical_row(p, logical) : 0;
      const bool live = valid && !is_deleted(p.deleted, prow);
      float xs = 1.0f;
      if constexpr (Traits<S>::kInt) xs = live ? p.xscale[prow] : 0.0f;
#pragma unroll
      for (int i = 0; i < QT; ++i) {
        float score;
        if constexpr (S == Storage::I8)
          score = __fmul_rn(__fmul_rn(__int2float_rn(acc[i]), s_qscale[i]), xs);
        else if constexpr (S == Storage::B1)
          score = __fmul_rn(__fmul_rn(__int2float_rn(p.dim - 2 * acc[i]), s_qscale[i]), xs);
        else
          score = acc[i];
        const bool keep = live && q0 + i < p.nq && score >= s_thresh[i];
        append_warp(p, q0 + i, keep, score, prow);
        acc[i] = Acc(0);
      }
    }
    if (++kc == kch) {
      kc = 0;
      ++tile;
    }
    if (++buf == kStages) buf = 0;
  }
}

}  // namespace simt
}  // namespace cuda
}  // namespace cliprt
