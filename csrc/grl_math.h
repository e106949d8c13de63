// The arithmetic of every grl_cuda op, written once. Both backends include this
// header, so the CPU tests exercise exactly the formulas the CUDA kernels run.
#pragma once

#include <c10/macros/Macros.h>
#include <cmath>

#if defined(__CUDACC__)
#define GRL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GRL_HOST_DEVICE inline
#endif

namespace grl_cuda {
namespace math {

// Gradient reversal: d(out)/d(in) = -lambda. One multiply in the op's accumulate
// type (float for half/bfloat16), never neg() followed by mul().
template <typename opmath_t>
GRL_HOST_DEVICE opmath_t reverse(opmath_t grad, opmath_t lambda) {
  return grad * (-lambda);
}

// Numerically stable pieces of binary cross-entropy with logits, for a logit z
// and a label y in {0, 1}:
//   loss(z, y) = max(z, 0) - z * y + log1p(exp(-|z|))     (finite for any finite z)
//   dloss/dz   = sigmoid(z) - y
// The same forms PyTorch uses, so results match F.binary_cross_entropy_with_logits.
template <typename opmath_t>
GRL_HOST_DEVICE opmath_t sigmoid(opmath_t z) {
  // exp of a non-positive argument only: never overflows.
  if (z >= opmath_t(0)) {
    return opmath_t(1) / (opmath_t(1) + ::exp(-z));
  }
  const opmath_t e = ::exp(z);
  return e / (opmath_t(1) + e);
}

template <typename opmath_t>
GRL_HOST_DEVICE opmath_t bce_with_logits(opmath_t z, opmath_t y) {
  const opmath_t relu_z = z > opmath_t(0) ? z : opmath_t(0);
  const opmath_t abs_z = z < opmath_t(0) ? -z : z;
  return relu_z - z * y + ::log1p(::exp(-abs_z));
}

template <typename opmath_t>
GRL_HOST_DEVICE opmath_t bce_with_logits_grad(opmath_t z, opmath_t y) {
  return sigmoid(z) - y;
}

// The domain classifier predicts "target" (label 1) when its logit is positive.
// NaN logits count as misses.
template <typename opmath_t>
GRL_HOST_DEVICE bool bce_hit(opmath_t z, bool is_target) {
  return is_target ? (z > opmath_t(0)) : (z <= opmath_t(0));
}

}  // namespace math
}  // namespace grl_cuda
