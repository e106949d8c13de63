// The fused loss's float loop (bce_span.h) compiled for AVX2 + FMA (8 lanes instead
// of SSE2's 4). The shared headers are included inside a namespace of their own, so
// these AVX2 copies of their inline functions can never be linked in place of the
// baseline ones; kernels_cpu.cpp calls this only on CPUs that have AVX2 and FMA.
#if defined(__x86_64__) && defined(__GNUC__)
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#pragma GCC target("avx2,fma")

namespace grl_cuda_avx2 {
#include "../grl_math.h"
#include "bce_span.h"
}  // namespace grl_cuda_avx2

namespace grl_cuda {

void bce_span_float_avx2(const float* z_ptr, float* g_ptr, float* loss, float* hit, int len, bool is_target,
                         float w) {
  grl_cuda_avx2::grl_cuda::bce_span<float, float>(z_ptr, g_ptr, loss, hit, len, is_target, w);
}

}  // namespace grl_cuda
#endif
