// Tensor-core scan: a CTA of 8 warps computes a BM x 128 tile of scores (BM queries x 128
// database rows) with mma.sync, 128 bytes of K per pipeline stage (3 stages, cp.async),
// and filters the tile in the epilogue: each score is compared with its query's threshold
// and the rare survivors are appended to the query's candidate list, so no score matrix is
// written. Warps are arranged 2 (queries) x 4 (rows); a warp owns a (BM/2) x 32 sub-tile.
// Shared-memory tiles hold 128-byte rows whose 16-byte chunks are XOR-swizzled by the row
// index (chunk ^ row % 8), which keeps cp.async stores and ldmatrix reads conflict-free.
//
//   bf16: m16n8k16, bf16 x bf16 -> float32 (the query rounded to bf16, as on the CPU)
//   i8:   m16n8k32, int8 x int8 -> exact int32; score = float(dot) * qscale * xscale
//   b1:   m16n8k32 on +-1 int8: the query is expanded once (0 past dim, so padding bits
//         contribute nothing), the database bits are expanded in registers from shared
//         memory (16 bytes of bits per row per stage); dot = D - 2 * hamming exactly.
// Like scan_simt.cuh, the stage loop runs across tile boundaries so the next tile's loads
// overlap the epilogue.
#pragma once
#include <type_traits>

#include "common/ptx.cuh"
#include "search/scan_common.cuh"

