// Runs the device kernels under the CPU emulation of tests/cuda_emulation/cusim.h and checks them
// against the CPU core (codecs, scan scores, top-k order), so kernel logic is tested on
// machines without a GPU. Exit status 0 when every check passes. Build and run:
//   bash tests/cuda_emulation/run_emulation.sh
#include "cusim.h"

#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>

#include "cliprt/codec.h"
#include "cliprt/types.h"
#include "index/layout_kernels.cuh"
#include "index/prepare_kernel.cuh"
#include "search/rescore_kernel.cuh"
#include "search/scan_mma.cuh"
#include "search/scan_simt.cuh"
#include "topk/select_kernels.cuh"

using namespace cliprt;
using namespace cliprt::cuda;

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond, ...)                              \
  do {                                                \
    ++g_checks;                                       \
    if (!(cond)) {                                    \
      ++g_failures;                                   \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                       \
      std::printf("\n");                              \
      if (g_failures > 40) std::exit(1);              \
    }                                                 \
  } while (0)

std::mt19937_64 rng(12345);

std::vector<float> randn(int64_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Prepared rows on the CPU: normalised (cosine) or as given.
std::vector<float> cpu_prepare(const std::vector<float>& x, int64_t n, int dim, bool cosine) {
  std::vector<float> y(x);
  if (!cosine) return y;
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int d = 0; d < dim; ++d) ss += double(y[size_t(i * dim + d)]) * y[size_t(i * dim + d)];
    normalise_row(y.data() + i * dim, dim, ss);
  }
  return y;
}

struct Db {
  Layout L;
  int64_t n = 0, pitch = 0;
  std::vector<float> rows;     // prepared float rows
  std::vector<uint8_t> codes;  // device layout
  std::vector<float> scales;
  std::vector<int64_t> ids;
};

Db make_db(Storage s, int dim, int64_t n, bool cosine) {
  Db db;
  db.L = make_layout(s, dim);
  db.n = n;
  db.pitch = round_up(int64_t(db.L.row_bytes()), 16);
  db.rows = cpu_prepare(randn(n * dim), n, dim, cosine);
  db.codes.assign(size_t(n * db.pitch + 16), 0);
  db.scales.assign(size_t(n), 1.0f);
  for (int64_t i = 0; i < n; ++i) encode_row(db.L, db.rows.data() + i * dim, db.codes.data() + i * db.pitch, &db.scales[size_t(i)]);
  db.ids.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) db.ids[size_t(i)] = 1000 + ((i * 7919) % n);  // a permutation: ids not in row order
  return db;
}

// The score scan.h defines, in float64 for float storages and exactly for i8/b1; absdot
// for the tolerance.
double ref_score(const Db& db, const std::vector<uint8_t>& qcode, float qscale, const float* qf, int64_t row,
                 double* absdot) {
  const Layout& L = db.L;
  const int D = L.dim;
  const uint8_t* c = db.codes.data() + row * db.pitch;
  *absdot = 0;
  switch (L.storage) {
    case Storage::I8: {
      int32_t acc = 0;
      for (int d = 0; d < D; ++d) acc += int32_t(int8_t(qcode[size_t(d)])) * int32_t(int8_t(c[d]));
      return double(float(acc) * qscale * db.scales[size_t(row)]);
    }
    case Storage::B1: {
      int ham = 0;
      for (int w = 0; w < L.ngroups; ++w) {
        uint64_t a, b;
        std::memcpy(&a, qcode.data() + 8 * w, 8);
        std::memcpy(&b, c + 8 * w, 8);
        ham += __builtin_popcountll(a ^ b);
      }
      return double(float(D - 2 * ham) * qscale * db.scales[size_t(row)]);
    }
    default: {
      std::vector<float> x(static_cast<size_t>(D));
      decode_row(L, c, 1.0f, x.data());
      double s = 0;
      for (int d = 0; d < D; ++d) {
        const double q = L.storage == Storage::BF16 ? double(bf16_to_f32(f32_to_bf16(qf[d]))) : double(qf[d]);
        s += q * x[size_t(d)];
        *absdot += std::fabs(q * x[size_t(d)]);
      }
      return s;
    }
  }
}

