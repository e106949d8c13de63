// Entry points of the per-backend loops. They assume the op layer (ops.cpp) has
// validated every argument: same device, dense non-overlapping tensors with
// identical strides, allocated outputs. They only loop.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace grl_cuda {

// The reversal's scale factor: `host` times, when `device` is defined, the value
// of that one-element tensor on the kernel's device. The kernel reads the device
// value itself, so no host synchronisation happens and CUDA graphs see updates.
// (A Python number, or a lambda tensor in CPU memory, is a host value.)
struct Lambda {
  double host = 1.0;
  at::Tensor device;
};

// The instruction set of the CPU loss loops this process runs: "avx2+fma" or
// "baseline" (chosen once, from CPUID and the GRL_CUDA_CPU_ISA=baseline override).
const char* cpu_loop_isa();

// dst[i] = -lambda * src[i] over the dense memory of src. dst may alias src.
void neg_scale_kernel_cpu(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst);
void copy_kernel_cpu(const at::Tensor& src, const at::Tensor& dst);

// Binary cross-entropy with logits whose labels come from the row index: the
// first `num_source` rows (each `inner` elements long) are source (label 0), the
// rest target (label 1). In one pass writes the per-element weighted gradient
// w * (sigmoid(z) - y) into `grad`, the per-element weighted loss into
// `loss_elems` when it is defined, and, when they are defined, the 0-dim
// `loss` (sum of weighted losses times `loss_scale`, in the logits' dtype) and
// `accuracy` (float32 fraction of hits). Sums are reduced deterministically:
// fixed chunks, fixed order, no float atomics.
struct DomainBceArgs {
  int64_t num_source;
  int64_t inner;
  double weight_source;
  double weight_target;
  double loss_scale;  // 1/n for a mean, 1 for a sum
};
void domain_bce_kernel_cpu(const at::Tensor& logits, const DomainBceArgs& args, const at::Tensor& grad,
                           const at::Tensor& loss_elems, const at::Tensor& loss, const at::Tensor& accuracy);

// K-way domain loss: softmax cross-entropy of each row of `logits` (N, K) against
// its domain id in `domains` (N,), int64. Writes grad (N, K), per-row losses into
// `loss_elems` (N,) when defined, and, when defined, the 0-dim `loss` (sum times
// loss_scale) and `accuracy` (fraction of rows whose argmax is their domain).
// The CPU loop also returns the ids' (min, max), so the op layer can refuse ids
// outside [0, K) without a pass of its own (rows with such ids come out NaN).
std::pair<int64_t, int64_t> domain_cross_entropy_kernel_cpu(const at::Tensor& logits, const at::Tensor& domains,
                                                            double loss_scale, const at::Tensor& grad,
                                                            const at::Tensor& loss_elems, const at::Tensor& loss,
                                                            const at::Tensor& accuracy);

#ifdef GRL_WITH_CUDA
void neg_scale_kernel_cuda(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst);
void copy_kernel_cuda(const at::Tensor& src, const at::Tensor& dst);
void domain_bce_kernel_cuda(const at::Tensor& logits, const DomainBceArgs& args, const at::Tensor& grad,
                            const at::Tensor& loss_elems, const at::Tensor& loss, const at::Tensor& accuracy);
void domain_cross_entropy_kernel_cuda(const at::Tensor& logits, const at::Tensor& domains, double loss_scale,
                             const at::Tensor& grad, const at::Tensor& loss_elems, const at::Tensor& loss,
                             const at::Tensor& accuracy);
#endif

}  // namespace grl_cuda
