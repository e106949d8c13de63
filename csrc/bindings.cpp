// The Python module grl_cuda._C: the eager fast path of the reversal's backward
// (no dispatcher round trip, so it can see whether autograd handed it the only
// reference to the gradient) and build facts. Ops themselves are reached through
// torch.ops.grl_cuda.*, registered in ops.cpp.
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/extension.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <optional>
#include <vector>

#include "ops.h"

namespace {

// The reversal's backward outside graph construction. When the gradient is
// exclusively ours it is scaled in place and returned: one pass, no allocation
// (a fresh buffer above ~32 MiB costs a page fault per 4 KiB page on Linux).
// How many gradients were scaled in place (for tests and diagnosis: a steal cannot be
// seen from Python without creating a Python object for the gradient, which stops it).
std::atomic<int64_t> in_place_count{0};

at::Tensor reverse_grad(const at::Tensor& grad, const grl_cuda::Lambda& lambda, int64_t max_uses) {
  if (grl_cuda::is_exclusive_grad(grad, max_uses)) {
    grl_cuda::neg_scale_inplace_with(grad, lambda);
    in_place_count.fetch_add(1, std::memory_order_relaxed);
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

// ---- grad_reverse's eager fast path: the reversal as a C++ autograd Function ----
// The Python Function (functional.GradReverse) costs a Python frame and a ctx object
// in the forward, and in the backward the engine takes the GIL to run Python. This
// node does the same work without Python. It serves only the plain eager case (see
// fast_grad_reverse); everything else goes through the Python Function, which raises
// the argument errors and handles tracing, functorch and torch_function modes.

// The dispatcher's neg_scale (its autograd formula is registered in grl_cuda/_ops.py):
// the backward under create_graph=True must itself be differentiable.
at::Tensor neg_scale_op(const at::Tensor& x, const at::Tensor& lambda) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("grl_cuda::neg_scale", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(x, lambda);
}

}  // namespace

namespace grl_cuda {

// Autograd's messages name the node after this type: CppNode<grl_cuda::GradReverse>.
struct GradReverse : public torch::autograd::Function<GradReverse> {
  // Compiled autograd may trace this backward: it then sees fake tensors and takes
  // the aten branch below; lambda (a saved_data entry) is lifted as a graph input.
  static constexpr bool is_traceable = true;

  // lambda: a double, or a one-element tensor read when the backward runs (as the
  // Python Function does: set_lambda updates the module's buffer in place between
  // steps, so it is kept as a plain reference, not saved with a version check).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, c10::IValue lambda) {
    ctx->saved_data["lambda"] = std::move(lambda);
    return x.view_as(x);
  }

  // Takes the gradient by reference to move it out of the node's list: when nothing
  // else holds it, its use count is then 1 (the test of AccumulateGrad's own steal;
  // a post-hook, a stored hook argument or the user's grad_outputs add a holder).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list& grads) {
    at::Tensor grad = std::move(grads[0]);
    const c10::IValue& lambda = ctx->saved_data.at("lambda");
    if (at::GradMode::is_enabled()) {  // create_graph=True: a differentiable backward
      const at::Tensor lt = lambda.isTensor() ? lambda.toTensor() : at::scalar_tensor(lambda.toDouble(), at::kDouble);
      return {neg_scale_op(grad, lt), at::Tensor()};
    }
    if (!(grad.is_cpu() || grad.is_cuda()) || grad.key_set().has(c10::DispatchKey::Python)) {
      // traced (compiled autograd's fake tensors) or a device without our kernels: aten
      if (lambda.isTensor()) {
        return {grad.mul(lambda.toTensor().to(grad.device()).reshape({}).neg()), at::Tensor()};
      }
      return {grad.mul(-lambda.toDouble()), at::Tensor()};
    }
    const Lambda lam = lambda.isTensor() ? resolve_lambda(lambda.toTensor(), grad) : host_lambda(lambda.toDouble());
    const int64_t max_uses = torch::autograd::AnomalyMode::is_enabled() ? 0 : 1;  // anomaly mode never steals
    return {reverse_grad(grad, lam, max_uses), at::Tensor()};
  }
};

}  // namespace grl_cuda