struct Queries {
  int nq = 0;
  std::vector<float> f;         // prepared float rows, stride fs
  int64_t fs = 0;
  std::vector<float> f_bf16;    // bf16-rounded, stride fs
  std::vector<uint8_t> codes;   // pitch db.pitch
  std::vector<float> scales;
  std::vector<int8_t> b1x;      // pitch db.pitch * 8
};

// Runs the emulated prepare kernel on raw queries, and checks it against the CPU.
Queries prepare_queries(const Db& db, const std::vector<float>& raw, int nq, bool cosine) {
  const Layout& L = db.L;
  const int D = L.dim;
  Queries Q;
  Q.nq = nq;
  Q.fs = round_up(std::max<int64_t>(D, db.pitch / 2), 4);
  Q.f.assign(size_t(nq * Q.fs), -7.0f);
  Q.f_bf16.assign(size_t(nq * Q.fs), -7.0f);
  Q.codes.assign(size_t(nq * db.pitch), 0xAB);
  Q.scales.assign(size_t(nq), -7.0f);
  Q.b1x.assign(size_t(nq * db.pitch * 8), 0x5A);
  unsigned long long flags[2] = {~0ull, ~0ull};
  PrepareParams p;
  p.x = raw.data();
  p.n = nq;
  p.dim = D;
  p.storage = L.storage;
  p.cosine = cosine;
  p.first_bad = &flags[0];
  p.first_zero = &flags[1];
  p.f32 = Q.f.data();
  p.f32_stride = Q.fs;
  p.f32_bf16 = Q.f_bf16.data();
  p.codes = Q.codes.data();
  p.code_row_bytes = int(L.row_bytes());
  p.code_pitch = db.pitch;
  p.scales = Q.scales.data();
  if (L.storage == Storage::B1) {
    p.b1x = Q.b1x.data();
    p.b1x_pitch = db.pitch * 8;
  }
  cusim::launch(dim3(unsigned(nq)), dim3(kEncodeThreads), 0, [&] { prepare_detail::prepare_rows_kernel(p); });
  CHECK(flags[0] == ~0ull && flags[1] == ~0ull, "prepare flagged valid queries");
  const std::vector<float> want = cpu_prepare(raw, nq, D, cosine);
  std::vector<uint8_t> code(L.row_bytes());
  for (int q = 0; q < nq; ++q) {
    CHECK(std::memcmp(Q.f.data() + q * Q.fs, want.data() + q * D, size_t(D) * 4) == 0, "prepared floats q%d", q);
    for (int64_t d = D; d < Q.fs; ++d) CHECK(Q.f[size_t(q * Q.fs + d)] == 0.0f, "float padding q%d", q);
    float scale = 0;
    encode_row(L, want.data() + q * D, code.data(), &scale);
    CHECK(std::memcmp(Q.codes.data() + q * db.pitch, code.data(), code.size()) == 0, "query codes q%d storage %s", q,
          storage_name(L.storage));
    for (int64_t b = int64_t(code.size()); b < db.pitch; ++b) CHECK(Q.codes[size_t(q * db.pitch + b)] == 0, "code padding");
    CHECK(std::memcmp(&Q.scales[size_t(q)], &scale, 4) == 0, "query scale q%d", q);
    for (int d = 0; d < D; ++d)
      CHECK(Q.f_bf16[size_t(q * Q.fs + d)] == bf16_to_f32(f32_to_bf16(want[size_t(q * D + d)])), "bf16 query");
    if (L.storage == Storage::B1)
      for (int64_t j = 0; j < db.pitch * 8; ++j) {
        const int8_t want_x = j < D ? (want[size_t(q * D + j)] > 0.0f ? 1 : -1) : 0;
        CHECK(Q.b1x[size_t(q * db.pitch * 8 + j)] == want_x, "b1 expansion q%d dim %lld", q, (long long)j);
      }
  }
  return Q;
}

