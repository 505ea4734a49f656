// Registers the device index (cliprt._core.CudaIndex) and its test hooks; registers nothing
// in a build without CUDA, where cliprt.build_info()["cuda"] is False.
#pragma once
#include <pybind11/pybind11.h>

#include "cliprt/features.h"

namespace cliprt {
void register_cuda_index(pybind11::module_& m);
}
