// The fused loss's float loop compiled for AVX2 + FMA (8 lanes instead of SSE2's
// 4). The shared math header is included inside a namespace of its own, so these
// AVX2 copies of its inline functions can never be linked in place of the
// baseline ones; kernels_cpu.cpp calls this only on CPUs that have AVX2 and FMA.
#if defined(__x86_64__) && defined(__GNUC__)
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#pragma GCC target("avx2,fma")

namespace grl_cuda_avx2 {
#include "../grl_math.h"
}  // namespace grl_cuda_avx2

namespace grl_cuda {

void bce_span_float_avx2(const float* __restrict__ z_ptr, float* __restrict__ g_ptr, float* __restrict__ loss,
                         float* __restrict__ hit, int len, bool is_target, float w) {
  namespace math = grl_cuda_avx2::grl_cuda::math;
  const float y = is_target ? 1.0f : 0.0f;
  for (int j = 0; j < len; ++j) {
    const float z = z_ptr[j];
    float l, g;
    math::bce_with_logits(z, y, l, g);
    g_ptr[j] = w * g;
    loss[j] = w * l;
    hit[j] = math::bce_hit(z, is_target) ? 1.0f : 0.0f;
  }
}

}  // namespace grl_cuda
#endif
