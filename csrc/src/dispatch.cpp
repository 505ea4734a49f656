#include <atomic>
#include <cstdlib>
#include <mutex>

#include "cliprt/errors.h"
#include "cliprt/scan.h"

namespace cliprt {
namespace {

bool cpu_supports(const std::string& name) {
  if (name == "scalar") return true;
#if CLIPRT_HAVE_X86_VARIANTS
  __builtin_cpu_init();
  if (name == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
           __builtin_cpu_supports("avx512vpopcntdq");
#endif
  return false;
}

const ScanKernels* by_name(const std::string& name) {
  if (name == "scalar") return &scalar_kernels();
#if CLIPRT_HAVE_X86_VARIANTS
  if (name == "avx2") return &avx2_kernels();
  if (name == "avx512") return &avx512_kernels();
#endif
  return nullptr;
}

const ScanKernels* pick_default() {
  if (const char* env = std::getenv("CLIPRT_SIMD")) {
    std::string name(env);
    if (!name.empty()) {
      if (!by_name(name) || !cpu_supports(name))
        throw ValueError("CLIPRT_SIMD=" + name + " is not available on this build/CPU");
      return by_name(name);
    }
  }
  auto names = available_variants();
  return by_name(names.back());
}

std::atomic<const ScanKernels*> g_active{nullptr};
std::mutex g_mu;

}  // namespace

std::vector<std::string> compiled_variants() {
#if CLIPRT_HAVE_X86_VARIANTS
  return {"scalar", "avx2", "avx512"};
#else
  return {"scalar"};
#endif
}

std::vector<std::string> available_variants() {
  std::vector<std::string> out;
  for (auto& n : compiled_variants())
    if (cpu_supports(n)) out.push_back(n);
  return out;
}

const ScanKernels& active_kernels() {
  const ScanKernels* k = g_active.load(std::memory_order_acquire);
  if (k) return *k;
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_active.load()) g_active.store(pick_default(), std::memory_order_release);
  return *g_active.load();
}

void set_active_variant(const std::string& name) {
  const ScanKernels* k = by_name(name);
  if (!k || !cpu_supports(name))
    throw ValueError("SIMD variant '" + name + "' is not available on this build/CPU");
  g_active.store(k, std::memory_order_release);
}

}  // namespace cliprt
