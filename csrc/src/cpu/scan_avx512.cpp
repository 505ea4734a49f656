// AVX-512 kernels (F, BW, VL, DQ, VNNI, BF16, VPOPCNTDQ).
// Register tiling: QT queries x NB blocks of 16 rows are accumulated in zmm registers over
// all groups; the query value of a group is broadcast, the database block group is one
// (or two) loads shared by all QT queries, so the database is read once per query tile
// while the tile's queries stay in L1.
//   f32/f16: vfmadd231ps, 1 dim per step     bf16: vdpbf16ps, 2 dims per step
//   i8:      vpdpbusd (u8 x s8), 4 dims per step; the signed database byte is flipped to
//            unsigned (x + 128) with one xor and 128 * sum(query) is subtracted at the end
//   b1:      vpxorq + vpopcntq, 64 dims per step, two zmm (8 rows each) per block
#include <immintrin.h>

#include <cstring>

#include "cliprt/scan.h"

namespace cliprt {
namespace {

constexpr int R = kBlockRows;

// acc += u8 x s8 dot products (vpdpbusd) with the accumulator tied in place: GCC's intrinsic
// loses the tie inside unrolled tiles and spills every accumulator on every step.
inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
  return acc;
}

// Runs Micro<N, NB> over all blocks of a span for one tile of N queries. Small tiles take
// four blocks per step so enough independent accumulator chains hide the FMA/dot latency.
template <template <int, int> class Micro, int N>
void tile(const PreparedQueries& Q, int q0, const BlockSpan& s, float* out, int64_t ld) {
  int64_t b = 0;
  if constexpr (N <= 2) {
    for (; b + 4 <= s.nblocks; b += 4) Micro<N, 4>::run(Q, q0, s, b, out + b * R, ld);
  }
  for (; b + 2 <= s.nblocks; b += 2) Micro<N, 2>::run(Q, q0, s, b, out + b * R, ld);
  if (b < s.nblocks) Micro<N, 1>::run(Q, q0, s, b, out + b * R, ld);
}

// Splits the queries into tiles of at most Micro::kMaxQ.
template <template <int, int> class Micro>
void drive(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  constexpr int QT = Micro<1, 1>::kMaxQ;
  for (int i = 0; i < nq; i += QT) {
    const int n = nq - i < QT ? nq - i : QT;
    float* o = out + int64_t(i) * ld;
    switch (n) {
      case 1: tile<Micro, 1>(Q, q0 + i, s, o, ld); break;
      case 2: tile<Micro, 2>(Q, q0 + i, s, o, ld); break;
      case 3: tile<Micro, 3>(Q, q0 + i, s, o, ld); break;
      case 4: tile<Micro, 4>(Q, q0 + i, s, o, ld); break;
      case 5: tile<Micro, 5>(Q, q0 + i, s, o, ld); break;
      case 6: tile<Micro, 6>(Q, q0 + i, s, o, ld); break;
      case 7: tile<Micro, 7>(Q, q0 + i, s, o, ld); break;
      case 8: tile<Micro, 8>(Q, q0 + i, s, o, ld); break;
      case 9: tile<Micro, 9>(Q, q0 + i, s, o, ld); break;
      case 10: tile<Micro, 10>(Q, q0 + i, s, o, ld); break;
      case 11: tile<Micro, 11>(Q, q0 + i, s, o, ld); break;
      case 12: tile<Micro, 12>(Q, q0 + i, s, o, ld); break;
      default: break;
    }
  }
}

template <int QT, int NB>
struct F32Micro {
  static constexpr int kMaxQ = 12;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    if constexpr (QT > 0) {
      const int G = Q.layout.ngroups;
      const size_t bstride = Q.layout.block_bytes() / 4;
      const float* x = reinterpret_cast<const float*>(s.codes) + size_t(b) * bstride;
      const float* q[QT];
      for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const float*>(Q.row(q0 + i));
      __m512 acc[QT][NB];
      for (int i = 0; i < QT; ++i)
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
      for (int g = 0; g < G; ++g) {
        __m512 xv[NB];
        for (int j = 0; j < NB; ++j) xv[j] = _mm512_loadu_ps(x + j * bstride + size_t(g) * R);
        for (int i = 0; i < QT; ++i) {
          const __m512 qv = _mm512_set1_ps(q[i][g]);
          for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(qv, xv[j], acc[i][j]);
        }
      }
      for (int i = 0; i < QT; ++i)
        for (int j = 0; j < NB; ++j) _mm512_storeu_ps(out + i * ld + j * R, acc[i][j]);
    }
  }
};

