// Device memory of a DeviceIndex, by row: codes (pitch bytes), scales (i8, b1), ids,
// float32 originals (when kept) and the deletion bitmap (32-bit words).
#pragma once
#include "common/cuda_host.h"
#include "index/device_index.h"

namespace cliprt {
namespace cuda {

struct DeviceIndex::Arrays {
  DeviceBytes codes, scales, ids, orig, deleted;
  const uint8_t* codes_ptr() const { return codes.data(); }
  const float* scales_ptr() const { return reinterpret_cast<const float*>(scales.data()); }
  const int64_t* ids_ptr() const { return reinterpret_cast<const int64_t*>(ids.data()); }
  const float* orig_ptr() const { return reinterpret_cast<const float*>(orig.data()); }
  const uint32_t* deleted_ptr() const { return reinterpret_cast<const uint32_t*>(deleted.data()); }
};

}  // namespace cuda
}  // namespace cliprt
