// CPU loops: at::parallel_for over flat dense memory; plain loops the compiler
// vectorises (-O3). The math comes from grl_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../grl_math.h"
#include "../kernels.h"

namespace grl_cuda {
namespace {

// Elementwise work below this size stays on one thread: waking the pool costs more.
constexpr int64_t kGrainSize = 32768;
// Reductions use chunks of a fixed size, independent of the thread count, and add
// the chunk partials in index order: the same input gives bitwise the same sum.
constexpr int64_t kReduceChunk = 16384;

double read_host_lambda(const Lambda& lambda) {
  TORCH_INTERNAL_ASSERT(!lambda.device.defined(), "CPU kernels take lambda as a host value");
  return lambda.host;
}

}  // namespace

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
                           const at::Tensor& loss_elems, const at::Tensor& sums) {
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
        const int64_t begin = c * kReduceChunk;
        const int64_t end = std::min(n, begin + kReduceChunk);
        double loss_sum = 0.0;
        int64_t hits = 0;
        for (int64_t i = begin; i < end; ++i) {
          const bool is_target = i >= first_target;
          const opmath_t z = static_cast<opmath_t>(z_ptr[i]);
          const opmath_t y = is_target ? opmath_t(1) : opmath_t(0);
          const opmath_t w = is_target ? w_tgt : w_src;
          const opmath_t loss = w * math::bce_with_logits(z, y);
          g_ptr[i] = static_cast<scalar_t>(w * math::bce_with_logits_grad(z, y));
          if (l_ptr != nullptr) l_ptr[i] = static_cast<scalar_t>(loss);
          loss_sum += static_cast<double>(loss);
          hits += math::bce_hit(z, is_target) ? 1 : 0;
        }
        loss_partial[c] = loss_sum;
        hit_partial[c] = hits;
      }
    });
  });

  double loss_total = 0.0;
  int64_t hit_total = 0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    loss_total += loss_partial[c];
    hit_total += hit_partial[c];
  }
  double* out = sums.mutable_data_ptr<double>();
  out[0] = loss_total;
  out[1] = static_cast<double>(hit_total);
}

}  // namespace grl_cuda
