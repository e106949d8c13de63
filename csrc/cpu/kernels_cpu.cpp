// CPU loops: at::parallel_for over flat dense memory; plain loops the compiler
// vectorises (-O3). The math comes from grl_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/mul.h>

#include <algorithm>
#include <type_traits>
#include <cstring>
#include <vector>

#include "../grl_math.h"
#include "../kernels.h"
#include "bce_span.h"

namespace grl_cuda {

#if defined(__x86_64__) && defined(__GNUC__)
// bce_avx2.cpp: the float loop compiled for AVX2 + FMA, used when the CPU has them
// (ATen picks its own CPU kernels the same way, at run time).
void bce_span_float_avx2(const float* z_ptr, float* g_ptr, float* loss, float* hit, int len, bool is_target,
                         float w);
#endif

namespace {

// Elementwise work below this size stays on one thread: waking the pool costs more.
constexpr int64_t kGrainSize = 32768;
// Reductions use chunks of a fixed size, independent of the thread count, and add
// the chunk partials in index order: the same input gives bitwise the same sum.
constexpr int64_t kReduceChunk = 16384;

#if defined(__x86_64__) && defined(__GNUC__)
bool cpu_has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#define GRL_HAVE_AVX2_PATH 1
#endif

template <typename scalar_t, typename opmath_t>
inline void bce_span_dispatch(const scalar_t* z_ptr, scalar_t* g_ptr, opmath_t* loss, opmath_t* hit, int len,
                              bool is_target, opmath_t w) {
#ifdef GRL_HAVE_AVX2_PATH
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cpu_has_avx2_fma()) {
      bce_span_float_avx2(z_ptr, g_ptr, loss, hit, len, is_target, w);
      return;
    }
  }
#endif
  bce_span<scalar_t, opmath_t>(z_ptr, g_ptr, loss, hit, len, is_target, w);
}

// Adds the per-chunk partials in chunk order and writes the 0-dim outputs.
template <typename scalar_t>
void write_totals(const std::vector<double>& loss_partial, const std::vector<int64_t>& hit_partial, double loss_scale,
                  int64_t count, const at::Tensor& loss, const at::Tensor& accuracy) {
  double loss_total = 0.0;
  int64_t hit_total = 0;
  for (size_t c = 0; c < loss_partial.size(); ++c) {
    loss_total += loss_partial[c];
    hit_total += hit_partial[c];
  }
  if (loss.defined()) loss.mutable_data_ptr<scalar_t>()[0] = static_cast<scalar_t>(loss_total * loss_scale);
  if (accuracy.defined()) {
    accuracy.mutable_data_ptr<float>()[0] = static_cast<float>(static_cast<double>(hit_total) / count);
  }
}

double read_host_lambda(const Lambda& lambda) {
  TORCH_INTERNAL_ASSERT(!lambda.device.defined(), "the op layer resolves CPU lambdas to host values");
  return lambda.host;
}

}  // namespace

void neg_scale_kernel_cpu(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const double lam = read_host_lambda(lambda);
  if (src.scalar_type() == at::kHalf || src.scalar_type() == at::kBFloat16) {
    // 16-bit: ATen's CPU kernel converts half/bfloat16 with vector instructions that a
    // portable loop cannot reach (ours ran 4-7x slower); it computes the same single
    // float product and rounding, so results are bitwise those of math::reverse.
    at::mul_out(const_cast<at::Tensor&>(dst), src, at::Scalar(-lam));
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "neg_scale_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t l = static_cast<opmath_t>(lam);
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        out[i] = static_cast<scalar_t>(math::reverse<opmath_t>(static_cast<opmath_t>(in[i]), l));
      }
    });
  });
}

void copy_kernel_cpu(const at::Tensor& src, const at::Tensor& dst) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const size_t bytes = static_cast<size_t>(n) * src.element_size();
  const char* in = static_cast<const char*>(src.const_data_ptr());
  char* out = static_cast<char*>(dst.mutable_data_ptr());
  at::parallel_for(0, static_cast<int64_t>(bytes), kGrainSize * 4, [&](int64_t begin, int64_t end) {
    std::memcpy(out + begin, in + begin, static_cast<size_t>(end - begin));
  });
}

