// CPU loops: at::parallel_for over flat dense memory; plain loops the compiler
// vectorises (-O3). The math comes from grl_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../grl_math.h"
#include "../kernels.h"
#include "bce_span.h"
#include "cross_entropy_rows.h"

namespace grl_cuda {

#if defined(__x86_64__) && defined(__GNUC__)
// bce_avx2.cpp: the losses' loops compiled for AVX2 + FMA, used when the CPU has them
// (ATen picks its own CPU kernels the same way, at run time).
#define GRL_AVX2_DECLARE(scalar_t)                                                                                  \
  void bce_chunk_avx2(const scalar_t* z, scalar_t* g, scalar_t* l, int64_t begin, int64_t stop,                     \
                      int64_t first_target, float w_src, float w_tgt, double& loss_sum, int64_t& hits);             \
  void cross_entropy_rows_avx2(const scalar_t* z, const int64_t* ids, int64_t k, int64_t row_begin,                 \
                               int64_t row_end, scalar_t* grad, scalar_t* loss_out, float* work, double& loss_sum,  \
                               int64_t& hits, int64_t& id_min, int64_t& id_max);
// reverse_avx2.cpp: the reversal's loop
void neg_scale_span_avx2(const float* in, float* out, int64_t n, float nl);
void neg_scale_span_avx2(const c10::Half* in, c10::Half* out, int64_t n, float nl);
void neg_scale_span_avx2(const c10::BFloat16* in, c10::BFloat16* out, int64_t n, float nl);
GRL_AVX2_DECLARE(float)
GRL_AVX2_DECLARE(c10::Half)
GRL_AVX2_DECLARE(c10::BFloat16)
#undef GRL_AVX2_DECLARE
#endif

namespace {

// Elementwise work below this size stays on one thread: waking the pool costs more.
constexpr int64_t kGrainSize = 32768;
// Reductions use chunks of a fixed size, independent of the thread count, and add
// the chunk partials in index order: the same input gives bitwise the same sum.
constexpr int64_t kReduceChunk = 16384;

// The AVX2 loops run when the CPU has AVX2 and FMA, unless GRL_CUDA_CPU_ISA=baseline
// (read once; lets tests and benchmarks run the baseline loops on an AVX2 machine).
bool use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = [] {
    const char* isa = std::getenv("GRL_CUDA_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return yes;
#else
  return false;
#endif
}

template <typename scalar_t>
constexpr bool kHasAvx2Loop = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::Half> ||
                              std::is_same_v<scalar_t, c10::BFloat16>;

template <typename scalar_t, typename opmath_t>
void bce_chunk_dispatch(const scalar_t* z, scalar_t* g, scalar_t* l, int64_t begin, int64_t stop, int64_t first_target,
                        opmath_t w_src, opmath_t w_tgt, double& loss_sum, int64_t& hits) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (kHasAvx2Loop<scalar_t>) {
    if (use_avx2()) return bce_chunk_avx2(z, g, l, begin, stop, first_target, w_src, w_tgt, loss_sum, hits);
  }
#endif
  bce_chunk<scalar_t, opmath_t>(z, g, l, begin, stop, first_target, w_src, w_tgt, loss_sum, hits);
}

template <typename scalar_t, typename opmath_t>
void cross_entropy_rows_dispatch(const scalar_t* z, const int64_t* ids, int64_t k, int64_t row_begin, int64_t row_end,
                                 scalar_t* grad, scalar_t* loss_out, opmath_t* work, double& loss_sum, int64_t& hits,
                                 int64_t& id_min, int64_t& id_max) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (kHasAvx2Loop<scalar_t>) {
    if (use_avx2()) {
      return cross_entropy_rows_avx2(z, ids, k, row_begin, row_end, grad, loss_out, work, loss_sum, hits, id_min,
                                     id_max);
    }
  }
#endif
  cpu::cross_entropy_rows<scalar_t, opmath_t>(z, ids, k, row_begin, row_end, grad, loss_out, work, loss_sum, hits,
                                              id_min, id_max);
}

// out[i] = -lambda * in[i]; out may be in.
template <typename scalar_t, typename opmath_t>
void neg_scale_span_dispatch(const scalar_t* in, scalar_t* out, int64_t n, opmath_t l) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (kHasAvx2Loop<scalar_t>) {
    // the same single product as math::reverse: x * (-lambda)
    if (use_avx2()) return neg_scale_span_avx2(in, out, n, -l);
  }
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(math::reverse<opmath_t>(static_cast<opmath_t>(in[i]), l));
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

const char* cpu_loop_isa() { return use_avx2() ? "avx2+fma" : "baseline"; }

void neg_scale_kernel_cpu(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const double lam = read_host_lambda(lambda);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "neg_scale_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t l = static_cast<opmath_t>(lam);
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      neg_scale_span_dispatch<scalar_t, opmath_t>(in + begin, out + begin, end - begin, l);
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
      for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        bce_chunk_dispatch<scalar_t, opmath_t>(z_ptr, g_ptr, l_ptr, c * kReduceChunk,
                                               std::min(n, (c + 1) * kReduceChunk), first_target, w_src, w_tgt,
                                               loss_partial[c], hit_partial[c]);
      }
    });

    write_totals<scalar_t>(loss_partial, hit_partial, args.loss_scale, n, loss, accuracy);
  });
}

std::pair<int64_t, int64_t> domain_cross_entropy_kernel_cpu(const at::Tensor& logits, const at::Tensor& domains,
                                                            double loss_scale, const at::Tensor& grad,
                                                            const at::Tensor& loss_elems, const at::Tensor& loss,
                                                            const at::Tensor& accuracy) {
  const int64_t rows = logits.size(0);
  const int64_t k = logits.size(1);
  constexpr int64_t kRowChunk = 1024;  // fixed, so the sum is the same for any thread count
  const int64_t num_chunks = (rows + kRowChunk - 1) / kRowChunk;
  std::vector<double> loss_partial(num_chunks, 0.0);
  std::vector<int64_t> hit_partial(num_chunks, 0);
  std::vector<int64_t> id_min(num_chunks, 0), id_max(num_chunks, 0);
  const int64_t* ids = domains.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "domain_cross_entropy_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();
    scalar_t* l = loss_elems.defined() ? loss_elems.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      std::vector<opmath_t> work(cpu::cross_entropy_work_size(k));
      for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        int64_t hits = 0, lo = ids[c * kRowChunk], hi = lo;
        cross_entropy_rows_dispatch<scalar_t, opmath_t>(z, ids, k, c * kRowChunk, std::min(rows, (c + 1) * kRowChunk),
                                                        g, l, work.data(), loss_partial[c], hits, lo, hi);
        hit_partial[c] = hits;
        id_min[c] = lo;
        id_max[c] = hi;
      }
    });
    write_totals<scalar_t>(loss_partial, hit_partial, loss_scale, rows, loss, accuracy);
  });
  return {*std::min_element(id_min.begin(), id_min.end()), *std::max_element(id_max.begin(), id_max.end())};
}

}  // namespace grl_cuda
