// Entry points of the per-backend loops. They assume the op layer (ops.cpp) has
// validated every argument: same device, dense non-overlapping tensors with
// identical strides, allocated outputs. They only loop.
#pragma once

#include <ATen/core/Tensor.h>

namespace grl_cuda {

// The reversal's scale factor. A host value (a Python number, or a lambda tensor
// that lives in CPU memory) or a one-element tensor on the kernel's device, read
// by the kernel itself so that no host synchronisation happens and CUDA graphs
// see updates. `device` is undefined when `host` is the value to use.
struct Lambda {
  double host = 0.0;
  at::Tensor device;
};

// dst[i] = -lambda * src[i] over the dense memory of src. dst may alias src.
void neg_scale_kernel_cpu(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst);
void copy_kernel_cpu(const at::Tensor& src, const at::Tensor& dst);

// Binary cross-entropy with logits whose labels come from the row index: the
// first `num_source` rows (each `inner` elements long) are source (label 0), the
// rest target (label 1). Writes per-element weighted gradients sigmoid(z) - y
// into `grad`, per-element weighted losses into `loss_elems` when it is defined,
// and the sums of loss and hits into `sums` (float64 [loss_sum, hit_count]),
// reduced deterministically (fixed chunks, fixed order).
struct DomainBceArgs {
  int64_t num_source;
  int64_t inner;
  double weight_source;
  double weight_target;
};
void domain_bce_kernel_cpu(const at::Tensor& logits, const DomainBceArgs& args, const at::Tensor& grad,
                           const at::Tensor& loss_elems, const at::Tensor& sums);

#ifdef GRL_WITH_CUDA
void neg_scale_kernel_cuda(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst);
void copy_kernel_cuda(const at::Tensor& src, const at::Tensor& dst);
void domain_bce_kernel_cuda(const at::Tensor& logits, const DomainBceArgs& args, const at::Tensor& grad,
                            const at::Tensor& loss_elems, const at::Tensor& sums);
#endif

}  // namespace grl_cuda
