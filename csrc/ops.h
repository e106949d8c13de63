// The op layer: argument checks with messages that say what to do, output
// allocation, and the choice of backend loop. Used by the torch.library
// registrations (ops.cpp) and by the eager fast path (bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

#include "kernels.h"

namespace grl_cuda {

// Checks a lambda tensor against the tensor it scales and turns it into what the
// kernels read: a host value for CPU-resident lambdas, else a device tensor in
// the op math type of `like`.
Lambda resolve_lambda(const at::Tensor& lambda, const at::Tensor& like);
// A host lambda from a Python number: must be finite.
Lambda host_lambda(double value);

// -lambda * x, one pass, into a new tensor with x's strides (dense x) or contiguous.
at::Tensor neg_scale(const at::Tensor& x, const at::Tensor& lambda);
at::Tensor neg_scale_with(const at::Tensor& x, const Lambda& lambda);
// In place: x *= -lambda.
void neg_scale_(const at::Tensor& x, const at::Tensor& lambda);
void neg_scale_inplace_with(const at::Tensor& x, const Lambda& lambda);
// A fresh tensor equal to x, made by our copy loop.
at::Tensor copy(const at::Tensor& x);

// Returns (loss, grad, accuracy); see grl_cuda/functional.py for the contract.
std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_bce_with_logits(const at::Tensor& logits, int64_t num_source,
                                                                      double weight_source, double weight_target,
                                                                      const std::string& reduction);

// K-way variant: (N, K) logits, (N,) int64 domain ids; returns (loss, grad, accuracy).
std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_cross_entropy(const at::Tensor& logits, const at::Tensor& domains,
                                                                    const std::string& reduction);

// True when `grad` may be overwritten in place by the reversal's backward:
// nothing but the autograd engine's hand-off (at most `max_uses` references to
// the tensor) shares it, its storage is its own, and it is dense.
bool is_exclusive_grad(const at::Tensor& grad, int64_t max_uses);

}  // namespace grl_cuda