void test_prepare_errors() {
  const int D = 37, n = 5;
  for (bool cosine : {true, false}) {
    std::vector<float> x = randn(n * D);
    x[size_t(3 * D + 11)] = NAN;
    x[size_t(3 * D + 20)] = INFINITY;
    x[size_t(4 * D + 2)] = 1e30f;
    for (int d = 0; d < D; ++d) x[size_t(1 * D + d)] = 0.0f;  // zero row
    for (bool range : {false, true}) {
      unsigned long long flags[2] = {~0ull, ~0ull};
      std::vector<float> out(size_t(n * D), 1.0f);
      std::vector<uint8_t> codes(size_t(n * 80), 1);
      std::vector<float> scales(size_t(n), 1.0f);
      PrepareParams p;
      p.x = x.data();
      p.n = n;
      p.dim = D;
      p.storage = Storage::F16;
      p.cosine = cosine;
      p.check_range = range;
      p.max_abs = 65504.0f;
      p.first_bad = &flags[0];
      p.first_zero = &flags[1];
      p.row0 = 100;
      p.f32 = out.data();
      p.f32_stride = D;
      p.codes = codes.data();
      p.code_row_bytes = 2 * D;
      p.code_pitch = 80;
      p.scales = scales.data();
      cusim::launch(dim3(n), dim3(kEncodeThreads), 0, [&] { prepare_detail::prepare_rows_kernel(p); });
      CHECK(flags[0] == (100ull + 3) * D + 11, "first bad value: got %llu", flags[0]);
      if (cosine)
        CHECK(flags[1] == 101ull, "first zero row: got %llu", flags[1]);
      else
        CHECK(flags[1] == ~0ull, "ip never reports zero rows");
      for (int d = 0; d < D; ++d) CHECK(out[size_t(3 * D + d)] == 0.0f, "invalid row zeroed");
      for (int b = 0; b < 80; ++b) CHECK(codes[size_t(3 * 80 + b)] == 0, "invalid row codes zeroed");
      if (range) CHECK(out[size_t(4 * D)] == 0.0f, "out-of-range row zeroed");
    }
  }
}

// Candidate lists -> map row -> score, per query.
std::vector<std::map<int64_t, float>> read_lists(const std::vector<unsigned long long>& cand,
                                                 const std::vector<unsigned>& count, int64_t cap, int nq) {
  std::vector<std::map<int64_t, float>> out(static_cast<size_t>(nq));
  for (int q = 0; q < nq; ++q) {
    CHECK(count[size_t(q)] <= cap, "list overflow q%d (%u > %lld)", q, count[size_t(q)], (long long)cap);
    for (unsigned i = 0; i < std::min<unsigned>(count[size_t(q)], unsigned(cap)); ++i) {
      const unsigned long long e = cand[size_t(q * cap + i)];
      const int64_t row = candidate_row(e);
      CHECK(!out[size_t(q)].count(row), "row %lld listed twice for q%d", (long long)row, q);
      out[size_t(q)][row] = key_score(candidate_key(e));
    }
  }
  return out;
}

template <Storage S, int T, bool Mma>
void run_scan(const ScanParams& p, int64_t tiles_per_cta) {
  const int rows_per_tile = Mma ? mma::kRows : simt::kRows;
  const int64_t ntiles = (p.n + rows_per_tile - 1) / rows_per_tile;
  const dim3 grid(unsigned((p.nq + T - 1) / T), unsigned((ntiles + tiles_per_cta - 1) / tiles_per_cta));
  if constexpr (Mma)
    cusim::launch(grid, dim3(mma::kThreads), mma::Cfg<S, T>::kSmem, [&] { mma::scan_kernel<S, T>(p, tiles_per_cta); });
  else
    cusim::launch(grid, dim3(simt::kThreads), simt::smem_bytes<S, T>(), [&] { simt::scan_kernel<S, T>(p, tiles_per_cta); });
}

