// The K-way loss's CPU loop over a run of rows. Rows are short (K domains, often
// 2-16), so a loop along a row cannot fill a vector register; instead each block
// of up to kRows rows is transposed into a K x kRows buffer and every step runs
// across rows: column j of the buffer holds logit j of kRows rows. Branch-free, so
// the compiler vectorises it. Included by kernels_cpu.cpp (baseline ISA) and by
// bce_avx2.cpp (AVX2 + FMA, inside its own namespace): one loop, two compilations.
// Expects grl_math.h's `math` in scope.
//
// Same formulas as math::softmax_cross_entropy_row (which the GPU runs), with two
// CPU-side changes: the gradient is e_j / sum_j e_j (one exponential per logit
// instead of two), and the row's log(sum) uses log_at_least_one below, so the CPU
// and GPU results may differ by a few ulp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace grl_cuda {
namespace cpu {

// log(x) for x >= 1 (the sum of a softmax's exponentials, whose largest term is
// exp(0) = 1) in float, branch-free: x = 2^e * m with m in [sqrt(1/2), sqrt(2)),
// log(x) = e ln2 + log1p(m - 1), m - 1 exact, log1p by grl_math.h's series (|s| <= 0.18
// here, inside its range). NaN passes through. Within 3 ulp of the correctly rounded
// log over every float in [1, 2^24] (tools/ulp_cpu_math.sh).
inline float log_at_least_one(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = __builtin_bit_cast(float, (bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e += big ? 1 : 0;
  const float fe = static_cast<float>(e);
  const float r = fe * 0.693359375f + (math::log1p_unit(m - 1.0f) + fe * -2.12194440e-4f);  // ln2 in two parts
  return x == x ? r : x;
}
inline double log_at_least_one(double x) { return std::log(x); }

// Rows per block: the transposed block (K x kRows values) stays in L1 for K <= 64.
constexpr int kRows = 64;

// The work buffer a caller provides: kRows * (k + 6) opmath values.
inline int64_t cross_entropy_work_size(int64_t k) { return kRows * (k + 6); }

// Rows [row_begin, row_end) of the (rows, k) logits `z` (contiguous) with ids `ids`:
// writes grad (same layout), per-row losses into `loss_out` when not null, and adds
// the rows' losses (in row order, in double), hits and the ids' range into the
// accumulators. Ids outside [0, k) give NaN rows (the op layer refuses them).
template <typename scalar_t, typename opmath_t>
inline void cross_entropy_rows(const scalar_t* __restrict__ z, const int64_t* __restrict__ ids, int64_t k,
                               int64_t row_begin, int64_t row_end, scalar_t* __restrict__ grad,
                               scalar_t* __restrict__ loss_out, opmath_t* __restrict__ work, double& loss_sum,
                               int64_t& hits, int64_t& id_min, int64_t& id_max) {
  // An integer of the opmath's width, so that selects between it and floats vectorise.
  using int_t = std::conditional_t<sizeof(opmath_t) == 8, int64_t, int32_t>;
  opmath_t* __restrict__ t = work;             // k x kRows, column j = logit j of each row
  opmath_t* __restrict__ m = t + k * kRows;    // row max
  opmath_t* __restrict__ sum = m + kRows;      // sum of exp(z - max)
  opmath_t* __restrict__ zl = sum + kRows;     // the logit at the row's id
  opmath_t* __restrict__ loss = zl + kRows;
  int_t* __restrict__ am = reinterpret_cast<int_t*>(loss + kRows);     // argmax
  int_t* __restrict__ label = reinterpret_cast<int_t*>(loss + 2 * kRows);
  const opmath_t nan = static_cast<opmath_t>(NAN);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRows) {
    const int n = static_cast<int>(row_end - r0 < kRows ? row_end - r0 : kRows);
    const scalar_t* zb = z + r0 * k;
    for (int r = 0; r < n; ++r) {
      const int64_t id = ids[r0 + r];
      id_min = id < id_min ? id : id_min;
      id_max = id > id_max ? id : id_max;
      label[r] = (id >= 0 && id < k) ? static_cast<int_t>(id) : int_t(-1);
      for (int64_t j = 0; j < k; ++j) t[j * kRows + r] = static_cast<opmath_t>(zb[r * k + j]);
    }
    for (int r = 0; r < n; ++r) {
      m[r] = t[r];
      am[r] = 0;
      zl[r] = label[r] == 0 ? t[r] : opmath_t(0);
      sum[r] = 0;
    }
    for (int64_t j = 1; j < k; ++j) {
      const opmath_t* tj = t + j * kRows;
      const int_t jj = static_cast<int_t>(j);
      for (int r = 0; r < n; ++r) {
        const opmath_t v = tj[r];
        const bool take = v > m[r] || (v != v && m[r] == m[r]);  // first max wins; NaN wins so that it propagates
        m[r] = take ? v : m[r];
        am[r] = take ? jj : am[r];
        zl[r] = label[r] == jj ? v : zl[r];
      }
    }
    for (int64_t j = 0; j < k; ++j) {
      opmath_t* tj = t + j * kRows;
      for (int r = 0; r < n; ++r) {
        const opmath_t e = math::exp_nonpositive(tj[r] - m[r]);
        tj[r] = e;
        sum[r] += e;
      }
    }
    for (int r = 0; r < n; ++r) {
      const opmath_t lse = m[r] + log_at_least_one(sum[r]);
      loss[r] = label[r] >= 0 ? lse - zl[r] : nan;
      sum[r] = label[r] >= 0 ? opmath_t(1) / sum[r] : nan;  // now the row's 1 / sum
    }
    for (int64_t j = 0; j < k; ++j) {
      opmath_t* tj = t + j * kRows;
      const int_t jj = static_cast<int_t>(j);
      for (int r = 0; r < n; ++r) tj[r] = tj[r] * sum[r] - (label[r] == jj ? opmath_t(1) : opmath_t(0));
    }
    scalar_t* gb = grad + r0 * k;
    for (int r = 0; r < n; ++r) {
      for (int64_t j = 0; j < k; ++j) gb[r * k + j] = static_cast<scalar_t>(t[j * kRows + r]);
    }
    for (int r = 0; r < n; ++r) {
      if (loss_out != nullptr) loss_out[r0 + r] = static_cast<scalar_t>(loss[r]);
      loss_sum += static_cast<double>(loss[r]);
      hits += (label[r] >= 0 && am[r] == label[r] && m[r] == m[r]) ? 1 : 0;  // a NaN row (m NaN) never hits
    }
  }
}

}  // namespace cpu
}  // namespace grl_cuda
