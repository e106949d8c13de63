// The fused BCE's CPU loop over one reduction chunk, and its inner loop over a run
// of elements that share a domain label (the labels are constant on each side of
// the source/target boundary, so there is no per-element index test): branch-free,
// so the compiler vectorises it. Included by kernels_cpu.cpp (baseline ISA) and by
// bce_avx2.cpp (AVX2 + FMA, inside its own namespace): one loop, two compilations.
// Expects grl_math.h's `math` in scope.
#pragma once

#include <algorithm>
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

// Elements [begin, stop) of one chunk: writes the weighted gradient into g_ptr (and
// the weighted losses into l_ptr when not null); returns the chunk's loss sum and
// hit count. The sum's order is fixed by the indices alone (blocks of 256, then 8
// double lanes), so it is the same for any thread count.
template <typename scalar_t, typename opmath_t>
inline void bce_chunk(const scalar_t* z_ptr, scalar_t* g_ptr, scalar_t* l_ptr, int64_t begin, int64_t stop,
                      int64_t first_target, opmath_t w_src, opmath_t w_tgt, double& loss_sum, int64_t& hits) {
  // Blocks small enough for the stack; the element loop has no reduction in it,
  // so it vectorises, and the block is then added into fixed lanes.
  constexpr int kBlock = 256;
  constexpr int kLanes = 8;
  opmath_t loss_block[kBlock];
  opmath_t hit_block[kBlock];
  double lanes[kLanes] = {0};
  double hit_lanes[kLanes] = {0};
  for (int64_t base = begin; base < stop; base += kBlock) {
    const int len = static_cast<int>(std::min<int64_t>(kBlock, stop - base));
    const int n_source = static_cast<int>(std::clamp<int64_t>(first_target - base, 0, len));
    bce_span<scalar_t, opmath_t>(z_ptr + base, g_ptr + base, loss_block, hit_block, n_source, false, w_src);
    bce_span<scalar_t, opmath_t>(z_ptr + base + n_source, g_ptr + base + n_source, loss_block + n_source,
                                 hit_block + n_source, len - n_source, true, w_tgt);
    if (l_ptr != nullptr) {
      for (int j = 0; j < len; ++j) l_ptr[base + j] = static_cast<scalar_t>(loss_block[j]);
    }
    int j = 0;
    for (; j + kLanes <= len; j += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        lanes[k] += static_cast<double>(loss_block[j + k]);
        hit_lanes[k] += static_cast<double>(hit_block[j + k]);
      }
    }
    for (; j < len; ++j) {
      lanes[0] += static_cast<double>(loss_block[j]);
      hit_lanes[0] += static_cast<double>(hit_block[j]);
    }
  }
  loss_sum = 0.0;
  hits = 0;
  for (int k = 0; k < kLanes; ++k) {
    loss_sum += lanes[k];
    hits += static_cast<int64_t>(hit_lanes[k]);
  }
}

}  // namespace grl_cuda