// One scan configuration against the reference: every live scanned row with score >=
// threshold must be listed with its score (exactly for i8/b1), and nothing else.
template <Storage S, int T, bool Mma>
void check_scan(int dim, int64_t n, int nq, bool cosine, bool use_deleted, bool use_rows, int64_t stride,
                bool use_thresh) {
  const std::string what = std::string(Mma ? "mma " : "simt ") + storage_name(S) + " tile " + std::to_string(T) +
                           " dim " + std::to_string(dim) + " n " + std::to_string(n) + " nq " + std::to_string(nq);
  Db db = make_db(S, dim, n, cosine);
  const Queries Q = prepare_queries(db, randn(int64_t(nq) * dim), nq, cosine);
  std::vector<uint32_t> deleted(size_t(n / 32 + 2), 0);
  if (use_deleted)
    for (int64_t r = 0; r < n; r += 7) deleted[size_t(r >> 5)] |= 1u << (r & 31);
  std::vector<uint32_t> rows;
  if (use_rows)
    for (int64_t r = n - 1; r >= 0; r -= 2) rows.push_back(uint32_t(r));  // descending, every other row
  const int64_t n_list = use_rows ? int64_t(rows.size()) : n;
  const int64_t n_logical = (n_list + stride - 1) / stride;

  // Reference scores of the scanned rows.
  std::vector<std::vector<std::pair<int64_t, double>>> ref(static_cast<size_t>(nq));
  std::vector<double> tol(static_cast<size_t>(nq), 0.0);
  for (int q = 0; q < nq; ++q) {
    std::vector<uint8_t> qcode(Q.codes.begin() + q * db.pitch, Q.codes.begin() + (q + 1) * db.pitch);
    double maxabs = 0;
    for (int64_t i = 0; i < n_logical; ++i) {
      const int64_t row = use_rows ? int64_t(rows[size_t(i * stride)]) : i * stride;
      double absdot = 0;
      const double s = ref_score(db, qcode, Q.scales[size_t(q)], Q.f.data() + q * Q.fs, row, &absdot);
      maxabs = std::max(maxabs, absdot);
      if (use_deleted && ((deleted[size_t(row >> 5)] >> (row & 31)) & 1u)) continue;
      ref[size_t(q)].push_back({row, s});
    }
    tol[size_t(q)] = 2e-5 * maxabs + 1e-30;
  }
  std::vector<float> thresh(static_cast<size_t>(nq), -INFINITY);
  if (use_thresh)
    for (int q = 0; q < nq; ++q) {
      std::vector<double> s;
      for (auto& e : ref[size_t(q)]) s.push_back(e.second);
      if (s.empty()) continue;
      std::sort(s.begin(), s.end());
      thresh[size_t(q)] = float(s[s.size() * 3 / 4]);
    }

  ScanParams p;
  p.codes = db.codes.data();
  p.pitch = db.pitch;
  p.xscale = db.scales.data();
  p.deleted = use_deleted ? deleted.data() : nullptr;
  p.rows = use_rows ? rows.data() : nullptr;
  p.n = n_logical;
  p.stride = stride;
  p.dim = dim;
  const bool f32_query = S == Storage::F32 || S == Storage::F16 || (S == Storage::BF16 && !Mma);
  if (S == Storage::B1 && Mma) {
    p.q = reinterpret_cast<const uint8_t*>(Q.b1x.data());
    p.q_pitch = db.pitch * 8;
  } else if (f32_query) {
    p.q = reinterpret_cast<const uint8_t*>(S == Storage::BF16 ? Q.f_bf16.data() : Q.f.data());
    p.q_pitch = Q.fs * 4;
  } else {
    p.q = Q.codes.data();
    p.q_pitch = db.pitch;
  }
  p.qscale = Q.scales.data();
  p.nq = nq;
  p.thresh = thresh.data();
  const int64_t cap = n_logical + 1;
  std::vector<unsigned long long> cand(size_t(nq * cap), ~0ull);
  std::vector<unsigned> count(size_t(nq), 0);
  p.cand = cand.data();
  p.cap = cap;
  p.count = count.data();
  const int rows_per_tile = Mma ? mma::kRows : simt::kRows;
  const int64_t ntiles = (n_logical + rows_per_tile - 1) / rows_per_tile;
  run_scan<S, T, Mma>(p, std::max<int64_t>(1, (ntiles + 1) / 2));  // two row splits when possible

  const auto got = read_lists(cand, count, cap, nq);
  const bool exact = S == Storage::I8 || S == Storage::B1;
  for (int q = 0; q < nq; ++q) {
    int missing = 0, extra = 0, wrong = 0;
    std::set<int64_t> expected;
    for (auto& e : ref[size_t(q)]) {
      const double t = thresh[size_t(q)];
      const bool above = exact ? e.second >= t : e.second >= t + tol[size_t(q)];
      const bool maybe = exact ? above : e.second >= t - tol[size_t(q)];
      auto it = got[size_t(q)].find(e.first);
      if (above && it == got[size_t(q)].end()) ++missing;
      if (it != got[size_t(q)].end()) {
        if (!maybe) ++extra;
        expected.insert(e.first);
        const double err = std::fabs(double(it->second) - e.second);
        if (exact ? it->second != float(e.second) : err > tol[size_t(q)]) ++wrong;
      }
    }
    for (auto& g : got[size_t(q)])
      if (!expected.count(g.first)) ++extra;
    CHECK(missing == 0 && extra == 0 && wrong == 0, "%s q%d: %d missing, %d extra, %d wrong scores (%zu listed)",
          what.c_str(), q, missing, extra, wrong, got[size_t(q)].size());
  }
}

