// Schemas (one TORCH_LIBRARY block), the op layer's checks and allocation, and
// the per-backend registrations. Every op is functional or declares its mutation,
// so torch.library.opcheck and torch.compile accept it.
#include "ops.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

namespace grl_cuda {
namespace {

void check_float_tensor(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                   "grl_cuda: ", name, " must be a float32, float64, float16 or bfloat16 tensor, got ",
                   t.scalar_type(), ". Convert it first, e.g. ", name, ".float().");
  TORCH_CHECK_VALUE(t.device().is_cpu() || t.device().is_cuda(), "grl_cuda: ", name,
                    " must be on a CPU or CUDA device, got ", t.device(), ".");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "grl_cuda: ", name, " must be a dense (strided) tensor, got layout ",
                    t.layout(), ".");
}

bool on_cuda(const at::Tensor& t) { return t.device().is_cuda(); }

void require_cuda_build() {
#ifndef GRL_WITH_CUDA
  TORCH_CHECK(false,
              "grl_cuda was built without CUDA kernels, so it cannot run on a CUDA tensor. Reinstall with a CUDA "
              "build of torch and CUDA_HOME pointing at the CUDA toolkit (see grl_cuda.build_info() and the README).");
#endif
}

void run_neg_scale(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst) {
  if (on_cuda(src)) {
    require_cuda_build();
#ifdef GRL_WITH_CUDA
    neg_scale_kernel_cuda(src, lambda, dst);
#endif
  } else {
    neg_scale_kernel_cpu(src, lambda, dst);
  }
}

void run_copy(const at::Tensor& src, const at::Tensor& dst) {
  if (on_cuda(src)) {
    require_cuda_build();
#ifdef GRL_WITH_CUDA
    copy_kernel_cuda(src, dst);
#endif
  } else {
    copy_kernel_cpu(src, dst);
  }
}

// The kernels walk flat memory. Dense tensors in any memory format (channels_last
// included) are walked as they lie, with an output of identical strides; other
// strided views are first copied into `empty_like(x)`, whose strides follow x's
// suggested memory format. Every output is then `empty_like(x)`: exactly what the
// fake implementations (grl_cuda/_ops.py) return, so torch.compile sees the real strides.
at::Tensor dense_source(const at::Tensor& x) {
  return x.is_non_overlapping_and_dense() ? x : at::empty_like(x).copy_(x);
}

}  // namespace

Lambda host_lambda(double value) {
  TORCH_CHECK_VALUE(std::isfinite(value), "grl_cuda: lambda_ must be a finite number, got ", value, ".");
  Lambda out;
  out.host = value;
  return out;
}

Lambda resolve_lambda(const at::Tensor& lambda, const at::Tensor& like) {
  TORCH_CHECK_TYPE(at::isFloatingType(lambda.scalar_type()),
                   "grl_cuda: a lambda_ tensor must have a floating dtype, got ", lambda.scalar_type(), ".");
  TORCH_CHECK_VALUE(lambda.numel() == 1, "grl_cuda: a lambda_ tensor must have exactly one element, got shape ",
                    lambda.sizes(), ".");
  TORCH_CHECK_VALUE(lambda.device().is_cpu() || lambda.device() == like.device(),
                    "grl_cuda: lambda_ is on ", lambda.device(), " but the tensor it scales is on ", like.device(),
                    ". Keep lambda_ on the same device (or on the CPU).");
  Lambda out;
  if (lambda.device().is_cpu()) {
    // CPU memory: reading it is not a device synchronisation. (NaN/inf in a
    // tensor lambda is not checked: checking a device tensor would need a sync.)
    // one element in CPU memory: read in place (no conversion tensor per call);
    // rarer floating types (float8) through a conversion
    const auto dtype = lambda.scalar_type();
    if (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "grl_cuda_lambda", [&] {
        out.host = static_cast<double>(lambda.const_data_ptr<scalar_t>()[0]);
      });
    } else {
      out.host = lambda.to(at::kDouble).const_data_ptr<double>()[0];
    }
  } else {
    const auto opmath = at::toOpMathType(like.scalar_type());
    out.device = lambda.scalar_type() == opmath ? lambda : lambda.to(opmath);
  }
  return out;
}

at::Tensor neg_scale_with(const at::Tensor& x, const Lambda& lambda) {
  const at::Tensor src = dense_source(x);
  at::Tensor out = at::empty_like(src);  // preserve_format: same strides as a dense src
  run_neg_scale(src, lambda, out);
  return out;
}

at::Tensor neg_scale(const at::Tensor& x, const at::Tensor& lambda) {
  check_float_tensor(x, "x");
  return neg_scale_with(x, resolve_lambda(lambda, x));
}

