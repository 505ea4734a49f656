// CPU emulation of the CUDA execution model, for testing kernel logic on machines without
// a GPU. The threads of a block are cooperative fibers (ucontext) on the launching OS
// thread: a fiber runs until it reaches __syncthreads or a warp-level exchange, then the
// next runnable fiber runs; a barrier releases when every live participant has arrived.
// Warp intrinsics (ballot, shuffles, match) exchange values through those warp barriers,
// and the PTX wrappers of common/ptx.cuh are replaced by shadow/common/ptx.cuh, which
// implements cp.async as an immediate copy and ldmatrix / mma.sync from the PTX ISA
// fragment layouts. Blocks run one after another; dynamic shared memory is one buffer.
// Races that need real concurrency are not modelled; ordering bugs across barriers are
// (a fiber never runs past a barrier before every other live thread reaches it).
//
// Include this header before anything else in an emulated translation unit, compile with
// -ffp-contract=off (the kernels' *_rn intrinsics become plain IEEE operations) and put
// tests/cuda_emulation/shadow ahead of kernels/ on the include path.
#pragma once
#define __shared__ static
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

namespace cusim {

constexpr size_t kStackBytes = size_t(256) << 10;
constexpr int kBlockBarrier = -1;

struct Warp {
  uint64_t val[32];
  const void* ptr[32];
  uint32_t reg[32][8];
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  enum State { Runnable, Waiting, Done } state = Runnable;
  int waiting_on = 0;
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> warp_alive, warp_arrived;
  int alive = 0, block_arrived = 0;
  int current = 0;
  std::function<void()> body;
};

inline uint3 t_thread;
inline Block* t_block = nullptr;
inline uint3 g_block;
inline dim3 g_block_dim, g_grid_dim;
inline std::vector<uint8_t> g_dynamic_smem;

inline uint8_t* dynamic_smem() { return g_dynamic_smem.data(); }
inline int lane() { return int(t_thread.x & 31); }
inline Warp& warp() { return t_block->warps[t_thread.x / 32]; }

// Marks the waiters of a barrier runnable once every live participant has arrived.
inline void release_if_complete(Block& b, int id) {
  const bool complete = id == kBlockBarrier ? (b.block_arrived > 0 && b.block_arrived == b.alive)
                                            : (b.warp_arrived[size_t(id)] > 0 &&
                                               b.warp_arrived[size_t(id)] == b.warp_alive[size_t(id)]);
  if (!complete) return;
  for (auto& f : b.fibers)
    if (f.state == Fiber::Waiting && f.waiting_on == id) f.state = Fiber::Runnable;
  if (id == kBlockBarrier)
    b.block_arrived = 0;
  else
    b.warp_arrived[size_t(id)] = 0;
}

inline void barrier(int id) {
  Block& b = *t_block;
  Fiber& me = b.fibers[size_t(b.current)];
  me.state = Fiber::Waiting;
  me.waiting_on = id;
  if (id == kBlockBarrier)
    ++b.block_arrived;
  else
    ++b.warp_arrived[size_t(id)];
  release_if_complete(b, id);
  swapcontext(&me.ctx, &b.scheduler);
}

inline void fiber_entry() {
  Block& b = *t_block;
  b.body();
  Fiber& me = b.fibers[size_t(b.current)];
  me.state = Fiber::Done;
  const int w = b.current / 32;
  --b.alive;
  --b.warp_alive[size_t(w)];
  release_if_complete(b, kBlockBarrier);
  release_if_complete(b, w);
}  // returns to uc_link: the scheduler

// Runs body() as every thread of every block of the grid (blocks in order).
template <class F>
void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, F&& body) {
  if (block.x % 32 != 0 || block.y != 1 || block.z != 1) throw std::runtime_error("cusim: 1-D blocks of whole warps only");
  g_grid_dim = grid;
  g_block_dim = block;
  g_dynamic_smem.assign(dynamic_smem_bytes + 128, 0xCD);  // garbage, as on a device
  Block b;
  b.body = body;
  b.fibers.resize(block.x);
  b.warps.resize(block.x / 32);
  for (auto& f : b.fibers) f.stack.reset(new char[kStackBytes]);
  t_block = &b;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block = uint3{x, y, z};
        b.alive = int(block.x);
        b.block_arrived = 0;
        b.warp_alive.assign(block.x / 32, 32);
        b.warp_arrived.assign(block.x / 32, 0);
        for (auto& f : b.fibers) {
          f.state = Fiber::Runnable;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kStackBytes;
          f.ctx.uc_link = &b.scheduler;
          makecontext(&f.ctx, fiber_entry, 0);
        }
        for (;;) {
          bool ran = false, pending = false;
          for (unsigned t = 0; t < block.x; ++t) {
            Fiber& f = b.fibers[t];
            if (f.state == Fiber::Done) continue;
            pending = true;
            if (f.state != Fiber::Runnable) continue;
            b.current = int(t);
            t_thread = uint3{t, 0, 0};
            swapcontext(&b.scheduler, &f.ctx);
            ran = true;
          }
          if (!pending) break;
          if (!ran) {
            std::fprintf(stderr, "cusim: deadlock in block (%u, %u, %u): threads wait on barriers that cannot complete\n",
                         x, y, z);
            std::abort();
          }
        }
      }
  t_block = nullptr;
}