template <Storage S, int T, bool Mma>
void scan_suite(int nq) {
  for (int dim : {64, 257, 512}) check_scan<S, T, Mma>(dim, 300, nq, true, false, false, 1, false);
  check_scan<S, T, Mma>(96, 1000, nq, false, true, false, 1, true);
  check_scan<S, T, Mma>(130, 777, nq, true, true, true, 3, false);
  check_scan<S, T, Mma>(768, 129, nq, false, false, false, 1, true);
}

// ---------------------------------------------------------------------------------------
// selection

struct Cand {
  uint32_t key;
  int64_t id;
  uint32_t row;
};

void check_block_topk(int64_t m, int64_t k, int key_levels, int64_t cap) {
  const int nq = 2;
  std::vector<unsigned long long> cand(size_t(nq * cap), ~0ull);
  std::vector<unsigned> count(static_cast<size_t>(nq));
  const int64_t nrows = std::max<int64_t>(m, 1) * 2;
  std::vector<int64_t> ids(static_cast<size_t>(nrows));
  for (int64_t r = 0; r < nrows; ++r) ids[size_t(r)] = (r * 2654435761LL) % 1000003 + r * 1000003;  // unique, unordered
  std::vector<std::vector<Cand>> want(static_cast<size_t>(nq));
  for (int q = 0; q < nq; ++q) {
    std::vector<uint32_t> rows_perm(static_cast<size_t>(nrows));
    for (int64_t r = 0; r < nrows; ++r) rows_perm[size_t(r)] = uint32_t(r);
    std::shuffle(rows_perm.begin(), rows_perm.end(), rng);
    std::uniform_int_distribution<int> lvl(0, key_levels - 1);
    for (int64_t i = 0; i < m; ++i) {
      const float s = key_levels == 1 ? 0.25f : float(lvl(rng)) / float(key_levels) - 0.5f;
      const uint32_t row = rows_perm[size_t(i)];
      if (i < cap) cand[size_t(q * cap + i)] = make_candidate(s, row);
      want[size_t(q)].push_back({score_key(s), ids[row], row});
    }
    count[size_t(q)] = unsigned(m);
    std::sort(want[size_t(q)].begin(), want[size_t(q)].end(), [](const Cand& a, const Cand& b) {
      return a.key > b.key || (a.key == b.key && a.id < b.id);
    });
  }
  std::vector<float> scores(size_t(nq * k), 7.0f);
  std::vector<int64_t> out_ids(size_t(nq * k), 7);
  std::vector<uint32_t> out_rows(size_t(nq * k), 7);
  unsigned overflow = 0;
  const CandidateLists lists{cand.data(), cap, count.data(), nq};
  const TopKOut out{scores.data(), out_ids.data(), out_rows.data(), k};
  cusim::launch(dim3(nq), dim3(select_detail::kThreads), 0,
                [&] { select_detail::block_topk_kernel(lists, k, ids.data(), out, &overflow); });
  CHECK(overflow == unsigned(m > cap), "overflow flag m=%lld cap=%lld", (long long)m, (long long)cap);
  if (m > cap) return;
  for (int q = 0; q < nq; ++q)
    for (int64_t j = 0; j < k; ++j) {
      const size_t o = size_t(q * k + j);
      if (j < m) {
        const Cand& w = want[size_t(q)][size_t(j)];
        CHECK(out_ids[o] == w.id && out_rows[o] == w.row && scores[o] == key_score(w.key),
              "topk m=%lld k=%lld levels=%d q%d slot %lld: got id %lld want %lld", (long long)m, (long long)k,
              key_levels, q, (long long)j, (long long)out_ids[o], (long long)w.id);
      } else {
        CHECK(out_ids[o] == -1 && out_rows[o] == 0xffffffffu && std::isinf(scores[o]) && scores[o] < 0, "empty slot");
      }
    }

  // The threshold kernel on the same lists: the k-th best score, or -inf.
  std::vector<float> thresh(static_cast<size_t>(nq), 3.0f);
  cusim::launch(dim3(nq), dim3(select_detail::kThreads), 0,
                [&] { select_detail::kth_threshold_kernel(lists, k, thresh.data()); });
  for (int q = 0; q < nq; ++q) {
    const float w = m >= k ? key_score(want[size_t(q)][size_t(k - 1)].key) : -INFINITY;
    CHECK(thresh[size_t(q)] == w, "kth threshold m=%lld k=%lld: got %g want %g", (long long)m, (long long)k,
          thresh[size_t(q)], w);
  }
}

