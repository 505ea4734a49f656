// The whole device index (cliprt::cuda::DeviceIndex: copies, add, remove, the search
// pipeline with sampling, overflow retries, rescoring and large k) on the emulated runtime
// (emulated_runtime.cpp), checked against the CPU index. Exit status 0 when every check
// passes. Build and run: bash tests/cuda_emulation/run_emulation.sh index
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cliprt/errors.h"
#include "cliprt/index.h"
#include "common/cuda_host.h"
#include "index/device_index.h"

using namespace cliprt;
using cuda::DeviceIndex;

namespace {

int g_failures = 0, g_checks = 0;

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

std::mt19937_64 rng(777);

std::vector<float> randn(int64_t n) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

struct Result {
  std::vector<float> s;
  std::vector<int64_t> i;
};

Result cpu_search(const Index& ix, const std::vector<float>& q, int64_t nq, int64_t k, int rescore,
                  const std::vector<int64_t>* allow = nullptr) {
  SearchParams p;
  p.k = k;
  p.rescore = rescore;
  if (allow) {
    p.allow = allow->data();
    p.n_allow = int64_t(allow->size());
    p.has_allow = true;
  }
  Result r{std::vector<float>(size_t(nq * k)), std::vector<int64_t>(size_t(nq * k))};
  ix.search(q.data(), nq, p, r.s.data(), r.i.data());
  return r;
}

Result dev_search(const DeviceIndex& d, const std::vector<float>& q, int64_t nq, int64_t k, int rescore,
                  const std::vector<int64_t>* allow = nullptr, bool device_io = false) {
  Result r{std::vector<float>(size_t(nq * k), 5.0f), std::vector<int64_t>(size_t(nq * k), 5)};
  cuda::DeviceSearchRequest req;
  req.queries = q.data();
  req.nq = nq;
  req.queries_on_device = device_io;  // emulated device memory is host memory
  req.params.k = k;
  req.params.rescore = rescore;
  if (allow) {
    req.params.allow = allow->data();
    req.params.n_allow = int64_t(allow->size());
    req.params.has_allow = true;
  }
  req.out_scores = r.s.data();
  req.out_ids = r.i.data();
  req.out_on_device = device_io;
  d.search(req);
  return r;
}

// exact: identical arrays. Otherwise scores within tol slot by slot, and ids may differ only
// where the reference has a near-tie around that slot.
void compare(const Result& got, const Result& want, int64_t nq, int64_t k, bool exact, double tol, const std::string& what) {
  int bad_scores = 0, bad_ids = 0;
  for (int64_t q = 0; q < nq; ++q)
    for (int64_t j = 0; j < k; ++j) {
      const size_t o = size_t(q * k + j);
      const float a = got.s[o], b = want.s[o];
      const bool both_inf = std::isinf(a) && std::isinf(b) && (a < 0) == (b < 0);
      if (exact ? !(a == b) : !(both_inf || std::fabs(double(a) - double(b)) <= tol)) ++bad_scores;
      if (got.i[o] == want.i[o]) continue;
      if (exact) {
        ++bad_ids;
        continue;
      }
      bool near_tie = false;
      for (int64_t jj = std::max<int64_t>(0, j - 3); jj < std::min(k, j + 4); ++jj)
        if (jj != j && std::fabs(double(want.s[size_t(q * k + jj)]) - double(b)) <= 2 * tol) near_tie = true;
      if (!near_tie) ++bad_ids;
    }
  CHECK(bad_scores == 0 && bad_ids == 0, "%s: %d scores and %d ids differ (first query: got %lld/%g want %lld/%g)",
        what.c_str(), bad_scores, bad_ids, (long long)got.i[0], got.s[0], (long long)want.i[0], want.s[0]);
}

void compare_exact(const Result& a, const Result& b, int64_t nq, int64_t k, const std::string& what) {
  compare(a, b, nq, k, true, 0, what);
}

double tolerance(Storage s) { return (s == Storage::I8 || s == Storage::B1) ? 1e-5 : 2e-4; }

std::string name(Storage s, Metric m) { return std::string(storage_name(s)) + "/" + metric_name(m); }

void test_against_cpu(Storage s, Metric m) {
  const int D = 67;
  const int64_t n = 3000;
  const bool keep = s == Storage::I8 || s == Storage::B1;
  Index cpu(D, m, s, keep);
  std::vector<float> x = randn(n * D);
  for (int64_t r = 0; r < n; r += 50)  // exact duplicates: ties broken by id
    std::memcpy(x.data() + (r + 1) * D, x.data() + r * D, size_t(D) * 4);
  cpu.add(x.data(), n, nullptr);
  std::vector<int64_t> gone;
  for (int64_t r = 3; r < n; r += 11) gone.push_back(r);
  cpu.remove(gone.data(), int64_t(gone.size()));
  auto dev = DeviceIndex::from_host(cpu, 0);
  CHECK(dev->size() == cpu.size(), "%s size after copy", name(s, m).c_str());

  const bool exact_codes = s == Storage::I8 || s == Storage::B1;
  for (int64_t nq : {1, 6, 20}) {
    const std::vector<float> q = randn(nq * D);
    for (int64_t k : {1, 10, 100}) {
      const std::string what = name(s, m) + " nq=" + std::to_string(nq) + " k=" + std::to_string(k);
      compare(dev_search(*dev, q, nq, k, 0), cpu_search(cpu, q, nq, k, 0), nq, k, exact_codes, tolerance(s),
              what + " rescore=0");
      const int r = default_rescore(s, keep, k);
      if (r > 0)
        compare(dev_search(*dev, q, nq, k, r), cpu_search(cpu, q, nq, k, r), nq, k, false, 1e-5, what + " rescored");
    }
  }
  // allow-lists: selective with unknown, removed and duplicate ids; broad
  const std::vector<float> q = randn(4 * D);
  std::vector<int64_t> sel = {5, 17, 3, 14, 99999, 17, 250, 2999, 1234};
  std::vector<int64_t> broad;
  for (int64_t r = 0; r < n; r += 2) broad.push_back(r);
  for (auto* allow : {&sel, &broad})
    compare(dev_search(*dev, q, 4, 10, 0, allow), cpu_search(cpu, q, 4, 10, 0, allow), 4, 10, exact_codes,
            tolerance(s), name(s, m) + " allow " + std::to_string(allow->size()));
  // the forced sampled-threshold path and the overflow retry give the same answer
  const Result plain = dev_search(*dev, q, 4, 50, 0);
  cuda::DebugKnobs knobs;
  knobs.force_sample = true;
  cuda::set_debug_knobs(knobs);
  compare_exact(dev_search(*dev, q, 4, 50, 0), plain, 4, 50, name(s, m) + " forced sample");
  knobs.cap_limit = 3;
  cuda::set_debug_knobs(knobs);
  compare_exact(dev_search(*dev, q, 4, 50, 0), plain, 4, 50, name(s, m) + " overflow retry");
  knobs = cuda::DebugKnobs();
  knobs.poison = true;
  cuda::set_debug_knobs(knobs);
  compare_exact(dev_search(*dev, q, 4, 50, 0, nullptr, true), plain, 4, 50, name(s, m) + " poisoned, device io");
  cuda::set_debug_knobs(cuda::DebugKnobs());
  // large k (past the block top-k) and k past the live rows
  compare(dev_search(*dev, q, 2, 2100, 0), cpu_search(cpu, q, 2, 2100, 0), 2, 2100, exact_codes, tolerance(s),
          name(s, m) + " k=2100");
  compare(dev_search(*dev, q, 2, n + 5, 0), cpu_search(cpu, q, 2, n + 5, 0), 2, n + 5, exact_codes, tolerance(s),
          name(s, m) + " k>n");
  // back to the CPU: the same index
  auto back = dev->to_host();
  compare_exact(cpu_search(*back, q, 4, 20, 0), cpu_search(cpu, q, 4, 20, 0), 4, 20, name(s, m) + " to_host");
  CHECK(back->size() == cpu.size() && back->ids() == cpu.ids(), "%s to_host ids", name(s, m).c_str());
}

// Adds on the device produce the CPU's codes; errors carry the CPU's messages.
void test_add(Storage s, Metric m) {
  const int D = 40;
  const bool keep = s != Storage::F16;
  Index cpu(D, m, s, keep);
  DeviceIndex dev(0, D, m, s, keep);
  std::vector<float> x = randn(500 * D);
  std::vector<int64_t> ids(300);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int64_t(1000 - 3 * i);
  CHECK(cpu.add(x.data(), 300, ids.data()) == dev.add(x.data(), 300, false, ids.data(), false, 0), "explicit ids");
  CHECK(cpu.add(x.data() + 300 * D, 200, nullptr) == dev.add(x.data() + 300 * D, 200, true, nullptr, false, 0),
        "automatic ids");
  std::vector<int64_t> gone = {1000, 997, 1001, 5000};
  CHECK(cpu.remove(gone.data(), 4) == dev.remove(gone.data(), 4), "remove count");
  auto host = dev.to_host();
  std::vector<int64_t> all = cpu.ids();
  CHECK(host->ids() == all && dev.ids() == all, "%s ids after add", name(s, m).c_str());
  std::vector<float> a(all.size() * D), b(all.size() * D), c(all.size() * D);
  cpu.reconstruct(all.data(), int64_t(all.size()), a.data());
  host->reconstruct(all.data(), int64_t(all.size()), b.data());
  dev.reconstruct(all.data(), int64_t(all.size()), c.data());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0 && std::memcmp(a.data(), c.data(), a.size() * 4) == 0,
        "%s codes of device adds", name(s, m).c_str());
  const std::vector<float> q = randn(3 * D);
  compare_exact(cpu_search(*host, q, 3, 15, 0), cpu_search(cpu, q, 3, 15, 0), 3, 15, name(s, m) + " add+to_host");

  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  std::vector<float> bad = randn(4 * D);
  bad[size_t(2 * D + 7)] = NAN;
  CHECK(message([&] { cpu.add(bad.data(), 4, nullptr); }) == message([&] { dev.add(bad.data(), 4, false, nullptr, false, 0); }),
        "NaN message: %s", message([&] { dev.add(bad.data(), 4, false, nullptr, false, 0); }).c_str());
  std::vector<float> zero = randn(3 * D);
  for (int d = 0; d < D; ++d) zero[size_t(D + d)] = 0.0f;
  CHECK(message([&] { cpu.add(zero.data(), 3, nullptr); }) == message([&] { dev.add(zero.data(), 3, false, nullptr, false, 0); }),
        "zero-norm message");
  std::vector<int64_t> dup = {7, 8, 7};
  CHECK(message([&] { cpu.add(x.data(), 3, dup.data()); }) == message([&] { dev.add(x.data(), 3, false, dup.data(), false, 0); }),
        "duplicate id message");
  std::vector<float> nanq = randn(2 * D);
  nanq[size_t(D + 3)] = INFINITY;
  CHECK(message([&] { cpu_search(cpu, nanq, 2, 5, 0); }) == message([&] { dev_search(dev, nanq, 2, 5, 0); }),
        "NaN query message: %s", message([&] { dev_search(dev, nanq, 2, 5, 0); }).c_str());
  CHECK(dev.size() == cpu.size(), "rejected adds store nothing");
}