void neg_scale_inplace_with(const at::Tensor& x, const Lambda& lambda) {
  // A device lambda inside x (neg_scale_(x, x[0])) is snapshotted by the CUDA
  // launch itself (kernels_cuda.cu); a CPU lambda is read on the host first.
  if (x.is_non_overlapping_and_dense()) {
    run_neg_scale(x, lambda, x);
  } else {
    x.copy_(neg_scale_with(x, lambda));
  }
}

void neg_scale_(const at::Tensor& x, const at::Tensor& lambda) {
  check_float_tensor(x, "x");
  neg_scale_inplace_with(x, resolve_lambda(lambda, x));
}

at::Tensor copy(const at::Tensor& x) {
  check_float_tensor(x, "x");
  const at::Tensor src = dense_source(x);
  at::Tensor out = at::empty_like(src);
  run_copy(src, out);
  return out;
}

bool is_exclusive_grad(const at::Tensor& grad, int64_t max_uses) {
  return grad.defined() && !grad.requires_grad() && grad.layout() == at::kStrided &&
         static_cast<int64_t>(grad.use_count()) <= max_uses && grad.storage().use_count() == 1 &&
         grad.is_non_overlapping_and_dense() && !grad.is_inference() && grad.device().type() != at::kMeta;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_bce_with_logits(const at::Tensor& logits, int64_t num_source,
                                                                      double weight_source, double weight_target,
                                                                      const std::string& reduction) {
  check_float_tensor(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() >= 1, "grl_cuda: logits must have shape (N,), (N, 1) or (N, 1, *spatial), got a "
                                       "0-dim tensor.");
  const int64_t rows = logits.size(0);
  TORCH_CHECK_VALUE(rows > 0, "grl_cuda: logits is an empty batch (N = 0); pass at least one row.");
  TORCH_CHECK_VALUE(logits.dim() == 1 || logits.size(1) == 1, "grl_cuda: logits must have shape (N,), (N, 1) or "
                    "(N, 1, *spatial) for a binary domain classifier, got ", logits.sizes(),
                    ". For K > 2 domains use grl_cuda.domain_cross_entropy with (N, K) logits.");
  TORCH_CHECK_VALUE(0 <= num_source && num_source <= rows, "grl_cuda: num_source must be in [0, N] = [0, ", rows,
                    "], got ", num_source, ".");
  TORCH_CHECK_VALUE(std::isfinite(weight_source) && std::isfinite(weight_target),
                    "grl_cuda: weight_source and weight_target must be finite, got ", weight_source, " and ",
                    weight_target, ".");
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum" || reduction == "none",
                    "grl_cuda: reduction must be 'mean', 'sum' or 'none', got '", reduction, "'.");

  const at::Tensor z = logits.contiguous();  // labels come from the flat row index
  const int64_t n = z.numel();
  const bool none = reduction == "none";
  // Empty spatial extent: mean and accuracy are 0/0 = NaN, as in PyTorch.
  const double loss_scale = reduction == "mean" ? (n > 0 ? 1.0 / static_cast<double>(n) : std::nan("")) : 1.0;
  DomainBceArgs args{num_source, n / rows, weight_source, weight_target, loss_scale};
  at::Tensor grad = at::empty(z.sizes(), z.options());
  at::Tensor loss = none ? at::empty(z.sizes(), z.options()) : at::empty({}, z.options());
  at::Tensor accuracy = at::empty({}, z.options().dtype(at::kFloat));
  if (n == 0) {
    if (!none) loss.fill_(reduction == "mean" ? std::nan("") : 0.0);
    accuracy.fill_(std::nan(""));
    return {loss, grad, accuracy};
  }
  const at::Tensor loss_elems = none ? loss : at::Tensor();
  const at::Tensor loss_total = none ? at::Tensor() : loss;
  if (on_cuda(z)) {
    require_cuda_build();
#ifdef GRL_WITH_CUDA
    domain_bce_kernel_cuda(z, args, grad, loss_elems, loss_total, accuracy);
#endif
  } else {
    domain_bce_kernel_cpu(z, args, grad, loss_elems, loss_total, accuracy);
  }
  return {loss, grad, accuracy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_cross_entropy(const at::Tensor& logits, const at::Tensor& domains,
                                                                    const std::string& reduction) {
  check_float_tensor(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) >= 2, "grl_cuda: logits must have shape (N, K) with K >= 2 "
                    "domains, got ", logits.sizes(), ". For two domains with one logit use domain_bce_with_logits.");
  TORCH_CHECK_VALUE(logits.size(0) > 0, "grl_cuda: logits is an empty batch (N = 0); pass at least one row.");
  TORCH_CHECK_TYPE(domains.scalar_type() == at::kLong, "grl_cuda: domains must be an int64 tensor of domain ids, got ",
                   domains.scalar_type(), ".");
  TORCH_CHECK_VALUE(domains.dim() == 1 && domains.size(0) == logits.size(0), "grl_cuda: domains must have shape (N,) = (",
                    logits.size(0), ",), got ", domains.sizes(), ".");
  TORCH_CHECK_VALUE(domains.device() == logits.device(), "grl_cuda: domains is on ", domains.device(),
                    " but logits is on ", logits.device(), ".");
  TORCH_CHECK_VALUE(domains.layout() == at::kStrided, "grl_cuda: domains must be a dense (strided) tensor, got layout ",
                    domains.layout(), ".");
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum" || reduction == "none",
                    "grl_cuda: reduction must be 'mean', 'sum' or 'none', got '", reduction, "'.");
  const int64_t num_domains = logits.size(1);
  const at::Tensor z = logits.contiguous();
  const at::Tensor ids = domains.contiguous();
  const int64_t rows = z.size(0);
  const bool none = reduction == "none";
  const double loss_scale = reduction == "mean" ? 1.0 / static_cast<double>(rows) : 1.0;
  at::Tensor grad = at::empty(z.sizes(), z.options());
  at::Tensor loss = none ? at::empty({rows}, z.options()) : at::empty({}, z.options());
  at::Tensor accuracy = at::empty({}, z.options().dtype(at::kFloat));
  const at::Tensor loss_elems = none ? loss : at::Tensor();
  const at::Tensor loss_total = none ? at::Tensor() : loss;
  if (on_cuda(z)) {
    require_cuda_build();
#ifdef GRL_WITH_CUDA
    domain_cross_entropy_kernel_cuda(z, ids, loss_scale, grad, loss_elems, loss_total, accuracy);
#endif
  } else {
    // An id outside [0, K) is refused (its row came out NaN, nothing was read past
    // it). On CUDA the kernel asserts instead: a host check there would synchronise.
    const auto [lo, hi] = domain_cross_entropy_kernel_cpu(z, ids, loss_scale, grad, loss_elems, loss_total, accuracy);
    TORCH_CHECK_VALUE(0 <= lo && hi < num_domains, "grl_cuda: domains must be ids in [0, K) = [0, ", num_domains,
                      ") for logits with K = ", num_domains, " columns, got ids in [", lo, ", ", hi, "].");
  }
  return {loss, grad, accuracy};
}

