// Scalar reference kernels: the specification the SIMD variants are tested against, and the
// portable path on CPUs without them (written so compilers can vectorise the row loop).
#include <cstring>

#include "cliprt/codec.h"
#include "cliprt/scan.h"

namespace cliprt {
namespace {

constexpr int R = kBlockRows;

void score_f32(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  const Layout& L = Q.layout;
  for (int64_t b = 0; b < s.nblocks; ++b) {
    const float* blk = reinterpret_cast<const float*>(s.codes + size_t(b) * L.block_bytes());
    for (int i = 0; i < nq; ++i) {
      const float* q = reinterpret_cast<const float*>(Q.row(q0 + i));
      float acc[R] = {0};
      for (int g = 0; g < L.ngroups; ++g)
        for (int r = 0; r < R; ++r) acc[r] += q[g] * blk[g * R + r];
      std::memcpy(out + i * ld + b * R, acc, sizeof acc);
    }
  }
}

void score_f16(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  const Layout& L = Q.layout;
  std::vector<float> wide(static_cast<size_t>(L.ngroups) * R);
  for (int64_t b = 0; b < s.nblocks; ++b) {
    const uint16_t* blk = reinterpret_cast<const uint16_t*>(s.codes + size_t(b) * L.block_bytes());
    for (size_t j = 0; j < wide.size(); ++j) wide[j] = f16_to_f32(blk[j]);
    for (int i = 0; i < nq; ++i) {
      const float* q = reinterpret_cast<const float*>(Q.row(q0 + i));
      float acc[R] = {0};
      for (int g = 0; g < L.ngroups; ++g)
        for (int r = 0; r < R; ++r) acc[r] += q[g] * wide[size_t(g) * R + r];
      std::memcpy(out + i * ld + b * R, acc, sizeof acc);
    }
  }
}

void score_bf16(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  const Layout& L = Q.layout;
  for (int64_t b = 0; b < s.nblocks; ++b) {
    const uint16_t* blk = reinterpret_cast<const uint16_t*>(s.codes + size_t(b) * L.block_bytes());
    for (int i = 0; i < nq; ++i) {
      const uint16_t* q = reinterpret_cast<const uint16_t*>(Q.row(q0 + i));
      float acc[R] = {0};
      for (int g = 0; g < L.ngroups; ++g) {
        float q0v = bf16_to_f32(q[2 * g]), q1v = bf16_to_f32(q[2 * g + 1]);
        for (int r = 0; r < R; ++r)
          acc[r] += q0v * bf16_to_f32(blk[(g * R + r) * 2]) + q1v * bf16_to_f32(blk[(g * R + r) * 2 + 1]);
      }
      std::memcpy(out + i * ld + b * R, acc, sizeof acc);
    }
  }
}

void score_i8(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  const Layout& L = Q.layout;
  for (int64_t b = 0; b < s.nblocks; ++b) {
    const int8_t* blk = reinterpret_cast<const int8_t*>(s.codes + size_t(b) * L.block_bytes());
    const float* sc = s.scale + b * R;
    for (int i = 0; i < nq; ++i) {
      const int8_t* q = reinterpret_cast<const int8_t*>(Q.row(q0 + i));
      int32_t acc[R] = {0};
      for (int g = 0; g < L.ngroups; ++g)
        for (int r = 0; r < R; ++r)
          for (int j = 0; j < 4; ++j) acc[r] += int32_t(q[4 * g + j]) * int32_t(blk[(g * R + r) * 4 + j]);
      const float qs = Q.qscale[size_t(q0 + i)];
      for (int r = 0; r < R; ++r) out[i * ld + b * R + r] = float(acc[r]) * qs * sc[r];
    }
  }
}

void score_b1(const PreparedQueries& Q, int q0, int nq, const BlockSpan& s, float* out, int64_t ld) {
  const Layout& L = Q.layout;
  for (int64_t b = 0; b < s.nblocks; ++b) {
    const uint64_t* blk = reinterpret_cast<const uint64_t*>(s.codes + size_t(b) * L.block_bytes());
    const float* sc = s.scale + b * R;
    for (int i = 0; i < nq; ++i) {
      const uint64_t* q = reinterpret_cast<const uint64_t*>(Q.row(q0 + i));
      int32_t ham[R] = {0};
      for (int g = 0; g < L.ngroups; ++g)
        for (int r = 0; r < R; ++r) ham[r] += __builtin_popcountll(q[g] ^ blk[g * R + r]);
      const float qs = Q.qscale[size_t(q0 + i)];
      for (int r = 0; r < R; ++r) out[i * ld + b * R + r] = float(L.dim - 2 * ham[r]) * qs * sc[r];
    }
  }
}

int64_t select_ge(const float* scores, int64_t n, float thr, uint32_t* idx) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    idx[m] = uint32_t(i);
    m += scores[i] >= thr;
  }
  return m;
}

double dot_f64(const float* a, const float* b, int n) {
  double acc[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += double(a[i + j]) * double(b[i + j]);
  for (; i < n; ++i) acc[0] += double(a[i]) * double(b[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

const ScanKernels& scalar_kernels() {
  static const ScanKernels k{"scalar", {score_f32, score_f16, score_bf16, score_i8, score_b1}, select_ge,
                             dot_f64};
  return k;
}

}  // namespace cliprt
