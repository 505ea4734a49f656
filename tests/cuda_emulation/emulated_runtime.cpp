// The CUDA runtime calls and kernel launchers the device index uses, emulated on the CPU
// (tests/cuda_emulation/cusim.h): one device, host memory as device memory, every stream
// synchronous. Linked instead of cudart and the launcher translation units, it lets the
// whole DeviceIndex (host orchestration included) run on a machine without a GPU.
// Launch geometry differs from the real launchers (fewer CTAs), which the kernels allow.
#include "cusim.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "cliprt/errors.h"
#include "index/layout.h"
#include "index/layout_kernels.cuh"
#include "index/prepare.h"
#include "quant/encode.h"
#include "quant/encode_row.cuh"
#include "index/prepare_kernel.cuh"
#include "search/rescore.h"
#include "search/rescore_kernel.cuh"
#include "search/scan_mma.cuh"
#include "search/scan_simt.cuh"
#include "topk/select.h"
#include "topk/select_kernels.cuh"

namespace {
std::mutex g_launch_mu;  // cusim runs one grid at a time
int g_current_device = 0;
}  // namespace

extern "C" {

cudaError_t cudaGetDevice(int* device) {
  *device = g_current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  g_current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int) {
  std::memset(prop, 0, sizeof *prop);
  std::strcpy(prop->name, "cusim");
  prop->major = 9;
  prop->totalGlobalMem = size_t(1) << 30;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr, int) {
  *value = 2;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
  *pool = nullptr;
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, enum cudaMemPoolAttr, void*) { return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  *s = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) {
  *e = reinterpret_cast<cudaEvent_t>(new char);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<char*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(std::max<size_t>(n, 1));
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, enum cudaMemcpyKind) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, enum cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, n, kind);
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }

}  // extern "C"