// ---- registration ------------------------------------------------------------------------------

namespace {
std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_bce_with_logits_op(const at::Tensor& logits, int64_t num_source,
                                                                         double weight_source, double weight_target,
                                                                         c10::string_view reduction) {
  return domain_bce_with_logits(logits, num_source, weight_source, weight_target, std::string(reduction));
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_cross_entropy_op(const at::Tensor& logits,
                                                                       const at::Tensor& domains,
                                                                       c10::string_view reduction) {
  return domain_cross_entropy(logits, domains, std::string(reduction));
}
}  // namespace

TORCH_LIBRARY(grl_cuda, m) {
  m.def("neg_scale(Tensor x, Tensor lambda_) -> Tensor");
  m.def("neg_scale_(Tensor(a!) x, Tensor lambda_) -> ()");
  m.def("copy(Tensor x) -> Tensor");
  m.def(
      "domain_bce_with_logits(Tensor logits, int num_source, float weight_source, float weight_target, "
      "str reduction) -> (Tensor loss, Tensor grad, Tensor accuracy)");
  m.def("domain_cross_entropy(Tensor logits, Tensor domains, str reduction) -> (Tensor loss, Tensor grad, "
        "Tensor accuracy)");
}

// One implementation serves both backends: the op layer picks the loop by device.
TORCH_LIBRARY_IMPL(grl_cuda, CPU, m) {
  m.impl("neg_scale", &neg_scale);
  m.impl("neg_scale_", &neg_scale_);
  m.impl("copy", &copy);
  m.impl("domain_bce_with_logits", &domain_bce_with_logits_op);
  m.impl("domain_cross_entropy", &domain_cross_entropy_op);
}

#ifdef GRL_WITH_CUDA
TORCH_LIBRARY_IMPL(grl_cuda, CUDA, m) {
  m.impl("neg_scale", &neg_scale);
  m.impl("neg_scale_", &neg_scale_);
  m.impl("copy", &copy);
  m.impl("domain_bce_with_logits", &domain_bce_with_logits_op);
  m.impl("domain_cross_entropy", &domain_cross_entropy_op);
}
#endif

}  // namespace grl_cuda