void domain_bce_kernel_cpu(const at::Tensor& logits, const DomainBceArgs& args, const at::Tensor& grad,
                           const at::Tensor& loss_elems, const at::Tensor& loss, const at::Tensor& accuracy) {
  const int64_t n = logits.numel();
  const int64_t num_chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<double> loss_partial(num_chunks, 0.0);
  std::vector<int64_t> hit_partial(num_chunks, 0);
  const int64_t first_target = args.num_source * args.inner;  // flat index of the first target element

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "domain_bce_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* z_ptr = logits.const_data_ptr<scalar_t>();
    scalar_t* g_ptr = grad.mutable_data_ptr<scalar_t>();
    scalar_t* l_ptr = loss_elems.defined() ? loss_elems.mutable_data_ptr<scalar_t>() : nullptr;
    const opmath_t w_src = static_cast<opmath_t>(args.weight_source);
    const opmath_t w_tgt = static_cast<opmath_t>(args.weight_target);

    at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      // Blocks small enough for the stack; the element loop has no reduction in
      // it, so it vectorises, and the block is then added into fixed lanes.
      constexpr int kBlock = 256;
      constexpr int kLanes = 8;
      opmath_t loss_block[kBlock];
      opmath_t hit_block[kBlock];
      for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        double lanes[kLanes] = {0};
        double hit_lanes[kLanes] = {0};
        const int64_t chunk_stop = std::min(n, (c + 1) * kReduceChunk);
        for (int64_t base = c * kReduceChunk; base < chunk_stop; base += kBlock) {
          const int len = static_cast<int>(std::min<int64_t>(kBlock, chunk_stop - base));
          const int n_source = static_cast<int>(std::clamp<int64_t>(first_target - base, 0, len));
          bce_span_dispatch(z_ptr + base, g_ptr + base, loss_block, hit_block, n_source, false, w_src);
          bce_span_dispatch(z_ptr + base + n_source, g_ptr + base + n_source, loss_block + n_source,
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
        double loss_sum = 0.0;
        int64_t hits = 0;
        for (int k = 0; k < kLanes; ++k) {
          loss_sum += lanes[k];
          hits += static_cast<int64_t>(hit_lanes[k]);
        }
        loss_partial[c] = loss_sum;
        hit_partial[c] = hits;
      }
    });

    write_totals<scalar_t>(loss_partial, hit_partial, args.loss_scale, n, loss, accuracy);
  });
}

void domain_cross_entropy_kernel_cpu(const at::Tensor& logits, const at::Tensor& domains, double loss_scale,
                            const at::Tensor& grad, const at::Tensor& loss_elems, const at::Tensor& loss,
                            const at::Tensor& accuracy) {
  const int64_t rows = logits.size(0);
  const int64_t k = logits.size(1);
  constexpr int64_t kRowChunk = 1024;  // fixed, so the sum is the same for any thread count
  const int64_t num_chunks = (rows + kRowChunk - 1) / kRowChunk;
  std::vector<double> loss_partial(num_chunks, 0.0);
  std::vector<int64_t> hit_partial(num_chunks, 0);
  const int64_t* ids = domains.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "domain_cross_entropy_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();
    scalar_t* l = loss_elems.defined() ? loss_elems.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        double loss_sum = 0.0;
        int64_t hits = 0;
        for (int64_t r = c * kRowChunk; r < std::min(rows, (c + 1) * kRowChunk); ++r) {
          opmath_t row_loss;
          hits += math::softmax_cross_entropy_row<scalar_t, opmath_t>(z + r * k, k, 1, ids[r], g + r * k, row_loss) ? 1 : 0;
          if (l != nullptr) l[r] = static_cast<scalar_t>(row_loss);
          loss_sum += static_cast<double>(row_loss);
        }
        loss_partial[c] = loss_sum;
        hit_partial[c] = hits;
      }
    });
    write_totals<scalar_t>(loss_partial, hit_partial, loss_scale, rows, loss, accuracy);
  });
}

}  // namespace grl_cuda