void test_select() {
  check_block_topk(0, 5, 100, 16);
  check_block_topk(1, 1, 100, 16);
  check_block_topk(3, 10, 100, 16);
  check_block_topk(100, 10, 1000000, 128);
  check_block_topk(2048, 2048, 7, 2048);
  check_block_topk(2000, 17, 3, 2048);   // sort-all path with heavy ties
  check_block_topk(5000, 10, 1000000, 5000);  // radix path
  check_block_topk(5000, 100, 50, 5000);      // radix path, ties fit
  check_block_topk(9000, 1000, 4, 9000);      // ties past the sort capacity: id radix select
  check_block_topk(6000, 300, 1, 6000);       // one score for everything
  check_block_topk(3000, 2048, 1000, 3000);
  check_block_topk(300, 10, 100, 200);        // overflow reported
}

void test_rescore() {
  const int D = 45, nq = 3, n = 50;
  const int64_t kc = 7;
  std::vector<float> q = randn(nq * D), x = randn(n * D);
  std::vector<uint32_t> rows(static_cast<size_t>(nq * kc));
  for (int i = 0; i < nq * kc; ++i) rows[size_t(i)] = (i % 5 == 4) ? 0xffffffffu : uint32_t((i * 13) % n);
  std::vector<unsigned long long> cand(size_t(nq * kc), ~0ull);
  std::vector<unsigned> count(size_t(nq), 0);
  RescoreParams p;
  p.q = q.data();
  p.q_stride = D;
  p.orig = x.data();
  p.dim = D;
  p.rows = rows.data();
  p.nq = nq;
  p.kc = kc;
  p.cand = cand.data();
  p.count = count.data();
  const int64_t blocks = (nq * kc + rescore_detail::kWarpsPerBlock - 1) / rescore_detail::kWarpsPerBlock;
  cusim::launch(dim3(unsigned(blocks)), dim3(rescore_detail::kWarpsPerBlock * 32), 0,
                [&] { rescore_detail::rescore_kernel(p); });
  for (int qi = 0; qi < nq; ++qi) {
    std::map<int64_t, float> want;
    for (int64_t j = 0; j < kc; ++j) {
      const uint32_t r = rows[size_t(qi * kc + j)];
      if (r == 0xffffffffu) continue;
      double s = 0;
      for (int d = 0; d < D; ++d) s += double(q[size_t(qi * D + d)]) * double(x[size_t(r * D + d)]);
      want[r] = float(s);
    }
    CHECK(count[size_t(qi)] == want.size(), "rescore count");
    for (unsigned i = 0; i < count[size_t(qi)]; ++i) {
      const unsigned long long e = cand[size_t(qi * kc + i)];
      CHECK(want.count(candidate_row(e)) && std::fabs(key_score(candidate_key(e)) - want[candidate_row(e)]) <=
                                                 1e-6f * std::fabs(want[candidate_row(e)]) + 1e-30f,
            "rescored score");
    }
  }
}