namespace {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A lambda the Python checks (grl_cuda/_validation.py check_lambda) would accept
// unchanged, as an IValue; nullopt for anything else (the Python path then checks
// it and raises, or converts it). A tensor that requires grad goes to the Python path.
std::optional<c10::IValue> plain_lambda(py::handle lambda, const at::Tensor& x) {
  // finite, and within float32 unless x is float64 (other dtypes compute in float32)
  const double bound = x.scalar_type() == at::kDouble ? DBL_MAX : static_cast<double>(FLT_MAX);
  if (PyFloat_CheckExact(lambda.ptr())) {
    const double v = PyFloat_AS_DOUBLE(lambda.ptr());
    if (!(std::fabs(v) <= bound)) return std::nullopt;  // NaN and inf fail too
    return c10::IValue(v);
  }
  if (!THPVariable_CheckExact(lambda.ptr())) return std::nullopt;
  const at::Tensor& t = THPVariable_Unpack(lambda.ptr());
  if (!is_float_dtype(t.scalar_type()) || t.numel() != 1 || t.requires_grad() || t.layout() != at::kStrided) {
    return std::nullopt;
  }
  if (t.device().is_cpu()) {
    if (!(std::fabs(grl_cuda::resolve_lambda(t, x).host) <= bound)) return std::nullopt;
  } else if (t.device() != x.device()) {
    return std::nullopt;
  }
  return c10::IValue(t);
}

// A functorch transform (vmap, grad, functionalize...) is running: the test of
// torch._C._are_functorch_transforms_active.
bool functorch_active() {
  const auto included = c10::impl::tls_local_dispatch_key_set().included_;
  return included.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
         included.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode);
}

// grad_reverse(x, lambda_) for a plain dense floating CPU/CUDA tensor in eager mode,
// or None when the Python Function must handle the call.
std::optional<at::Tensor> fast_grad_reverse(const at::Tensor& x, py::handle lambda) {
  if (!is_float_dtype(x.scalar_type()) || x.layout() != at::kStrided || x.is_nested() ||
      !(x.is_cpu() || x.is_cuda()) || x.key_set().has(c10::DispatchKey::Python) ||
      torch::jit::tracer::isTracing() || at::impl::torch_function_mode_enabled() || functorch_active()) {
    return std::nullopt;
  }
  std::optional<c10::IValue> lam = plain_lambda(lambda, x);
  if (!lam) return std::nullopt;
  return grl_cuda::GradReverse::apply(x, std::move(*lam));
}

// ATen's parallel_for is an OpenMP pragma in its headers: a build without -fopenmp runs every
// CPU loop on one thread, whatever torch.set_num_threads says. This tells the two apart.
int64_t parallel_for_threads(int64_t n) {
  std::vector<std::atomic<int>> seen(static_cast<size_t>(at::get_num_threads()));
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const auto t = static_cast<size_t>(at::get_thread_num());
    if (t < seen.size()) seen[t].store(1);  // a thread number past torch's count: not ours to count
  });
  int64_t used = 0;
  for (auto& s : seen) used += s.load();
  return used;
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
  m.def("grad_reverse", &fast_grad_reverse, py::arg("x"), py::arg("lambda_"),
        "grad_reverse's eager fast path (a C++ autograd node); None when the Python Function must take the call");
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
  m.def("in_place_count", [] { return in_place_count.load(std::memory_order_relaxed); },
        "how many gradients the reversal's backwards (and the fused losses') scaled in place so far");
  m.def("cpu_loop_isa", &grl_cuda::cpu_loop_isa,
        "the instruction set of the CPU loss loops in use: 'avx2+fma' or 'baseline' (GRL_CUDA_CPU_ISA=baseline forces it)");
  m.def("cuda_compiled", &cuda_compiled, "whether the CUDA kernels were compiled into this build");
  m.def("parallel_for_threads", &parallel_for_threads, py::arg("n"),
        "how many threads at::parallel_for ran n unit items on (1 when built without OpenMP); for tests");
}
