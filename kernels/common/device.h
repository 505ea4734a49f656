// Host-side view of the CUDA runtime for the core: plain C++ types, no CUDA headers.
#pragma once
#include <string>

namespace cliprt {
namespace cuda {
// Number of usable CUDA devices (0 when there is no driver or no device; never throws).
int device_count();
// "name (sm_XY, N MiB)" of a device, or the CUDA error string.
std::string device_name(int device);
}  // namespace cuda
}  // namespace cliprt
