#include "cliprt/build_info.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "cliprt/features.h"
#include "cliprt/mapped_file.h"
#include "cliprt/scan.h"

#ifndef CLIPRT_VERSION
#define CLIPRT_VERSION "0.0.0"
#endif
#ifndef CLIPRT_CXX_COMPILER
#define CLIPRT_CXX_COMPILER "unknown"
#endif
#ifndef CLIPRT_CUDA_ARCHS
#define CLIPRT_CUDA_ARCHS ""
#endif

namespace cliprt {

BuildInfo build_info() {
  BuildInfo b;
  b.version = CLIPRT_VERSION;
  b.compiler = CLIPRT_CXX_COMPILER;
  b.simd_compiled = compiled_variants();
  b.simd_available = available_variants();
  b.simd_selected = active_kernels().name;
#if CLIPRT_WITH_CUDA
  b.cuda = true;
#endif
  b.cuda_archs = CLIPRT_CUDA_ARCHS;
  return b;
}

namespace {
uint64_t sum_words(const uint64_t* p, size_t n) {
  // Eight independent accumulators keep enough loads in flight to saturate memory.
  uint64_t a[8] = {0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += p[i + j];
  for (; i < n; ++i) a[0] += p[i];
  uint64_t s = 0;
  for (uint64_t v : a) s += v;
  return s;
}
}  // namespace

double measure_read_bandwidth(size_t bytes, int threads, int repeats) {
  threads = std::max(1, threads);
  AlignedBytes buf;
  buf.grow(bytes, 0);
  const size_t words = bytes / 8;
  auto* w = reinterpret_cast<uint64_t*>(buf.data());
  for (size_t i = 0; i < words; i += 512) w[i] = i;  // fault every page in
  std::vector<double> rates;
  volatile uint64_t sink = 0;
  for (int rep = 0; rep < std::max(1, repeats); ++rep) {
    std::vector<uint64_t> partial(static_cast<size_t>(threads), 0);
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    const size_t per = words / size_t(threads);
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { partial[size_t(t)] = sum_words(w + size_t(t) * per, per); });
    for (auto& th : pool) th.join();
    auto t1 = std::chrono::steady_clock::now();
    for (auto v : partial) sink = sink + v;
    rates.push_back(double(per * size_t(threads) * 8) / std::chrono::duration<double>(t1 - t0).count());
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace cliprt
