// A CUDA execution model for the host, so that CUDA kernels written for nvcc run on
// a GPU-less machine under ASan/UBSan. build.py force-includes this header into each
// .cu file (compiled as C++) and rewrites three constructs the preprocessor cannot:
//   kernel<<<grid, block, smem, stream>>>(args)  ->  ::grl_emu::Launch(...)(kernel, args)
//   __shared__ T name[N];                        ->  a reference into the block's shared arena
//   the first statement of each __global__ body  ->  ::grl_emu::kernel_entry(launch bounds)
// Each CUDA thread of a block runs as a fiber (its own stack); the blocks of a grid run
// one after another. Between two synchronisation points (__syncthreads, a warp
// collective) a fiber runs alone, in an order the schedule picks (forward, reverse or
// a seeded shuffle of threads, and of blocks), so a missing barrier or a read of a
// neighbour's slot before it is written changes the answer under some schedule.
// Everything that a GPU would reject or leave undefined fails loudly with a message:
// a barrier not reached by every live thread of the block, a warp collective whose
// mask names lanes that are not there, a bad launch configuration, a launch that
// exceeds __launch_bounds__, a launch that is never checked, a failed device assert.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- built-in types and variables -----------------------------------------------------------

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };

namespace grl_emu {
// The running fiber's coordinates. One emulated launch runs at a time (a lock is held).
extern uint3 g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;
}  // namespace grl_emu

#define threadIdx (static_cast<const ::uint3&>(::grl_emu::g_thread_idx))
#define blockIdx (static_cast<const ::uint3&>(::grl_emu::g_block_idx))
#define blockDim (static_cast<const ::dim3&>(::grl_emu::g_block_dim))
#define gridDim (static_cast<const ::dim3&>(::grl_emu::g_grid_dim))
constexpr int warpSize = 32;

// Function and variable qualifiers: host code now.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Every __shared__ declaration is rewritten by build.py; one left over is an error.
#define __shared__ __shared___declaration_not_rewritten_by_build_py

// ---- the runtime (cuda_emu.cpp) ---------------------------------------------------------------

namespace grl_emu {

// Called at the top of every kernel body (inserted by build.py): checks the launch
// against __launch_bounds__ (0: none declared).
void kernel_entry(int max_threads, const char* kernel, const char* file, int line);
void syncthreads(const char* file, int line);
// The block's copy of one __shared__ variable: allocated (exact size, poisoned with
// 0xff bytes, so a read before any write gives NaN / all-ones) by the first thread
// that reaches the declaration, freed when the block ends.
void* block_shared(const char* file, int line, std::size_t bytes, std::size_t align);
[[noreturn]] void device_assert_fail(const char* cond, const char* file, int line, const char* func);
[[noreturn]] void device_error(const char* what);

// Warp collectives: every lane named in `mask` deposits `value`, waits for the others,
// and gets back what `op` computes (see cuda_emu.cpp).
enum class WarpOp { Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, Sync };
std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width, const char* file,
                              int line);
unsigned active_mask();

struct KernelCall {
  void (*invoke)(void* ctx);
  void* ctx;
};
// Runs one launch. A configuration error is recorded for the launch check, as
// cudaGetLastError would report it; an error inside the kernel throws here.
void run_launch(const char* name, dim3 grid, dim3 block, std::size_t dynamic_smem, KernelCall call);
cudaError_t get_last_error(bool clear);
const char* error_string(cudaError_t err);
void launch_check(const char* file, int line);

// kernel<<<grid, block, smem, stream>>>(args...) becomes Launch(name, grid, block, smem, stream)(kernel, args...).
struct Launch {
  const char* name;
  dim3 grid, block;
  std::size_t smem;
  Launch(const char* kernel_name, dim3 g, dim3 b, std::size_t shared_bytes = 0, cudaStream_t = nullptr)
      : name(kernel_name), grid(g), block(b), smem(shared_bytes) {}

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), Args&&... args) const {
    static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
    // As on a device: the arguments are converted to the parameter types once, at
    // the launch, and every thread gets its own copy.
    struct Frame {
      void (*kernel)(Params...);
      std::tuple<std::decay_t<Params>...> params;
    } frame{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    KernelCall call{[](void* ctx) {
                      auto* f = static_cast<Frame*>(ctx);
                      std::tuple<std::decay_t<Params>...> mine = f->params;
                      std::apply(f->kernel, mine);
                    },
                    &frame};
    run_launch(name, grid, block, smem, call);
  }
};