namespace cliprt {
namespace cuda {

namespace {
unsigned blocks_for(int64_t n, int per) { return unsigned(std::max<int64_t>(1, std::min<int64_t>((n + per - 1) / per, 8))); }
}  // namespace

namespace simt {
template <Storage S, int QT>
void run(const ScanParams& p, int, cudaStream_t) {
  if (p.n == 0 || p.nq == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  const int64_t ntiles = (p.n + kRows - 1) / kRows;
  const int64_t tpc = std::max<int64_t>(1, (ntiles + 2) / 3);  // up to three row splits
  const dim3 grid(unsigned((p.nq + QT - 1) / QT), unsigned((ntiles + tpc - 1) / tpc));
  cusim::launch(grid, dim3(kThreads), smem_bytes<S, QT>(), [&] { scan_kernel<S, QT>(p, tpc); });
}
}  // namespace simt

namespace mma {
template <Storage S, int BM>
void run(const ScanParams& p, int, cudaStream_t) {
  if (p.n == 0 || p.nq == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  const int64_t ntiles = (p.n + kRows - 1) / kRows;
  const int64_t tpc = std::max<int64_t>(1, (ntiles + 2) / 3);
  const dim3 grid(unsigned((p.nq + BM - 1) / BM), unsigned((ntiles + tpc - 1) / tpc));
  cusim::launch(grid, dim3(kThreads), Cfg<S, BM>::kSmem, [&] { scan_kernel<S, BM>(p, tpc); });
}
}  // namespace mma

#define CLIPRT_SCAN_INSTANCE(family, storage, tile) \
  template void family::run<Storage::storage, tile>(const ScanParams&, int, cudaStream_t);
#include "search/scan_instances.def"

void encode_rows(const Layout& L, const float* x, int64_t n, std::vector<uint8_t>* codes, std::vector<float>* scales) {
  const size_t rb = L.row_bytes();
  codes->assign(size_t(n) * rb, 0);
  scales->assign(size_t(n), 0.0f);
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(unsigned(n)), dim3(kEncodeThreads), 0, [&] {
    const int64_t row = blockIdx.x;
    encode_row_block(L.storage, x + row * L.dim, L.dim, int(rb), codes->data() + row * rb, scales->data() + row);
  });
}

void launch_prepare_rows(const PrepareParams& p, cudaStream_t) {
  if (p.n == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(unsigned(p.n)), dim3(kEncodeThreads), 0, [&] { prepare_detail::prepare_rows_kernel(p); });
}

void launch_rescore(const RescoreParams& p, cudaStream_t) {
  const int64_t warps = int64_t(p.nq) * p.kc;
  if (warps == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  const int64_t blocks = (warps + rescore_detail::kWarpsPerBlock - 1) / rescore_detail::kWarpsPerBlock;
  cusim::launch(dim3(unsigned(blocks)), dim3(rescore_detail::kWarpsPerBlock * 32), 0,
                [&] { rescore_detail::rescore_kernel(p); });
}

void launch_kth_threshold(const CandidateLists& c, int64_t k, float* thresh, cudaStream_t) {
  if (c.nq == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(unsigned(c.nq)), dim3(select_detail::kThreads), 0,
                [&] { select_detail::kth_threshold_kernel(c, k, thresh); });
}

void launch_block_topk(const CandidateLists& c, int64_t k, const int64_t* ids, const TopKOut& out, unsigned int* overflow,
                       cudaStream_t) {
  if (k < 1 || k > kBlockTopKMax) throw Error("internal error: block top-k past its k range");
  if (c.nq == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(unsigned(c.nq)), dim3(select_detail::kThreads), 0,
                [&] { select_detail::block_topk_kernel(c, k, ids, out, overflow); });
}

void launch_fill_empty(const TopKOut& out, int nq, int64_t k, cudaStream_t) {
  if (int64_t(nq) * k == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(blocks_for(int64_t(nq) * k, 256)), dim3(256), 0, [&] { select_detail::fill_empty_kernel(out, nq, k); });
}

void launch_fill_value(float* p, int64_t n, float v, cudaStream_t) {
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(blocks_for(n, 256)), dim3(256), 0, [&] { select_detail::fill_value_kernel(p, n, v); });
}

// The CUB path's contract, by a stable sort on the host: (score desc, id asc) per query.
void large_topk(const CandidateLists& c, const std::vector<unsigned int>& counts, int64_t k, const int64_t* ids,
                const TopKOut& out, cudaStream_t) {
  for (int q = 0; q < c.nq; ++q) {
    std::vector<unsigned long long> e(c.cand + int64_t(q) * c.cap, c.cand + int64_t(q) * c.cap + counts[size_t(q)]);
    std::stable_sort(e.begin(), e.end(), [&](unsigned long long a, unsigned long long b) {
      const uint32_t ka = candidate_key(a), kb = candidate_key(b);
      return ka > kb || (ka == kb && ids[candidate_row(a)] < ids[candidate_row(b)]);
    });
    for (int64_t j = 0; j < k; ++j) {
      const int64_t o = int64_t(q) * out.ld + j;
      const bool has = j < int64_t(e.size());
      if (out.scores) out.scores[o] = has ? key_score(candidate_key(e[size_t(j)])) : -INFINITY;
      if (out.ids) out.ids[o] = has ? ids[candidate_row(e[size_t(j)])] : -1;
      if (out.rows) out.rows[o] = has ? candidate_row(e[size_t(j)]) : 0xffffffffu;
    }
  }
}

void launch_unpack_rows(const Layout& L, const uint8_t* packed, int64_t rows, uint8_t* dst, int64_t pitch, cudaStream_t) {
  if (rows == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(blocks_for(rows * L.ngroups, 256)), dim3(256), 0,
                [&] { layout_detail::unpack_kernel(packed, rows, L.ngroups, L.group_bytes, dst, pitch); });
}

void launch_pack_rows(const Layout& L, const uint8_t* src, int64_t pitch, int64_t rows, uint8_t* packed, cudaStream_t) {
  if (rows == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(blocks_for(rows * L.ngroups, 256)), dim3(256), 0,
                [&] { layout_detail::pack_kernel(src, pitch, rows, L.ngroups, L.group_bytes, packed); });
}

void launch_gather_rows(const uint8_t* src, int64_t src_pitch, const uint32_t* rows, int64_t n, int64_t width,
                        uint8_t* dst, cudaStream_t) {
  if (n == 0 || width == 0) return;
  std::lock_guard<std::mutex> lock(g_launch_mu);
  cusim::launch(dim3(blocks_for(n * width, 256)), dim3(256), 0,
                [&] { layout_detail::gather_kernel(src, src_pitch, rows, n, width, dst); });
}

}  // namespace cuda
}  // namespace cliprt