template <class T>
uint64_t to_bits(T v) {
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Publishes this lane's value to its warp and waits for all 32; call done() after reading.
inline void warp_barrier() { barrier(int(t_thread.x / 32)); }
inline const uint64_t* publish(uint64_t v) {
  Warp& w = warp();
  w.val[lane()] = v;
  warp_barrier();
  return w.val;
}
inline void done() { warp_barrier(); }

inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  Warp& w = warp();
  const int l = lane();
  w.ptr[l] = smem;
  warp_barrier();
  for (int j = 0; j < 4; ++j) {
    const uint8_t* row = static_cast<const uint8_t*>(w.ptr[j * 8 + l / 4]);
    std::memcpy(&r[j], row + (l % 4) * 4, 4);
  }
  done();
}

// Element k (byte offset kb) of row `row` of the A fragment, and of column `col` of B.
inline const uint8_t* a_byte(const Warp& w, int row, int kb) {
  const int reg = (row / 8) + 2 * (kb / 16);
  const int src = (row % 8) * 4 + (kb % 16) / 4;
  return reinterpret_cast<const uint8_t*>(&w.reg[src][reg]) + kb % 4;
}
inline const uint8_t* b_byte(const Warp& w, int col, int kb) {
  const int reg = 4 + kb / 16;
  const int src = col * 4 + (kb % 16) / 4;
  return reinterpret_cast<const uint8_t*>(&w.reg[src][reg]) + kb % 4;
}

template <class Acc, class Elem, int K>
void mma(Acc (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Warp& w = warp();
  const int l = lane();
  for (int i = 0; i < 4; ++i) w.reg[l][i] = a[i];
  w.reg[l][4] = b0;
  w.reg[l][5] = b1;
  warp_barrier();
  const int g = l / 4, t = l % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    Acc acc = d[e];
    for (int k = 0; k < K; ++k) {
      Elem x, y;
      std::memcpy(&x, a_byte(w, row, k * int(sizeof(Elem))), sizeof(Elem));
      std::memcpy(&y, b_byte(w, col, k * int(sizeof(Elem))), sizeof(Elem));
      if constexpr (std::is_same<Elem, __nv_bfloat16>::value)
        acc += __bfloat162float(x) * __bfloat162float(y);
      else
        acc += Acc(x) * Acc(y);
    }
    d[e] = acc;
  }
  done();
}

}  // namespace cusim

#undef __launch_bounds__
#define __launch_bounds__(...)
#define threadIdx (::cusim::t_thread)
#define blockIdx (::cusim::g_block)
#define blockDim (::cusim::g_block_dim)
#define gridDim (::cusim::g_grid_dim)

using std::isfinite;
using std::max;
using std::min;

inline void __syncthreads() { cusim::barrier(cusim::kBlockBarrier); }

inline unsigned __ballot_sync(unsigned, bool p) {
  const uint64_t* v = cusim::publish(p ? 1 : 0);
  unsigned m = 0;
  for (int i = 0; i < 32; ++i) m |= unsigned(v[i] & 1) << i;
  cusim::done();
  return m;
}
template <class T>
T __shfl_sync(unsigned, T x, int src) {
  const uint64_t* v = cusim::publish(cusim::to_bits(x));
  const T r = cusim::from_bits<T>(v[src & 31]);
  cusim::done();
  return r;
}
template <class T>
T __shfl_up_sync(unsigned, T x, unsigned delta) {
  const uint64_t* v = cusim::publish(cusim::to_bits(x));
  const int l = cusim::lane();
  const T r = l >= int(delta) ? cusim::from_bits<T>(v[l - int(delta)]) : x;
  cusim::done();
  return r;
}
template <class T>
T __shfl_xor_sync(unsigned, T x, int mask) {
  const uint64_t* v = cusim::publish(cusim::to_bits(x));
  const T r = cusim::from_bits<T>(v[(cusim::lane() ^ mask) & 31]);
  cusim::done();
  return r;
}
inline unsigned __match_any_sync(unsigned, unsigned x) {
  const uint64_t* v = cusim::publish(x);
  unsigned m = 0;
  for (int i = 0; i < 32; ++i) m |= unsigned(v[i] == x) << i;
  cusim::done();
  return m;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
  return c;
}
inline float __uint_as_float(unsigned u) { return cusim::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return unsigned(cusim::to_bits(f)); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int2float_rn(int v) { return float(v); }
inline float __double2float_rn(double v) { return float(v); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
template <class T>
T atomicMin(T* p, T v) {
  T cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v < cur && !__atomic_compare_exchange_n(p, &cur, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return cur;
}
