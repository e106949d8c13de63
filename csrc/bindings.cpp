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
  m.def(
      "use_counts", [](const at::Tensor& t) { return std::make_pair(t.use_count(), t.storage().use_count()); },
      "(tensor references, storage references) as C++ sees them from here; for tests and diagnosis");
  m.def("cuda_compiled", &cuda_compiled, "whether the CUDA kernels were compiled into this build");
}
