// Row codecs on the device: one thread block per row (quant/encode_row.cuh).
#include "common/check.h"
#include "quant/encode.h"
#include "quant/encode_row.cuh"

namespace cliprt {
namespace cuda {
namespace {

__global__ void encode_kernel(Storage storage, const float* __restrict__ x, int dim, int row_bytes,
                              uint8_t* __restrict__ codes, float* __restrict__ scales) {
  const int64_t row = blockIdx.x;
  encode_row_block(storage, x + row * dim, dim, row_bytes, codes + row * row_bytes, scales + row);
}

}  // namespace

void encode_rows(const Layout& L, const float* x, int64_t n, std::vector<uint8_t>* codes,
                 std::vector<float>* scales) {
  const size_t rb = L.row_bytes();
  codes->assign(size_t(n) * rb, 0);
  scales->assign(size_t(n), 0.0f);
  if (n == 0) return;
  float* dx = nullptr;
  uint8_t* dc = nullptr;
  float* ds = nullptr;
  try {
    CLIPRT_CUDA_CHECK(cudaMalloc(&dx, size_t(n) * size_t(L.dim) * sizeof(float)));
    CLIPRT_CUDA_CHECK(cudaMalloc(&dc, size_t(n) * rb));
    CLIPRT_CUDA_CHECK(cudaMalloc(&ds, size_t(n) * sizeof(float)));
    CLIPRT_CUDA_CHECK(cudaMemcpy(dx, x, size_t(n) * size_t(L.dim) * sizeof(float), cudaMemcpyHostToDevice));
    encode_kernel<<<unsigned(n), kEncodeThreads>>>(L.storage, dx, L.dim, int(rb), dc, ds);
    CLIPRT_CUDA_CHECK_LAUNCH();
    CLIPRT_CUDA_CHECK(cudaMemcpy(codes->data(), dc, size_t(n) * rb, cudaMemcpyDeviceToHost));
    CLIPRT_CUDA_CHECK(cudaMemcpy(scales->data(), ds, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost));
  } catch (...) {
    cudaFree(dx);
    cudaFree(dc);
    cudaFree(ds);
    throw;
  }
  cudaFree(dx);
  cudaFree(dc);
  cudaFree(ds);
}

}  // namespace cuda
}  // namespace cliprt
