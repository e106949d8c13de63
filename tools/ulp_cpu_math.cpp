// How far the CPU path's branch-free float exp and log1p (csrc/grl_math.h) are
// from the correctly rounded values, over every float they are called with:
// exp_nonpositive on [-87, 0] and log1p_unit on [0, 1]; and the K-way loss's
// log_at_least_one (csrc/cpu/cross_entropy_rows.h: the log of a softmax's sum of
// exponentials, in [1, K]) on [1, 2^24]. The CUDA path calls the
// device's expf/log1pf instead (documented bounds: 2 ulp and 1 ulp, CUDA C++
// Programming Guide, "Mathematical Functions"), so the two backends differ by at
// most the sum. Build and run:  bash tools/ulp_cpu_math.sh
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "grl_math.h"
// after grl_math.h: it expects grl_cuda::math in scope
#include "cpu/cross_entropy_rows.h"

namespace {

int64_t ordered(float f) {  // floats as integers in numeric order: ulp distance = difference
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i < 0 ? -static_cast<int64_t>(i & 0x7fffffff) : i;
}

template <typename Ours, typename Exact>
void sweep(const char* name, float lo, float hi, Ours ours, Exact exact) {
  int64_t worst = 0, count = 0, off = 0;
  float worst_at = lo;
  for (float x = lo; x <= hi; x = std::nextafter(x, hi + 1.0f)) {
    const float want = static_cast<float>(exact(static_cast<double>(x)));
    const int64_t d = std::abs(ordered(ours(x)) - ordered(want));
    off += d != 0;
    if (d > worst) worst = d, worst_at = x;
    ++count;
    if (x == hi) break;
  }
  std::printf("%-16s %lld floats in [%g, %g]: worst %lld ulp (at %.9g), %.2f%% not correctly rounded\n", name,
              static_cast<long long>(count), lo, hi, static_cast<long long>(worst), worst_at, 100.0 * off / count);
}

}  // namespace

int main() {
  using grl_cuda::math::exp_nonpositive;
  using grl_cuda::math::log1p_unit;
  sweep("exp_nonpositive", -87.0f, 0.0f, [](float x) { return exp_nonpositive(x); }, [](double x) { return std::exp(x); });
  sweep("log1p_unit", 0.0f, 1.0f, [](float e) { return log1p_unit(e); }, [](double e) { return std::log1p(e); });
  sweep("log_at_least_one", 1.0f, 16777216.0f, [](float x) { return grl_cuda::cpu::log_at_least_one(x); },
        [](double x) { return std::log(x); });
  sweep("libm expf", -87.0f, 0.0f, [](float x) { return ::expf(x); }, [](double x) { return std::exp(x); });
  sweep("libm log1pf", 0.0f, 1.0f, [](float e) { return ::log1pf(e); }, [](double e) { return std::log1p(e); });
  sweep("libm logf", 1.0f, 16777216.0f, [](float x) { return ::logf(x); }, [](double x) { return std::log(x); });
  return 0;
}
