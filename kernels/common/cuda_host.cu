#include "common/cuda_host.h"

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace cliprt {
namespace cuda {

DeviceGuard::DeviceGuard(int device) {
  CLIPRT_CUDA_CHECK(cudaGetDevice(&prev_));
  if (prev_ != device) CLIPRT_CUDA_CHECK(cudaSetDevice(device));
}
DeviceGuard::~DeviceGuard() {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
}

namespace {
std::mutex g_mu;
std::unordered_map<int, int> g_sms;
std::once_flag g_pool_once[64];

struct ThreadStreams {
  std::unordered_map<int, cudaStream_t> streams;
  std::unordered_map<int, cudaEvent_t> events;
  ~ThreadStreams() {
    for (auto& s : streams) cudaStreamDestroy(s.second);
    for (auto& e : events) cudaEventDestroy(e.second);
  }
};
thread_local ThreadStreams t_streams;

std::atomic<bool> g_poison{false};
std::atomic<int64_t> g_cap_limit{0};
std::atomic<bool> g_force_sample{false};
}  // namespace

// Keeps up to 1 GiB of freed scratch cached in the pool instead of returning it to the
// driver at each synchronisation.
void prepare_device(int device) {
  if (device < 0 || device >= 64) return;
  std::call_once(g_pool_once[device], [device] {
    cudaMemPool_t pool;
    CLIPRT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = uint64_t(1) << 30;
    CLIPRT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  });
}

int sm_count(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_sms.find(device);
  if (it != g_sms.end()) return it->second;
  int n = 0;
  CLIPRT_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  g_sms[device] = n;
  return n;
}

cudaStream_t thread_stream(int device) {
  auto it = t_streams.streams.find(device);
  if (it != t_streams.streams.end()) return it->second;
  cudaStream_t s;
  CLIPRT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  t_streams.streams[device] = s;
  return s;
}

void stream_wait(cudaStream_t stream, cudaStream_t producer) {
  if (stream == producer) return;
  int device = 0;
  CLIPRT_CUDA_CHECK(cudaGetDevice(&device));
  cudaEvent_t ev;
  auto it = t_streams.events.find(device);
  if (it != t_streams.events.end()) {
    ev = it->second;
  } else {
    CLIPRT_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    t_streams.events[device] = ev;
  }
  CLIPRT_CUDA_CHECK(cudaEventRecord(ev, producer));
  CLIPRT_CUDA_CHECK(cudaStreamWaitEvent(stream, ev, 0));
}

DebugKnobs debug_knobs() {
  DebugKnobs k;
  k.poison = g_poison.load();
  k.cap_limit = g_cap_limit.load();
  k.force_sample = g_force_sample.load();
  return k;
}
void set_debug_knobs(const DebugKnobs& k) {
  g_poison.store(k.poison);
  g_cap_limit.store(k.cap_limit);
  g_force_sample.store(k.force_sample);
}

void poison_bytes(void* p, size_t n, cudaStream_t stream) {
  if (n && g_poison.load(std::memory_order_relaxed)) CLIPRT_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, n, stream));
}

DeviceBytes::~DeviceBytes() {
  if (p_) cudaFree(p_);
}

void DeviceBytes::grow(size_t n, size_t keep) {
  if (n <= cap_) return;
  uint8_t* p = nullptr;
  CLIPRT_CUDA_CHECK(cudaMalloc(&p, n));
  try {
    if (keep) CLIPRT_CUDA_CHECK(cudaMemcpy(p, p_, keep, cudaMemcpyDeviceToDevice));
    CLIPRT_CUDA_CHECK(cudaMemset(p + keep, 0, n - keep));
  } catch (...) {
    cudaFree(p);
    throw;
  }
  if (p_) cudaFree(p_);
  p_ = p;
  cap_ = n;
}

}  // namespace cuda
}  // namespace cliprt
