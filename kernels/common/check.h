// Every CUDA runtime call and kernel launch goes through CLIPRT_CUDA_CHECK: a failure throws
// cliprt::CudaError carrying file:line, the failed expression and the CUDA error string.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "cliprt/errors.h"

#define CLIPRT_CUDA_CHECK(expr)                                                               \
  do {                                                                                        \
    cudaError_t cliprt_err_ = (expr);                                                         \
    if (cliprt_err_ != cudaSuccess)                                                           \
      throw ::cliprt::CudaError(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                                #expr + ": " + cudaGetErrorString(cliprt_err_));              \
  } while (0)

// After a launch: reports launch-configuration errors immediately.
#define CLIPRT_CUDA_CHECK_LAUNCH() CLIPRT_CUDA_CHECK(cudaGetLastError())
