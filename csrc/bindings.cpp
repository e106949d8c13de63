// The Python module grl_cuda._C: the eager fast path of the reversal's backward
// (no dispatcher round trip, so it can see whether autograd handed it the only
// reference to the gradient) and build facts. Ops themselves are reached through
// torch.ops.grl_cuda.*, registered in ops.cpp.
#include <torch/extension.h>

#include "ops.h"

namespace {

// The reversal's backward outside graph construction. When the gradient is
// exclusively ours it is scaled in place and returned: one pass, no allocation
// (a fresh buffer above ~32 MiB costs a page fault per 4 KiB page on Linux).
at::Tensor reverse_grad(const at::Tensor& grad, const grl_cuda::Lambda& lambda, int64_t max_uses) {
  if (grl_cuda::is_exclusive_grad(grad, max_uses)) {
    grl_cuda::neg_scale_inplace_with(grad, lambda);
    return grad;
  }
  return grl_cuda::neg_scale_with(grad, lambda);
}

// The fused loss's backward: grad_logits = saved_grad * grad_loss * factor (factor
// 1/n for a mean), one pass, in place when the saved gradient is exclusively ours.
at::Tensor scale_saved_grad(const at::Tensor& saved, const at::Tensor& grad_loss, double factor, int64_t max_uses) {
  grl_cuda::Lambda lambda = grl_cuda::resolve_lambda(grad_loss, saved);
  lambda.host *= -factor;  // the kernel computes -lambda * x
  return reverse_grad(saved, lambda, max_uses);
}

bool cuda_compiled() {
#ifdef GRL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "grl_cuda compiled core (ops are registered under torch.ops.grl_cuda)";
  m.def(
      "reverse_grad",
      [](const at::Tensor& grad, const at::Tensor& lambda, int64_t max_uses) {
        return reverse_grad(grad, grl_cuda::resolve_lambda(lambda, grad), max_uses);
      },
      py::arg("grad"), py::arg("lambda_"), py::arg("max_uses"));
  m.def(
      "reverse_grad",
      [](const at::Tensor& grad, double lambda, int64_t max_uses) {
        return reverse_grad(grad, grl_cuda::host_lambda(lambda), max_uses);
      },
      py::arg("grad"), py::arg("lambda_"), py::arg("max_uses"));
  m.def("domain_bce_with_logits", &grl_cuda::domain_bce_with_logits, py::arg("logits"), py::arg("num_source"),
        py::arg("weight_source"), py::arg("weight_target"), py::arg("reduction"),
        "the fused loss's forward without the dispatcher (eager path); returns (loss, grad, accuracy)");
  m.def("domain_cross_entropy", &grl_cuda::domain_cross_entropy, py::arg("logits"), py::arg("domains"),
        py::arg("reduction"), "the K-way loss's forward without the dispatcher (eager path)");
  m.def("scale_saved_grad", &scale_saved_grad, py::arg("saved"), py::arg("grad_loss"), py::arg("factor"),
        py::arg("max_uses"));
  m.def(
      "use_counts", [](const at::Tensor& t) { return std::make_pair(t.use_count(), t.storage().use_count()); },
      "(tensor references, storage references) as C++ sees them from here; for tests and diagnosis");
  m.def("cpu_loop_isa", &grl_cuda::cpu_loop_isa,
        "the instruction set of the CPU loss loops in use: 'avx2+fma' or 'baseline' (GRL_CUDA_CPU_ISA=baseline forces it)");
  m.def("cuda_compiled", &cuda_compiled, "whether the CUDA kernels were compiled into this build");
}
