#include "cliprt/codec.h"

#include <cmath>
#include <cstring>

#include "cliprt/errors.h"
#include "cliprt/scan.h"

namespace cliprt {

Layout make_layout(Storage storage, int dim) {
  if (dim <= 0 || dim > 65536) throw ValueError("dim must be in [1, 65536], got " + std::to_string(dim));
  Layout L;
  L.storage = storage;
  L.dim = dim;
  switch (storage) {
    case Storage::F32: L.group_bytes = 4; L.dims_per_group = 1; break;
    case Storage::F16: L.group_bytes = 2; L.dims_per_group = 1; break;
    case Storage::BF16: L.group_bytes = 4; L.dims_per_group = 2; break;
    case Storage::I8: L.group_bytes = 4; L.dims_per_group = 4; break;
    case Storage::B1: L.group_bytes = 8; L.dims_per_group = 64; break;
  }
  L.ngroups = (dim + L.dims_per_group - 1) / L.dims_per_group;
  return L;
}

const char* storage_name(Storage s) {
  static const char* names[] = {"f32", "f16", "bf16", "i8", "b1"};
  return names[static_cast<int>(s)];
}
const char* metric_name(Metric m) { return m == Metric::Cosine ? "cosine" : "ip"; }

Storage parse_storage(const std::string& name) {
  for (int i = 0; i < kNumStorages; ++i)
    if (name == storage_name(static_cast<Storage>(i))) return static_cast<Storage>(i);
  throw ValueError("unknown storage '" + name + "': expected one of f32, f16, bf16, i8, b1");
}
Metric parse_metric(const std::string& name) {
  if (name == "cosine") return Metric::Cosine;
  if (name == "ip") return Metric::IP;
  throw ValueError("unknown metric '" + name + "': expected 'cosine' or 'ip'");
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to infinity
  if (ax < 0x38800000u) {                                   // half subnormal or zero
    float af;
    std::memcpy(&af, &ax, 4);
    return uint16_t(sign | uint32_t(std::nearbyint(af * 16777216.0f)));  // exact scaling
  }
  uint32_t odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + odd;  // rebias exponent 127 -> 15 and round half to even
  return uint16_t(sign | (ax >> 13));
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0) {
    float v = std::ldexp(float(m), -24);
    return sign ? -v : v;
  } else if (e == 31) {
    bits = sign | 0x7f800000u | (m << 13);
  } else {
    bits = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float storage_max_abs(Storage s) {
  switch (s) {
    case Storage::F16: return 65504.0f;
    case Storage::BF16: return 3.3895313892515355e38f;  // largest finite bf16
    default: return 3.4028234663852886e38f;
  }
}

void encode_row(const Layout& L, const float* x, uint8_t* code, float* scale) {
  const int D = L.dim;
  std::memset(code, 0, L.row_bytes());
  *scale = 1.0f;
  switch (L.storage) {
    case Storage::F32:
      std::memcpy(code, x, size_t(D) * 4);
      break;
    case Storage::F16: {
      auto* c = reinterpret_cast<uint16_t*>(code);
      for (int d = 0; d < D; ++d) c[d] = f32_to_f16(x[d]);
      break;
    }
    case Storage::BF16: {
      auto* c = reinterpret_cast<uint16_t*>(code);
      for (int d = 0; d < D; ++d) c[d] = f32_to_bf16(x[d]);
      break;
    }
    case Storage::I8: {
      float amax = 0.0f;
      for (int d = 0; d < D; ++d) {
        const float a = std::fabs(x[d]);
        amax = a > amax ? a : amax;
      }
      auto* c = reinterpret_cast<int8_t*>(code);
      if (amax > 0.0f) {
        const float inv = 127.0f / amax;
        if (std::isfinite(inv)) {
          for (int d = 0; d < D; ++d) {
            const float v = std::nearbyint(x[d] * inv);  // |v| <= 127 up to rounding of inv
            c[d] = int8_t(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
          }
        } else {  // tiny vectors: 127 / max|x| overflows float32, scale in float64
          const double inv64 = 127.0 / double(amax);
          for (int d = 0; d < D; ++d)
            c[d] = int8_t(std::fmin(127.0, std::fmax(-127.0, std::nearbyint(double(x[d]) * inv64))));
        }
        *scale = amax / 127.0f;
      } else {
        *scale = 0.0f;
      }
      break;
    }
    case Storage::B1: {
      auto* w = reinterpret_cast<uint64_t*>(code);
      double sum_sq = 0.0;
      for (int d = 0; d < D; ++d) {
        sum_sq += double(x[d]) * double(x[d]);
        if (x[d] > 0.0f) w[d >> 6] |= uint64_t(1) << (d & 63);
      }
      *scale = float(std::sqrt(sum_sq / D));
      break;
    }
  }
}

void decode_row(const Layout& L, const uint8_t* code, float scale, float* out) {
  const int D = L.dim;
  switch (L.storage) {
    case Storage::F32:
      std::memcpy(out, code, size_t(D) * 4);
      break;
    case Storage::F16: {
      auto* c = reinterpret_cast<const uint16_t*>(code);
      for (int d = 0; d < D; ++d) out[d] = f16_to_f32(c[d]);
      break;
    }
    case Storage::BF16: {
      auto* c = reinterpret_cast<const uint16_t*>(code);
      for (int d = 0; d < D; ++d) out[d] = bf16_to_f32(c[d]);
      break;
    }
    case Storage::I8: {
      auto* c = reinterpret_cast<const int8_t*>(code);
      for (int d = 0; d < D; ++d) out[d] = float(c[d]) * scale;
      break;
    }
    case Storage::B1: {
      auto* w = reinterpret_cast<const uint64_t*>(code);
      for (int d = 0; d < D; ++d) out[d] = ((w[d >> 6] >> (d & 63)) & 1) ? scale : -scale;
      break;
    }
  }
}

void normalise_row(float* x, int dim, double sum_sq) {
  const double inv64 = 1.0 / std::sqrt(sum_sq);
  const float inv = float(inv64);
  if (std::isfinite(inv)) {
    for (int d = 0; d < dim; ++d) x[d] *= inv;
  } else {
    for (int d = 0; d < dim; ++d) x[d] = float(double(x[d]) * inv64);
  }
}

void scatter_row(const Layout& L, const uint8_t* code, uint8_t* blocks, int64_t row) {
  const size_t G = size_t(L.group_bytes);
  uint8_t* base = blocks + size_t(row / kBlockRows) * L.block_bytes() + size_t(row % kBlockRows) * G;
  for (int g = 0; g < L.ngroups; ++g) std::memcpy(base + size_t(g) * kBlockRows * G, code + g * G, G);
}

void gather_row(const Layout& L, const uint8_t* blocks, int64_t row, uint8_t* code) {
  const size_t G = size_t(L.group_bytes);
  const uint8_t* base =
      blocks + size_t(row / kBlockRows) * L.block_bytes() + size_t(row % kBlockRows) * G;
  for (int g = 0; g < L.ngroups; ++g) std::memcpy(code + g * G, base + size_t(g) * kBlockRows * G, G);
}

void prepare_queries(const Layout& L, const float* x, int nq, PreparedQueries* out) {
  out->layout = L;
  out->nq = nq;
  const size_t D = size_t(L.dim);
  // Row stride rounded up to 64 bytes so every query row starts cache-line aligned.
  size_t bytes = (L.storage == Storage::F32 || L.storage == Storage::F16) ? D * 4 : L.row_bytes();
  out->stride = (bytes + 63) / 64 * 64;
  out->storage_.assign((out->stride * size_t(nq) + 7) / 8 + 8, 0);
  out->qscale.assign(size_t(nq), 1.0f);
  out->qsum.assign(size_t(nq), 0);
  for (int q = 0; q < nq; ++q) {
    const float* xq = x + size_t(q) * D;
    uint8_t* dst = out->mutable_row(q);
    switch (L.storage) {
      case Storage::F32:
      case Storage::F16:
        std::memcpy(dst, xq, D * 4);
        break;
      case Storage::BF16:
      case Storage::I8:
      case Storage::B1: {
        float s = 1.0f;
        encode_row(L, xq, dst, &s);
        out->qscale[size_t(q)] = s;
        if (L.storage == Storage::I8) {
          int32_t sum = 0;
          for (size_t d = 0; d < D; ++d) sum += reinterpret_cast<const int8_t*>(dst)[d];
          out->qsum[size_t(q)] = sum;
        }
        break;
      }
    }
  }
}

}  // namespace cliprt
