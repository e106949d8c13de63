// The fused BCE's CPU loop over a run of elements that share a domain label (the
// labels are constant on each side of the source/target boundary, so there is no
// per-element index test): branch-free, so the compiler vectorises it. Included by
// kernels_cpu.cpp (baseline ISA) and by bce_avx2.cpp (AVX2 + FMA, inside its own
// namespace): one loop, two compilations. Expects grl_math.h's `math` in scope.
#pragma once

#include <cstdint>

namespace grl_cuda {

template <typename scalar_t, typename opmath_t>
inline void bce_span(const scalar_t* __restrict__ z_ptr, scalar_t* __restrict__ g_ptr, opmath_t* __restrict__ loss,
                     opmath_t* __restrict__ hit, int len, bool is_target, opmath_t w) {
  const opmath_t y = is_target ? opmath_t(1) : opmath_t(0);
  for (int j = 0; j < len; ++j) {
    const opmath_t z = static_cast<opmath_t>(z_ptr[j]);
    opmath_t l, g;
    math::bce_with_logits(z, y, l, g);
    g_ptr[j] = static_cast<scalar_t>(w * g);
    loss[j] = w * l;
    hit[j] = math::bce_hit(z, is_target) ? opmath_t(1) : opmath_t(0);  // float, not int: keeps the loop vectorised
  }
}

}  // namespace grl_cuda
