// Host-side CUDA plumbing shared by the device index: device selection, per-thread streams,
// cached device facts, stream-ordered scratch buffers and owned device arrays. Every call is
// checked (check.h).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "common/check.h"

namespace cliprt {
namespace cuda {

// Makes `device` current for the scope and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

// Once per device: lets the stream-ordered memory pool keep freed scratch memory (searches
// allocate and free theirs on every call).
void prepare_device(int device);
// Streaming multiprocessors of a device (cached).
int sm_count(int device);
// A non-blocking stream owned by the calling thread, one per device: concurrent callers on
// different threads never share a stream.
cudaStream_t thread_stream(int device);
// Makes `stream` wait for the work already queued on `producer` (an event, not a host wait).
void stream_wait(cudaStream_t stream, cudaStream_t producer);

// Test hooks (process-wide): poison fills every scratch buffer and output with 0xFF bytes
// before use, so a kernel that skips a write is caught; cap_limit (> 0) caps the candidate
// lists so the overflow path runs; force_sample takes the sampled-threshold path at any size.
struct DebugKnobs {
  bool poison = false;
  int64_t cap_limit = 0;
  bool force_sample = false;
};
DebugKnobs debug_knobs();
void set_debug_knobs(const DebugKnobs& k);

// Fills n bytes at p with 0xFF on `stream` when poisoning is on.
void poison_bytes(void* p, size_t n, cudaStream_t stream);

// Scratch memory from the device's stream-ordered pool, freed on the same stream.
template <class T>
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(size_t n, cudaStream_t stream) : n_(n), stream_(stream) {
    if (n == 0) return;
    CLIPRT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&p_), n * sizeof(T), stream));
    poison_bytes(p_, n * sizeof(T), stream);
  }
  ~ScratchBuffer() { release(); }
  ScratchBuffer(ScratchBuffer&& o) noexcept { *this = std::move(o); }
  ScratchBuffer& operator=(ScratchBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      stream_ = o.stream_;
    }
    return *this;
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void release() {
    if (p_) cudaFreeAsync(p_, stream_);  // errors here cannot be reported; the pool reclaims
    p_ = nullptr;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
  cudaStream_t stream_ = nullptr;
};

// An owned device allocation (cudaMalloc) that can grow, keeping its contents.
class DeviceBytes {
 public:
  DeviceBytes() = default;
  ~DeviceBytes();
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  // Grows to at least n bytes, keeping the first `keep`; new bytes are zero.
  void grow(size_t n, size_t keep);
  uint8_t* data() const { return p_; }
  size_t capacity() const { return cap_; }

 private:
  uint8_t* p_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace cuda
}  // namespace cliprt