template <typename T>
std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(std::uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace grl_emu

#define __syncthreads() ::grl_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::grl_emu::warp_collective(::grl_emu::WarpOp::Sync, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 0xffffffffu, 0, 0, 32, __FILE__, __LINE__)
#define __shfl_sync(mask, var, lane, ...) ::grl_emu_shfl(::grl_emu::WarpOp::Shfl, mask, var, lane, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(mask, var, delta, ...) ::grl_emu_shfl(::grl_emu::WarpOp::ShflUp, mask, var, delta, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(mask, var, delta, ...) ::grl_emu_shfl(::grl_emu::WarpOp::ShflDown, mask, var, delta, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, var, lane_mask, ...) ::grl_emu_shfl(::grl_emu::WarpOp::ShflXor, mask, var, lane_mask, __FILE__, __LINE__, ##__VA_ARGS__)
#define __ballot_sync(mask, pred) static_cast<unsigned>(::grl_emu::warp_collective(::grl_emu::WarpOp::Ballot, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) static_cast<int>(::grl_emu::warp_collective(::grl_emu::WarpOp::Any, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, pred) static_cast<int>(::grl_emu::warp_collective(::grl_emu::WarpOp::All, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __activemask() ::grl_emu::active_mask()

template <typename T>
T grl_emu_shfl(::grl_emu::WarpOp op, unsigned mask, T var, int lane, const char* file, int line, int width = 32) {
  return ::grl_emu::from_bits<T>(::grl_emu::warp_collective(op, mask, ::grl_emu::to_bits(var), lane, width, file, line));
}

// A failed device assert stops the launch with the condition and the thread's coordinates.
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) \
  if (C10_UNLIKELY(!(cond))) ::grl_emu::device_assert_fail(#cond, __FILE__, __LINE__, __func__)
#undef CUDA_KERNEL_ASSERT_MSG
#define CUDA_KERNEL_ASSERT_MSG(cond, msg) \
  if (C10_UNLIKELY(!(cond))) ::grl_emu::device_assert_fail(msg, __FILE__, __LINE__, __func__)

// ---- intrinsics -------------------------------------------------------------------------------

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics: only one fiber runs at a time and none is switched out inside these, so a
// plain read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* address, T val) {
  T old = *address;
  *address = old + val;
  return old;
}
template <typename T>
inline T atomicSub(T* address, T val) {
  T old = *address;
  *address = old - val;
  return old;
}
template <typename T>
inline T atomicMax(T* address, T val) {
  T old = *address;
  *address = old < val ? val : old;
  return old;
}
template <typename T>
inline T atomicMin(T* address, T val) {
  T old = *address;
  *address = val < old ? val : old;
  return old;
}
template <typename T>
inline T atomicExch(T* address, T val) {
  T old = *address;
  *address = val;
  return old;
}
template <typename T>
inline T atomicCAS(T* address, T compare, T val) {
  T old = *address;
  if (old == compare) *address = val;
  return old;
}
inline void __threadfence() {}
inline void __threadfence_block() {}

inline float __expf(float x) { return ::expf(x); }
inline float __logf(float x) { return ::logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// ---- vector types -----------------------------------------------------------------------------

#define GRL_EMU_VEC2(T, NAME, ALIGN)      \
  struct alignas(ALIGN) NAME {            \
    T x, y;                               \
  };                                      \
  inline NAME make_##NAME(T x, T y) { return NAME{x, y}; }
#define GRL_EMU_VEC4(T, NAME, ALIGN)      \
  struct alignas(ALIGN) NAME {            \
    T x, y, z, w;                         \
  };                                      \
  inline NAME make_##NAME(T x, T y, T z, T w) { return NAME{x, y, z, w}; }
GRL_EMU_VEC2(float, float2, 8)
GRL_EMU_VEC4(float, float4, 16)
GRL_EMU_VEC2(double, double2, 16)
GRL_EMU_VEC2(int, int2, 8)
GRL_EMU_VEC4(int, int4, 16)
GRL_EMU_VEC2(unsigned, uint2, 8)
GRL_EMU_VEC4(unsigned, uint4, 16)
#undef GRL_EMU_VEC2
#undef GRL_EMU_VEC4

// ---- half and bfloat16 (cuda_fp16.h / cuda_bf16.h), rounding to nearest even ----------------

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline float2 __half22float2(__half2 h) { return float2{static_cast<float>(h.x), static_cast<float>(h.y)}; }
inline __half2 __float22half2_rn(float2 f) { return __half2{__half(f.x), __half(f.y)}; }
inline float __low2float(__half2 h) { return static_cast<float>(h.x); }
inline float __high2float(__half2 h) { return static_cast<float>(h.y); }
inline __half __hadd(__half a, __half b) { return __half(static_cast<float>(a) + static_cast<float>(b)); }
inline __half __hmul(__half a, __half b) { return __half(static_cast<float>(a) * static_cast<float>(b)); }
inline __half __hneg(__half a) { return __half(-static_cast<float>(a)); }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __nv_bfloat162{__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
  return float2{static_cast<float>(h.x), static_cast<float>(h.y)};
}

// ---- runtime API used by host code ------------------------------------------------------------

inline cudaError_t cudaGetLastError() { return ::grl_emu::get_last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return ::grl_emu::get_last_error(false); }
inline const char* cudaGetErrorString(cudaError_t err) { return ::grl_emu::error_string(err); }