namespace cliprt {
namespace cuda {
namespace mma {

constexpr int kThreads = 256;
constexpr int kRows = 128;   // database rows per tile (BN)
constexpr int kKBytes = 128; // query bytes per row per stage (= expanded database bytes)
constexpr int kStages = 3;

template <Storage S, int BM>
struct Cfg {
  static constexpr bool kBits = S == Storage::B1;
  static constexpr int kRowBytes = kBits ? 16 : kKBytes;  // database bytes per row per stage
  static constexpr int kWarpM = BM / 2;
  static constexpr int kMI = kWarpM / 16;  // m16 tiles per warp
  static constexpr int kNI = 4;            // n8 tiles per warp (32 rows)
  static constexpr int kAStage = BM * kKBytes;
  static constexpr int kBStage = kRows * kRowBytes;
  static constexpr int kSmem = kStages * (kAStage + kBStage);
  // Two CTAs per SM where registers allow; the b1 bit expansion needs more than 128.
  static constexpr int kMinBlocks = kBits ? 1 : 2;
  static_assert(BM == 32 || BM == 64 || BM == 128, "BM is 32, 64 or 128");
};

// Four sign bits (bit i = dim i) -> four int8 lanes of +1 (bit set) or -1 (bit clear).
__device__ __forceinline__ uint32_t expand_nibble(uint32_t nibble) {
  const uint32_t ones = (nibble * 0x00204081u) & 0x01010101u;  // bit i -> bit 0 of byte i
  return 0x01010101u | ((ones ^ 0x01010101u) * 0xFEu);          // 0x01 or 0xFF per byte
}

__device__ __forceinline__ int swz(int row, int chunk) { return row * kKBytes + ((chunk ^ (row & 7)) << 4); }

template <Storage S, int BM>
__global__ void __launch_bounds__(kThreads, (Cfg<S, BM>::kMinBlocks)) scan_kernel(const ScanParams p, int64_t tiles_per_cta) {
  using namespace scan_detail;
  using C = Cfg<S, BM>;
  using Acc = typename std::conditional<S == Storage::BF16, float, int>::type;
  CLIPRT_DYNAMIC_SMEM(smem);
  uint8_t* s_a = smem;                          // [stage][BM][128] swizzled
  uint8_t* s_b = smem + kStages * C::kAStage;   // [stage][128][kRowBytes]

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int q0 = blockIdx.x * BM;
  const int64_t ntiles = (p.n + kRows - 1) / kRows;
  const int64_t tile0 = int64_t(blockIdx.y) * tiles_per_cta;
  const int64_t tile1 = min(ntiles, tile0 + tiles_per_cta);
  if (tile0 >= tile1) return;

  // The 2 * kMI query rows this thread's accumulators belong to.
  float thr[C::kMI][2], qs[C::kMI][2];
  bool qok[C::kMI][2];
#pragma unroll
  for (int mi = 0; mi < C::kMI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int q = q0 + warp_m * C::kWarpM + mi * 16 + g + 8 * h;
      qok[mi][h] = q < p.nq;
      thr[mi][h] = qok[mi][h] ? p.thresh[q] : 0.0f;
      qs[mi][h] = (qok[mi][h] && p.qscale) ? p.qscale[q] : 1.0f;
    }

  const int kch = C::kBits ? int((p.pitch + 15) / 16) : int((p.pitch + kKBytes - 1) / kKBytes);
  const int64_t total = (tile1 - tile0) * kch;

  int64_t ld_tile = tile0;
  int ld_kc = 0, ld_buf = 0;
  int64_t issued = 0;
  auto issue_stage = [&]() {
    if (issued < total) {
      uint8_t* a = s_a + ld_buf * C::kAStage;
#pragma unroll
      for (int j = 0; j < (BM * kKBytes / 16) / kThreads; ++j) {
        const int id = tid + j * kThreads;
        const int r = id >> 3, c = id & 7;
        const int q = q0 + r;
        const int64_t off = int64_t(ld_kc) * kKBytes + c * 16;
        const bool valid = q < p.nq && off < p.q_pitch;
        const uint8_t* src = valid ? p.q + int64_t(q) * p.q_pitch + off : p.q;
        ptx::cp_async16(a + swz(r, c), src, valid);
      }
      uint8_t* b = s_b + ld_buf * C::kBStage;
      if constexpr (C::kBits) {
        if (tid < kRows) {
          const int64_t logical = ld_tile * kRows + tid;
          const int64_t off = int64_t(ld_kc) * 16;
          const bool valid = logical < p.n && off < p.pitch;
          const uint8_t* src = valid ? p.codes + physical_row(p, logical) * p.pitch + off : p.codes;
          ptx::cp_async16(b + tid * 16, src, valid);
        }
      } else {
#pragma unroll
        for (int j = 0; j < (kRows * kKBytes / 16) / kThreads; ++j) {
          const int id = tid + j * kThreads;
          const int r = id >> 3, c = id & 7;
          const int64_t logical = ld_tile * kRows + r;
          const int64_t off = int64_t(ld_kc) * kKBytes + c * 16;
          const bool valid = logical < p.n && off < p.pitch;
          const uint8_t* src = valid ? p.codes + physical_row(p, logical) * p.pitch + off : p.codes;
          ptx::cp_async16(b + swz(r, c), src, valid);
        }
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

  Acc acc[C::kMI][C::kNI][4];
#pragma unroll
  for (int mi = 0; mi < C::kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < C::kNI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = Acc(0);

  int64_t tile = tile0;
  int kc = 0, buf = 0;
  for (int64_t s = 0; s < total; ++s) {
    ptx::cp_async_wait<kStages - 2>();
    __syncthreads();
    issue_stage();

    const uint8_t* a = s_a + buf * C::kAStage;
    const uint8_t* b = s_b + buf * C::kBStage;
#pragma unroll
    for (int ks = 0; ks < kKBytes / 32; ++ks) {
      uint32_t af[C::kMI][4];
#pragma unroll
      for (int mi = 0; mi < C::kMI; ++mi) {
        const int r = warp_m * C::kWarpM + mi * 16 + (lane & 15);
        ptx::ldmatrix_x4(af[mi], a + swz(r, ks * 2 + (lane >> 4)));
      }
      uint32_t bf[C::kNI][2];
      if constexpr (C::kBits) {
#pragma unroll
        for (int ni = 0; ni < C::kNI; ++ni) {
          const int r = warp_n * 32 + ni * 8 + g;
          const uint32_t word = reinterpret_cast<const uint32_t*>(b + r * 16)[ks];
          bf[ni][0] = expand_nibble((word >> (4 * t)) & 0xFu);
          bf[ni][1] = expand_nibble((word >> (16 + 4 * t)) & 0xFu);
        }
      } else {
#pragma unroll
        for (int pr = 0; pr < C::kNI / 2; ++pr) {
          const int r = warp_n * 32 + pr * 16 + ((lane >> 4) << 3) + (lane & 7);
          uint32_t m[4];
          ptx::ldmatrix_x4(m, b + swz(r, ks * 2 + ((lane >> 3) & 1)));
          bf[2 * pr][0] = m[0];
          bf[2 * pr][1] = m[1];
          bf[2 * pr + 1][0] = m[2];
          bf[2 * pr + 1][1] = m[3];
        }
      }
#pragma unroll
      for (int mi = 0; mi < C::kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < C::kNI; ++ni) {
          if constexpr (S == Storage::BF16)
            ptx::mma_bf16(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
          else
            ptx::mma_s8(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
        }
    }

    if (kc == kch - 1) {
#pragma unroll
      for (int ni = 0; ni < C::kNI; ++ni)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t logical = tile * kRows + warp_n * 32 + ni * 8 + 2 * t + j;
          const bool valid = logical < p.n;
          const int64_t prow = valid ? physical_row(p, logical) : 0;
          const bool live = valid && !is_deleted(p.deleted, prow);
          float xs = 1.0f;
          if constexpr (S != Storage::BF16) xs = live ? p.xscale[prow] : 0.0f;
#pragma unroll
          for (int mi = 0; mi < C::kMI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const Acc v = acc[mi][ni][2 * h + j];
              acc[mi][ni][2 * h + j] = Acc(0);
              if (!live || !qok[mi][h]) continue;
              float score;
              if constexpr (S == Storage::BF16)
                score = v;
              else
                score = __fmul_rn(__fmul_rn(__int2float_rn(v), qs[mi][h]), xs);
              if (score >= thr[mi][h])
                append(p, q0 + warp_m * C::kWarpM + mi * 16 + g + 8 * h, score, prow);
            }
        }
    }
    if (++kc == kch) {
      kc = 0;
      ++tile;
    }
    if (++buf == kStages) buf = 0;
  }
}

}  // namespace mma
}  // namespace cuda
}  // namespace cliprt
