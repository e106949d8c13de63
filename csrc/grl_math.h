// The arithmetic of every grl_cuda op, written once. Both backends include this
// header, so the CPU tests exercise the formulas the CUDA kernels run. One
// difference, on purpose: for float, the CPU computes exp and log1p with the
// branch-free approximations below (so its loops vectorise) while the GPU calls
// its own expf/log1pf. Measured over every float they see (tools/ulp_cpu_math.sh):
// the CPU's exp_nonpositive is within 1 ulp of the correctly rounded value on
// [-87, 0] and log1p_unit within 3 ulp on [0, 1]; CUDA documents 2 ulp for expf
// and 1 ulp for log1pf. So the backends' exp differ by at most 3 ulp and their
// log1p by at most 4 ulp; double and the reversal's scale are identical. The K-way
// loss's CPU log of the row sum (cpu/cross_entropy_rows.h: log_at_least_one) is
// within 3 ulp on [1, 2^24] (same tool; CUDA's logf: 1 ulp).
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

// Binary cross-entropy with logits for a logit z and a label y in {0, 1}, in the
// stable form PyTorch uses:
//   loss(z, y) = max(z, 0) - z * y + log1p(exp(-|z|))     (finite for any finite z)
//   dloss/dz   = sigmoid(z) - y
// Both come from one e = exp(-|z|) in (0, 1]:
//   log1p(e) = 2 atanh(s), s = e / (2 + e) in (0, 1/3]   (exact s even for tiny e)
//   sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) otherwise.
// For float the exponential and the atanh series are written branch-free, so the
// CPU loop vectorises (libm's expf/log1pf calls do not); on the GPU and for
// double the platform's functions are used.

// exp(x) for x <= 0 in float: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], a
// degree-6 polynomial (within 1 ulp, see the top of this file); x below -87 returns ~1.6e-38 (the
// callers only add it to 1 or use it as a tiny ratio).
GRL_HOST_DEVICE float exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  x = x < -87.0f ? -87.0f : x;  // (NaN passes through: every comparison below is false)
  // n = round(x / ln2) by the 1.5 * 2^23 trick: plain adds, so the loop vectorises
  // without SSE4.1's round instruction (a floorf call would not).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln2 split in two for an exact reduction
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;  // Cephes expf coefficients
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int bits = (static_cast<int>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  return p * __builtin_bit_cast(float, bits);
#endif
}

GRL_HOST_DEVICE double exp_nonpositive(double x) { return ::exp(x); }

// log1p(e) for e in [0, 1] via 2 atanh(e / (2 + e)): odd series in s, |s| <= 1/3,
// terms to s^17 (truncation error < 1e-8 relative at e = 1; with float rounding
// the result is within 3 ulp, see the top of this file).
GRL_HOST_DEVICE float log1p_unit(float e) {
#if defined(__CUDA_ARCH__)
  return ::log1pf(e);
#else
  const float s = e / (2.0f + e);
  const float s2 = s * s;
  float p = 1.0f / 17.0f;
  p = p * s2 + 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
#endif
}

GRL_HOST_DEVICE double log1p_unit(double e) { return ::log1p(e); }

// Loss and gradient of one element, sharing one exponential.
template <typename opmath_t>
GRL_HOST_DEVICE void bce_with_logits(opmath_t z, opmath_t y, opmath_t& loss, opmath_t& grad) {
  const opmath_t neg_abs = z < opmath_t(0) ? z : -z;
  const opmath_t e = exp_nonpositive(neg_abs);
  const opmath_t relu_z = z > opmath_t(0) ? z : opmath_t(0);
  loss = relu_z - z * y + log1p_unit(e);
  const opmath_t inv = opmath_t(1) / (opmath_t(1) + e);
  grad = (z >= opmath_t(0) ? inv : e * inv) - y;
}

// The domain classifier predicts "target" (label 1) when its logit is positive.
// NaN logits count as misses.
template <typename opmath_t>
GRL_HOST_DEVICE bool bce_hit(opmath_t z, bool is_target) {
  return is_target ? (z > opmath_t(0)) : (z <= opmath_t(0));
}

// Softmax cross-entropy of one row of K logits (stride `stride` between them)
// against the class `label`, for the K-way domain loss:
//   loss = logsumexp(z) - z[label],  dloss/dz_k = softmax(z)_k - [k == label]
// The gradient goes to `grad` (same stride); returns whether the row's argmax is
// `label` (first maximum wins, NaN rows miss). A label outside [0, K) gives NaN.
template <typename scalar_t, typename opmath_t>
GRL_HOST_DEVICE bool softmax_cross_entropy_row(const scalar_t* z, int64_t k, int64_t stride, int64_t label, scalar_t* grad,
                                      opmath_t& loss) {
  opmath_t m = static_cast<opmath_t>(z[0]);
  int64_t argmax = 0;
  for (int64_t j = 1; j < k; ++j) {
    const opmath_t v = static_cast<opmath_t>(z[j * stride]);
    if (v > m || (v != v && m == m)) {  // NaN wins so that it propagates
      m = v;
      argmax = j;
    }
  }
  opmath_t sum = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
  for (int64_t j = 0; j < k; ++j) sum += exp_nonpositive(static_cast<opmath_t>(z[j * stride]) - m);
  const opmath_t lse = m + static_cast<opmath_t>(::log(sum));
  const bool valid = label >= 0 && label < k;
  const opmath_t nan = static_cast<opmath_t>(NAN);
  loss = valid ? lse - static_cast<opmath_t>(z[label * stride]) : nan;
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
  for (int64_t j = 0; j < k; ++j) {
    const opmath_t p = exp_nonpositive(static_cast<opmath_t>(z[j * stride]) - lse);
    grad[j * stride] = static_cast<scalar_t>(valid ? p - (j == label ? opmath_t(1) : opmath_t(0)) : nan);
  }
  // A NaN in the row makes m NaN (NaN wins the max above), wherever it sits: a miss,
  // even when the NaN is at the row's own label.
  return valid && argmax == label && m == m;
}

}  // namespace math
}  // namespace grl_cuda
