// Emulator stand-in for c10/cuda/CUDAStream.h: one stream, the null stream.
#pragma once
#include <c10/core/Device.h>

namespace c10 {
namespace cuda {
class CUDAStream {
 public:
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
  DeviceIndex device_index() const { return 0; }
};
inline CUDAStream getCurrentCUDAStream(DeviceIndex = -1) { return CUDAStream(); }
inline CUDAStream getDefaultCUDAStream(DeviceIndex = -1) { return CUDAStream(); }
}  // namespace cuda
}  // namespace c10
