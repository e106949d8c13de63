// Kernels that check the emulator itself: that warp collectives compute what a GPU
// computes, and that what a GPU leaves undefined or refuses fails loudly here.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <string>

namespace {

__global__ void warp_sum_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x + 1);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) out[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = v;
}

__global__ void shuffles_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  out[4 * t + 0] = __shfl_sync(0xffffffffu, t, 3);
  out[4 * t + 1] = __shfl_up_sync(0xffffffffu, t, 1);
  out[4 * t + 2] = __shfl_xor_sync(0xffffffffu, t, 1);
  out[4 * t + 3] = static_cast<int>(__ballot_sync(0xffffffffu, t % 2 == 1));
}

// Each thread reads its right neighbour's slot: correct only with the barrier.
__global__ void neighbour_kernel(int* out, bool with_barrier) {
  __shared__ int slots[1024];
  slots[threadIdx.x] = static_cast<int>(threadIdx.x);
  if (with_barrier) __syncthreads();
  out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

__global__ void divergent_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void early_return_kernel(int* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void full_mask_kernel(int* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void assert_kernel(int* out) {
  CUDA_KERNEL_ASSERT(threadIdx.x != 5);
  out[threadIdx.x] = 1;
}

__global__ void __launch_bounds__(64) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

__global__ void out_of_bounds_kernel(int* out) { out[threadIdx.x + 1] = 1; }

__global__ void atomics_kernel(float* out) { atomicAdd(out, 1.0f); }

__global__ void types_kernel(float* out) {
  const float v = static_cast<float>(threadIdx.x) * 0.1f;
  const __half2 h = __floats2half2_rn(v, -v);
  const __nv_bfloat162 b = __floats2bfloat162_rn(v, -v);
  float4 q = make_float4(v, 2 * v, 3 * v, 4 * v);
  out[4 * threadIdx.x + 0] = __low2float(h);
  out[4 * threadIdx.x + 1] = __high2float(h);
  out[4 * threadIdx.x + 2] = __bfloat162float(b.x);
  out[4 * threadIdx.x + 3] = q.w;
}

}  // namespace

namespace grl_emu_selftest {

// Runs the self-test kernel `name` on `blocks` x `threads` writing into `out` (CPU).
void run(const std::string& name, const at::Tensor& out, int64_t blocks, int64_t threads) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  void* p = out.data_ptr();
  auto* i = static_cast<int*>(p);
  auto* f = static_cast<float*>(p);
  if (name == "warp_sum") {
    warp_sum_kernel<<<blocks, threads, 0, stream>>>(f);
  } else if (name == "shuffles") {
    shuffles_kernel<<<blocks, threads, 0, stream>>>(i);
  } else if (name == "neighbour") {
    neighbour_kernel<<<blocks, threads, 0, stream>>>(i, false);
  } else if (name == "neighbour_synced") {
    neighbour_kernel<<<blocks, threads, 0, stream>>>(i, true);
  } else if (name == "divergent") {
    divergent_kernel<<<blocks, threads, 0, stream>>>(i);
  } else if (name == "early_return") {
    early_return_kernel<<<blocks, threads, 0, stream>>>(i);
  } else if (name == "full_mask") {
    full_mask_kernel<<<blocks, threads, 0, stream>>>(i);
  } else if (name == "assert") {
    assert_kernel<<<blocks, threads, 0, stream>>>(i);
  } else if (name == "bounded") {
    bounded_kernel<<<blocks, threads, 0, stream>>>(i);
  } else if (name == "out_of_bounds") {
    out_of_bounds_kernel<<<blocks, threads, 0, stream>>>(i);
  } else if (name == "atomics") {
    atomics_kernel<<<blocks, threads, 0, stream>>>(f);
  } else if (name == "types") {
    types_kernel<<<blocks, threads, 0, stream>>>(f);
  } else if (name == "unchecked") {
    atomics_kernel<<<blocks, threads, 0, stream>>>(f);
    return;  // no launch check: the emulator must complain
  } else {
    TORCH_CHECK(false, "unknown self-test ", name);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace grl_emu_selftest
