// The fused losses' CPU loops (bce_span.h, cross_entropy_rows.h) compiled for AVX2 +
// FMA (8 float lanes instead of SSE2's 4), for float and, converting in registers,
// float16 and bfloat16. The shared headers are included inside a namespace of their
// own, so these AVX2 copies of their inline functions can never be linked in place
// of the baseline ones; kernels_cpu.cpp calls these only on CPUs that have AVX2 and FMA.
#if defined(__x86_64__) && defined(__GNUC__)
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#pragma GCC target("avx2,fma,f16c")

namespace grl_cuda_avx2 {
#include "../grl_math.h"
#include "bce_span.h"
#include "cross_entropy_rows.h"
}  // namespace grl_cuda_avx2

namespace grl_cuda {

#define GRL_AVX2_INSTANTIATE(scalar_t, suffix)                                                                      \
  void bce_chunk_avx2(const scalar_t* z, scalar_t* g, scalar_t* l, int64_t begin, int64_t stop,                     \
                      int64_t first_target, float w_src, float w_tgt, double& loss_sum, int64_t& hits) {            \
    grl_cuda_avx2::grl_cuda::bce_chunk<scalar_t, float>(z, g, l, begin, stop, first_target, w_src, w_tgt, loss_sum, \
                                                        hits);                                                      \
  }                                                                                                                 \
  void cross_entropy_rows_avx2(const scalar_t* z, const int64_t* ids, int64_t k, int64_t row_begin,                 \
                               int64_t row_end, scalar_t* grad, scalar_t* loss_out, float* work, double& loss_sum,  \
                               int64_t& hits, int64_t& id_min, int64_t& id_max) {                                   \
    grl_cuda_avx2::grl_cuda::cpu::cross_entropy_rows<scalar_t, float>(z, ids, k, row_begin, row_end, grad,          \
                                                                      loss_out, work, loss_sum, hits, id_min,       \
                                                                      id_max);                                      \
  }

GRL_AVX2_INSTANTIATE(float, f32)
GRL_AVX2_INSTANTIATE(c10::Half, f16)
GRL_AVX2_INSTANTIATE(c10::BFloat16, bf16)
#undef GRL_AVX2_INSTANTIATE

}  // namespace grl_cuda
#endif
