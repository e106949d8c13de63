// Emulator stand-in for c10/cuda/CUDAException.h: the launch check reports what the
// emulated launch recorded (a bad configuration), as cudaGetLastError would.
#pragma once
#include <c10/util/Exception.h>

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::grl_emu::launch_check(__FILE__, __LINE__)
#define C10_CUDA_CHECK(EXPR)                                                                      \
  do {                                                                                           \
    const cudaError_t grl_emu_err = (EXPR);                                                      \
    TORCH_CHECK(grl_emu_err == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(grl_emu_err)); \
  } while (0)
#define C10_CUDA_CHECK_WARN(EXPR) (void)(EXPR)