template <int QT, int NB>
struct F16Micro {
  static constexpr int kMaxQ = 12;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const size_t bstride = Q.layout.block_bytes() / 2;
    const uint16_t* x = reinterpret_cast<const uint16_t*>(s.codes) + size_t(b) * bstride;
    const float* q[QT];
    for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const float*>(Q.row(q0 + i));
    __m512 acc[QT][NB];
    for (int i = 0; i < QT; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int g = 0; g < G; ++g) {
      __m512 xv[NB];
      for (int j = 0; j < NB; ++j)
        xv[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j * bstride + size_t(g) * R)));
      for (int i = 0; i < QT; ++i) {
        const __m512 qv = _mm512_set1_ps(q[i][g]);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(qv, xv[j], acc[i][j]);
      }
    }
    for (int i = 0; i < QT; ++i)
      for (int j = 0; j < NB; ++j) _mm512_storeu_ps(out + i * ld + j * R, acc[i][j]);
  }
};

template <int QT, int NB>
struct BF16Micro {
  static constexpr int kMaxQ = 12;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const size_t bstride = Q.layout.block_bytes() / 4;
    const int32_t* x = reinterpret_cast<const int32_t*>(s.codes) + size_t(b) * bstride;
    const int32_t* q[QT];
    for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const int32_t*>(Q.row(q0 + i));
    __m512 acc[QT][NB];
    for (int i = 0; i < QT; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int g = 0; g < G; ++g) {
      __m512i xv[NB];
      for (int j = 0; j < NB; ++j) xv[j] = _mm512_loadu_si512(x + j * bstride + size_t(g) * R);
      for (int i = 0; i < QT; ++i) {
        const __m512i qv = _mm512_set1_epi32(q[i][g]);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)qv, (__m512bh)xv[j]);
      }
    }
    for (int i = 0; i < QT; ++i)
      for (int j = 0; j < NB; ++j) _mm512_storeu_ps(out + i * ld + j * R, acc[i][j]);
  }
};

template <int QT, int NB>
struct I8Micro {
  static constexpr int kMaxQ = 12;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const size_t bstride = Q.layout.block_bytes() / 4;
    const int32_t* x = reinterpret_cast<const int32_t*>(s.codes) + size_t(b) * bstride;
    const int32_t* q[QT];
    for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const int32_t*>(Q.row(q0 + i));
    const __m512i flip = _mm512_set1_epi8(int8_t(-128));
    __m512i acc[QT][NB];
    for (int i = 0; i < QT; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
    for (int g = 0; g < G; ++g) {
      __m512i xv[NB];
      for (int j = 0; j < NB; ++j)
        xv[j] = _mm512_xor_si512(_mm512_loadu_si512(x + j * bstride + size_t(g) * R), flip);
      for (int i = 0; i < QT; ++i) {
        const __m512i qv = _mm512_set1_epi32(q[i][g]);
        for (int j = 0; j < NB; ++j) acc[i][j] = dpbusd(acc[i][j], xv[j], qv);
      }
    }
    for (int i = 0; i < QT; ++i) {
      const __m512i corr = _mm512_set1_epi32(128 * Q.qsum[size_t(q0 + i)]);
      const __m512 qs = _mm512_set1_ps(Q.qscale[size_t(q0 + i)]);
      for (int j = 0; j < NB; ++j) {
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][j], corr));
        const __m512 sc = _mm512_loadu_ps(s.scale + (b + j) * R);
        _mm512_storeu_ps(out + i * ld + j * R, _mm512_mul_ps(_mm512_mul_ps(dot, qs), sc));
      }
    }
  }
};

