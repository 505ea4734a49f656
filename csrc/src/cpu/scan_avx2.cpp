// AVX2 + FMA + F16C kernels for x86 CPUs without AVX-512. Same register tiling as the
// AVX-512 file with one block (two ymm of 8 rows) per step:
//   f32/f16: vfmadd231ps        bf16: widened to f32 by shifts, then FMA
//   i8:      bytes sign-extended to 16 bits, vpmaddwd against the 4 query bytes of the
//            group (each row then owns two int32 lanes, summed at the end)
//   b1:      scalar popcnt per 64-bit word
#include <immintrin.h>

#include <cstring>

#include "cliprt/scan.h"

namespace cliprt {
namespace {

constexpr int R = kBlockRows;

template <template <int> class Micro>
void drive(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  constexpr int QT = Micro<1>::kMaxQ;
  for (int i = 0; i < nq; i += QT) {
    const int n = nq - i < QT ? nq - i : QT;
    for (int64_t b = 0; b < s.nblocks; ++b) {
      float* o = out + int64_t(i) * ld + b * R;
      switch (n) {
        case 1: Micro<1>::run(Q, q0 + i, s, b, o, ld); break;
        case 2: Micro<2>::run(Q, q0 + i, s, b, o, ld); break;
        case 3: Micro<3>::run(Q, q0 + i, s, b, o, ld); break;
        case 4: Micro<4>::run(Q, q0 + i, s, b, o, ld); break;
        case 5: Micro<5>::run(Q, q0 + i, s, b, o, ld); break;
        case 6: Micro<6>::run(Q, q0 + i, s, b, o, ld); break;
        default: break;
      }
    }
  }
}

template <int QT>
struct F32Micro {
  static constexpr int kMaxQ = 6;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const float* x = reinterpret_cast<const float*>(s.codes + size_t(b) * Q.layout.block_bytes());
    const float* q[QT];
    for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const float*>(Q.row(q0 + i));
    __m256 acc[QT][2];
    for (int i = 0; i < QT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < G; ++g) {
      const __m256 x0 = _mm256_loadu_ps(x + g * R), x1 = _mm256_loadu_ps(x + g * R + 8);
      for (int i = 0; i < QT; ++i) {
        const __m256 qv = _mm256_broadcast_ss(q[i] + g);
        acc[i][0] = _mm256_fmadd_ps(qv, x0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(qv, x1, acc[i][1]);
      }
    }
    for (int i = 0; i < QT; ++i) {
      _mm256_storeu_ps(out + i * ld, acc[i][0]);
      _mm256_storeu_ps(out + i * ld + 8, acc[i][1]);
    }
  }
};

template <int QT>
struct F16Micro {
  static constexpr int kMaxQ = 6;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const uint16_t* x = reinterpret_cast<const uint16_t*>(s.codes + size_t(b) * Q.layout.block_bytes());
    const float* q[QT];
    for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const float*>(Q.row(q0 + i));
    __m256 acc[QT][2];
    for (int i = 0; i < QT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < G; ++g) {
      const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + g * R)));
      const __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + g * R + 8)));
      for (int i = 0; i < QT; ++i) {
        const __m256 qv = _mm256_broadcast_ss(q[i] + g);
        acc[i][0] = _mm256_fmadd_ps(qv, x0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(qv, x1, acc[i][1]);
      }
    }
    for (int i = 0; i < QT; ++i) {
      _mm256_storeu_ps(out + i * ld, acc[i][0]);
      _mm256_storeu_ps(out + i * ld + 8, acc[i][1]);
    }
  }
};