void test_layout() {
  for (Storage s : {Storage::F32, Storage::F16, Storage::BF16, Storage::I8, Storage::B1})
    for (int dim : {1, 70, 257}) {
      const Layout L = make_layout(s, dim);
      const int64_t rows = 37, pitch = round_up(int64_t(L.row_bytes()), 16);
      std::vector<uint8_t> packed(size_t(blocks_for_rows(rows)) * L.block_bytes(), 0);
      std::vector<uint8_t> code(L.row_bytes());
      std::vector<std::vector<uint8_t>> want(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        for (auto& b : code) b = uint8_t(rng());
        scatter_row(L, code.data(), packed.data(), r);
        want[size_t(r)] = code;
      }
      std::vector<uint8_t> dev(size_t(rows * pitch), 0);
      const dim3 grid(4), block(64);
      cusim::launch(grid, block, 0, [&] {
        layout_detail::unpack_kernel(packed.data(), rows, L.ngroups, L.group_bytes, dev.data(), pitch);
      });
      for (int64_t r = 0; r < rows; ++r)
        CHECK(std::memcmp(dev.data() + r * pitch, want[size_t(r)].data(), L.row_bytes()) == 0, "unpack row");
      std::vector<uint8_t> back(packed.size(), 0);
      cusim::launch(grid, block, 0, [&] {
        layout_detail::pack_kernel(dev.data(), pitch, rows, L.ngroups, L.group_bytes, back.data());
      });
      CHECK(back == packed, "pack round trip storage %s dim %d", storage_name(s), dim);
    }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  auto want = [&](const char* name) { return only.empty() || only == name; };
  if (want("prepare")) {
    test_prepare_errors();
    std::printf("prepare: %d checks, %d failures\n", g_checks, g_failures);
  }
  if (want("layout")) {
    test_layout();
    std::printf("layout: %d checks, %d failures\n", g_checks, g_failures);
  }
  if (want("select")) {
    test_select();
    std::printf("select: %d checks, %d failures\n", g_checks, g_failures);
  }
  if (want("rescore")) {
    test_rescore();
    std::printf("rescore: %d checks, %d failures\n", g_checks, g_failures);
  }
  if (want("simt")) {
    scan_suite<Storage::F32, 1, false>(1);
    scan_suite<Storage::F32, 8, false>(5);
    scan_suite<Storage::F32, 32, false>(40);
    scan_suite<Storage::F16, 1, false>(1);
    scan_suite<Storage::F16, 8, false>(8);
    scan_suite<Storage::F16, 32, false>(13);
    scan_suite<Storage::BF16, 1, false>(1);
    scan_suite<Storage::BF16, 8, false>(3);
    scan_suite<Storage::I8, 1, false>(1);
    scan_suite<Storage::I8, 8, false>(7);
    scan_suite<Storage::B1, 1, false>(1);
    scan_suite<Storage::B1, 8, false>(8);
    std::printf("simt: %d checks, %d failures\n", g_checks, g_failures);
  }
  if (want("mma")) {
    scan_suite<Storage::BF16, 32, true>(9);
    scan_suite<Storage::I8, 32, true>(32);
    scan_suite<Storage::B1, 32, true>(17);
    scan_suite<Storage::BF16, 64, true>(33);
    scan_suite<Storage::BF16, 128, true>(70);
    scan_suite<Storage::I8, 64, true>(64);
    scan_suite<Storage::I8, 128, true>(130);
    scan_suite<Storage::B1, 64, true>(20);
    scan_suite<Storage::B1, 128, true>(129);
    std::printf("mma: %d checks, %d failures\n", g_checks, g_failures);
  }
  std::printf("%s: %d checks, %d failures\n", g_failures ? "FAILED" : "OK", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