template <int QT, int NB>
struct B1Micro {
  static constexpr int kMaxQ = 6;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    if constexpr (QT <= kMaxQ) {
      const int G = Q.layout.ngroups;
      const size_t bstride = Q.layout.block_bytes() / 8;
      const uint64_t* x = reinterpret_cast<const uint64_t*>(s.codes) + size_t(b) * bstride;
      const uint64_t* q[QT];
      for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const uint64_t*>(Q.row(q0 + i));
      __m512i acc[QT][2 * NB];
      for (int i = 0; i < QT; ++i)
        for (int j = 0; j < 2 * NB; ++j) acc[i][j] = _mm512_setzero_si512();
      for (int g = 0; g < G; ++g) {
        __m512i xv[2 * NB];
        for (int j = 0; j < 2 * NB; ++j)
          xv[j] = _mm512_loadu_si512(x + (j / 2) * bstride + size_t(g) * R + (j % 2) * 8);
        for (int i = 0; i < QT; ++i) {
          const __m512i qv = _mm512_set1_epi64(int64_t(q[i][g]));
          for (int j = 0; j < 2 * NB; ++j)
            acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(xv[j], qv)));
        }
      }
      const __m512i dim = _mm512_set1_epi64(Q.layout.dim);
      for (int i = 0; i < QT; ++i) {
        const __m256 qs = _mm256_set1_ps(Q.qscale[size_t(q0 + i)]);
        for (int j = 0; j < 2 * NB; ++j) {
          const __m512i sd = _mm512_sub_epi64(dim, _mm512_add_epi64(acc[i][j], acc[i][j]));
          const __m256 v = _mm512_cvtepi64_ps(sd);
          const __m256 sc = _mm256_loadu_ps(s.scale + b * R + j * 8);
          _mm256_storeu_ps(out + i * ld + j * 8, _mm256_mul_ps(_mm256_mul_ps(v, qs), sc));
        }
      }
    }
  }
};

void score_f32(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  drive<F32Micro>(Q, q0, nq, s, out, ld);
}
void score_f16(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  drive<F16Micro>(Q, q0, nq, s, out, ld);
}
void score_bf16(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  drive<BF16Micro>(Q, q0, nq, s, out, ld);
}
void score_i8(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  drive<I8Micro>(Q, q0, nq, s, out, ld);
}
void score_b1(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  drive<B1Micro>(Q, q0, nq, s, out, ld);
}

int64_t select_ge(const float* s, int64_t n, float thr, uint32_t* idx) {
  const __m512 t = _mm512_set1_ps(thr);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t m = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i), t, _CMP_GE_OQ);
    if (k) {
      // Register-form compress plus a full store: the memory form of vpcompressd is
      // microcoded and slow on some CPUs (Zen 4). idx has 16 slots of slack for this.
      const __m512i v = _mm512_maskz_compress_epi32(k, _mm512_add_epi32(iota, _mm512_set1_epi32(int(i))));
      _mm512_storeu_si512(idx + m, v);
      m += __builtin_popcount(k);
    }
  }
  for (; i < n; ++i) {
    idx[m] = uint32_t(i);
    m += s[i] >= thr;
  }
  return m;
}

double dot_f64(const float* a, const float* b, int n) {
  __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
  int i = 0;
  for (; i + 32 <= n; i += 32)
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_loadu_ps(a + i + 8 * j)),
                               _mm512_cvtps_pd(_mm256_loadu_ps(b + i + 8 * j)), acc[j]);
  double s = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3])));
  for (; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

}  // namespace

const ScanKernels& avx512_kernels() {
  static const ScanKernels k{"avx512", {score_f32, score_f16, score_bf16, score_i8, score_b1}, select_ge,
                             dot_f64};
  return k;
}

}  // namespace cliprt
