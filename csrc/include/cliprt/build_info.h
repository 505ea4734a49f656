#pragma once
#include <string>
#include <vector>

namespace cliprt {
struct BuildInfo {
  std::string version;
  std::string compiler;
  std::vector<std::string> simd_compiled;
  std::vector<std::string> simd_available;
  std::string simd_selected;
  bool cuda = false;
  std::string cuda_archs;
};
BuildInfo build_info();
// Measured sustained memory read bandwidth in bytes/s over `bytes` with `threads` threads.
double measure_read_bandwidth(size_t bytes, int threads, int repeats);
}  // namespace cliprt