template <int QT>
struct BF16Micro {
  static constexpr int kMaxQ = 3;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const uint32_t* x = reinterpret_cast<const uint32_t*>(s.codes + size_t(b) * Q.layout.block_bytes());
    const uint32_t* q[QT];
    for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const uint32_t*>(Q.row(q0 + i));
    const __m256i hi_mask = _mm256_set1_epi32(int(0xffff0000u));
    __m256 acc[QT][2];
    for (int i = 0; i < QT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < G; ++g) {
      __m256 lo[2], hi[2];
      for (int j = 0; j < 2; ++j) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + g * R + 8 * j));
        lo[j] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        hi[j] = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
      }
      for (int i = 0; i < QT; ++i) {
        uint32_t pair = q[i][g], lob = pair << 16, hib = pair & 0xffff0000u;
        float qlo, qhi;
        std::memcpy(&qlo, &lob, 4);
        std::memcpy(&qhi, &hib, 4);
        const __m256 ql = _mm256_set1_ps(qlo), qh = _mm256_set1_ps(qhi);
        for (int j = 0; j < 2; ++j) acc[i][j] = _mm256_fmadd_ps(qh, hi[j], _mm256_fmadd_ps(ql, lo[j], acc[i][j]));
      }
    }
    for (int i = 0; i < QT; ++i) {
      _mm256_storeu_ps(out + i * ld, acc[i][0]);
      _mm256_storeu_ps(out + i * ld + 8, acc[i][1]);
    }
  }
};

template <int QT>
struct I8Micro {
  static constexpr int kMaxQ = 2;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const int8_t* x = reinterpret_cast<const int8_t*>(s.codes + size_t(b) * Q.layout.block_bytes());
    const int8_t* q[QT];
    for (int i = 0; i < QT; ++i) q[i] = reinterpret_cast<const int8_t*>(Q.row(q0 + i));
    // acc[i][j]: rows 4j..4j+3, two int32 partial sums per row.
    __m256i acc[QT][4];
    for (int i = 0; i < QT; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_si256();
    for (int g = 0; g < G; ++g) {
      __m256i xw[4];
      for (int j = 0; j < 4; ++j)
        xw[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + size_t(g) * R * 4 + 16 * j)));
      for (int i = 0; i < QT; ++i) {
        int32_t q4;
        std::memcpy(&q4, q[i] + 4 * g, 4);
        const __m128i qb = _mm_cvtsi32_si128(q4);
        const __m256i qv = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(qb));
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(xw[j], qv));
      }
    }
    for (int i = 0; i < QT; ++i) {
      alignas(32) int32_t lanes[32];
      for (int j = 0; j < 4; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 8 * j), acc[i][j]);
      const float qs = Q.qscale[size_t(q0 + i)];
      for (int r = 0; r < R; ++r)
        out[i * ld + r] = float(lanes[2 * r] + lanes[2 * r + 1]) * qs * s.scale[b * R + r];
    }
  }
};

template <int QT>
struct B1Micro {
  static constexpr int kMaxQ = 4;
  static void run(const PreparedQueries& Q, int q0, const BlockSpan& s, int64_t b, float* out, int64_t ld) {
    const int G = Q.layout.ngroups;
    const uint64_t* x = reinterpret_cast<const uint64_t*>(s.codes + size_t(b) * Q.layout.block_bytes());
    for (int i = 0; i < QT; ++i) {
      const uint64_t* q = reinterpret_cast<const uint64_t*>(Q.row(q0 + i));
      int32_t ham[R] = {0};
      for (int g = 0; g < G; ++g)
        for (int r = 0; r < R; ++r) ham[r] += int32_t(_mm_popcnt_u64(q[g] ^ x[g * R + r]));
      const float qs = Q.qscale[size_t(q0 + i)];
      for (int r = 0; r < R; ++r) out[i * ld + r] = float(Q.layout.dim - 2 * ham[r]) * qs * s.scale[b * R + r];
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
  const __m256 t = _mm256_set1_ps(thr);
  int64_t m = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + i), t, _CMP_GE_OQ));
    while (mask) {
      idx[m++] = uint32_t(i + __builtin_ctz(unsigned(mask)));
      mask &= mask - 1;
    }
  }
  for (; i < n; ++i) {
    idx[m] = uint32_t(i);
    m += s[i] >= thr;
  }
  return m;
}

double dot_f64(const float* a, const float* b, int n) {
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i + 4 * j)),
                               _mm256_cvtps_pd(_mm_loadu_ps(b + i + 4 * j)), acc[j]);
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3])));
  double s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

}  // namespace

const ScanKernels& avx2_kernels() {
  static const ScanKernels k{"avx2", {score_f32, score_f16, score_bf16, score_i8, score_b1}, select_ge,
                             dot_f64};
  return k;
}

}  // namespace cliprt
