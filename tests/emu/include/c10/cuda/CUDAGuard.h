// Emulator stand-in for c10/cuda/CUDAGuard.h. The emulated device is the CPU, so the
// guards accept the CPU device (the tensors the emulated kernels get are CPU tensors).
#pragma once
#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <optional>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(Device device) {
    TORCH_CHECK(device.is_cpu() || device.is_cuda(), "CUDAGuard (emulated) got a ", device, " device");
  }
  explicit CUDAGuard(DeviceIndex) {}
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};
struct OptionalCUDAGuard {
  OptionalCUDAGuard() = default;
  explicit OptionalCUDAGuard(std::optional<Device>) {}
  explicit OptionalCUDAGuard(Device) {}
  void set_device(Device) {}
  void set_index(DeviceIndex) {}
};
}  // namespace cuda
}  // namespace c10
