// Launchers of the scan kernels. Geometry: one wave of resident CTAs, each owning a
// contiguous run of row tiles, blockIdx.x the query tile so CTAs reading the same rows run
// side by side and share L2. The generated instantiation files include this header.
#pragma once
#include <algorithm>
#include <atomic>
#include <string>

#include "common/check.h"
#include "common/cuda_host.h"
#include "search/scan_mma.cuh"
#include "search/scan_simt.cuh"

namespace cliprt {
namespace cuda {
namespace scan_detail {

constexpr int kMaxDevices = 64;

// Launch geometry for a kernel: raises its dynamic shared memory limit and reads its
// occupancy once per device.
struct KernelSlot {
  std::atomic<int> occupancy[kMaxDevices] = {};
};

template <class Kernel>
int prepare_kernel(KernelSlot& slot, Kernel kernel, int threads, int smem, int device) {
  CLIPRT_ASSERT(device >= 0 && device < kMaxDevices);
  int occ = slot.occupancy[device].load(std::memory_order_relaxed);
  if (occ > 0) return occ;
  CLIPRT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  CLIPRT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, threads, smem));
  if (occ <= 0)
    throw CudaError("scan kernel cannot run on this device (" + std::to_string(smem) +
                    " bytes of shared memory per block)");
  slot.occupancy[device].store(occ, std::memory_order_relaxed);
  return occ;
}

struct Geometry {
  dim3 grid;
  int64_t tiles_per_cta = 0;
};

inline Geometry geometry(int64_t n, int rows_per_tile, int nq, int queries_per_tile, int occupancy, int device) {
  const int64_t ntiles = (n + rows_per_tile - 1) / rows_per_tile;
  const int64_t nqt = (nq + queries_per_tile - 1) / queries_per_tile;
  const int64_t target = int64_t(sm_count(device)) * occupancy;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(ntiles, (target + nqt - 1) / nqt));
  Geometry g;
  g.tiles_per_cta = (ntiles + splits - 1) / splits;
  splits = (ntiles + g.tiles_per_cta - 1) / g.tiles_per_cta;
  g.grid = dim3(unsigned(nqt), unsigned(splits), 1);
  return g;
}

}  // namespace scan_detail

namespace simt {

template <Storage S, int QT>
void run(const ScanParams& p, int device, cudaStream_t stream) {
  using namespace scan_detail;
  if (p.n == 0 || p.nq == 0) return;
  static KernelSlot slot;
  constexpr int smem = smem_bytes<S, QT>();
  const int occ = prepare_kernel(slot, scan_kernel<S, QT>, kThreads, smem, device);
  const Geometry g = geometry(p.n, kRows, p.nq, QT, occ, device);
  scan_kernel<S, QT><<<g.grid, kThreads, smem, stream>>>(p, g.tiles_per_cta);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

}  // namespace simt

namespace mma {

template <Storage S, int BM>
void run(const ScanParams& p, int device, cudaStream_t stream) {
  using namespace scan_detail;
  if (p.n == 0 || p.nq == 0) return;
  static KernelSlot slot;
  constexpr int smem = Cfg<S, BM>::kSmem;
  const int occ = prepare_kernel(slot, scan_kernel<S, BM>, kThreads, smem, device);
  const Geometry g = geometry(p.n, kRows, p.nq, BM, occ, device);
  scan_kernel<S, BM><<<g.grid, kThreads, smem, stream>>>(p, g.tiles_per_cta);
  CLIPRT_CUDA_CHECK_LAUNCH();
}

}  // namespace mma
}  // namespace cuda
}  // namespace cliprt