void test_empty() {
  DeviceIndex dev(0, 16, Metric::Cosine, Storage::I8, true);
  const std::vector<float> q = randn(3 * 16);
  const Result r = dev_search(dev, q, 3, 4, 2);
  bool ok = true;
  for (size_t j = 0; j < r.s.size(); ++j) ok = ok && std::isinf(r.s[j]) && r.s[j] < 0 && r.i[j] == -1;
  CHECK(ok, "empty index results");
  Index cpu(16, Metric::Cosine, Storage::I8, true);
  auto dev2 = DeviceIndex::from_host(cpu, 0);
  CHECK(dev2->size() == 0 && dev2->to_host()->size() == 0, "empty copies");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  test_empty();
  for (Storage s : {Storage::F32, Storage::F16, Storage::BF16, Storage::I8, Storage::B1})
    for (Metric m : {Metric::Cosine, Metric::IP}) {
      if (!only.empty() && only.find(storage_name(s)) == std::string::npos) continue;
      test_add(s, m);
      test_against_cpu(s, m);
      std::printf("%s: %d checks, %d failures\n", name(s, m).c_str(), g_checks, g_failures);
      std::fflush(stdout);
    }
  std::printf("%s: %d checks, %d failures\n", g_failures ? "FAILED" : "OK", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
