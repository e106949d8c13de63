// grl_cuda._C_emu: the CUDA launch functions of csrc/cuda/kernels_cuda.cu, built
// against the emulator, taking CPU tensors. No TORCH_LIBRARY here: the real
// extension (grl_cuda._C) owns the grl_cuda op namespace. The tests do the op
// layer's part (validation, allocation) themselves.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../../csrc/kernels.h"
#include "emu_control.h"

namespace grl_emu_selftest {
void run(const std::string& name, const at::Tensor& out, int64_t blocks, int64_t threads);
}

namespace {

at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(!t.defined() || t.device().is_cpu(), "_C_emu: ", name, " must be a CPU tensor (the emulated device)");
}

// Every entry point: a launch whose error state nobody checked is an error.
template <typename F>
void host_call(F&& f) {
  grl_emu::begin_host_call();
  f();
  grl_emu::end_host_call();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "csrc/cuda/kernels_cuda.cu built against the CUDA emulator (tests only)";
  m.def(
      "neg_scale",
      [](const at::Tensor& src, const at::Tensor& dst, double lambda_host, const std::optional<at::Tensor>& lambda_device) {
        check_cpu(src, "src");
        check_cpu(dst, "dst");
        grl_cuda::Lambda lambda;
        lambda.host = lambda_host;
        lambda.device = opt(lambda_device);
        host_call([&] { grl_cuda::neg_scale_kernel_cuda(src, lambda, dst); });
      },
      "dst = -lambda * src (neg_scale_kernel_cuda)", py::arg("src"), py::arg("dst"), py::arg("lambda_host"),
      py::arg("lambda_device") = py::none());
  m.def(
      "copy",
      [](const at::Tensor& src, const at::Tensor& dst) {
        check_cpu(src, "src");
        check_cpu(dst, "dst");
        host_call([&] { grl_cuda::copy_kernel_cuda(src, dst); });
      },
      "dst = src (copy_kernel_cuda)");
  m.def(
      "domain_bce",
      [](const at::Tensor& logits, int64_t num_source, int64_t inner, double weight_source, double weight_target,
         double loss_scale, const at::Tensor& grad, const std::optional<at::Tensor>& loss_elems,
         const std::optional<at::Tensor>& loss, const std::optional<at::Tensor>& accuracy) {
        check_cpu(logits, "logits");
        grl_cuda::DomainBceArgs args{num_source, inner, weight_source, weight_target, loss_scale};
        host_call([&] {
          grl_cuda::domain_bce_kernel_cuda(logits, args, grad, opt(loss_elems), opt(loss), opt(accuracy));
        });
      },
      "domain_bce_kernel_cuda", py::arg("logits"), py::arg("num_source"), py::arg("inner"), py::arg("weight_source"),
      py::arg("weight_target"), py::arg("loss_scale"), py::arg("grad"), py::arg("loss_elems") = py::none(),
      py::arg("loss") = py::none(), py::arg("accuracy") = py::none());
  m.def(
      "domain_cross_entropy",
      [](const at::Tensor& logits, const at::Tensor& domains, double loss_scale, const at::Tensor& grad,
         const std::optional<at::Tensor>& loss_elems, const std::optional<at::Tensor>& loss,
         const std::optional<at::Tensor>& accuracy) {
        check_cpu(logits, "logits");
        host_call([&] {
          grl_cuda::domain_cross_entropy_kernel_cuda(logits, domains, loss_scale, grad, opt(loss_elems), opt(loss),
                                            opt(accuracy));
        });
      },
      "domain_cross_entropy_kernel_cuda", py::arg("logits"), py::arg("domains"), py::arg("loss_scale"), py::arg("grad"),
      py::arg("loss_elems") = py::none(), py::arg("loss") = py::none(), py::arg("accuracy") = py::none());
  m.def(
      "selftest",
      [](const std::string& name, const at::Tensor& out, int64_t blocks, int64_t threads) {
        host_call([&] { grl_emu_selftest::run(name, out, blocks, threads); });
      },
      "runs one of the emulator's own test kernels");
  m.def("set_schedule", &grl_emu::set_schedule, py::arg("kind"), py::arg("seed") = 0);
  m.def("schedule", &grl_emu::schedule);
  m.def("set_grid_cap", &grl_emu::set_grid_cap, "run grid-stride launches with at most this many blocks (0: off)");
  m.def("take_launch_log", [] {
    std::vector<std::tuple<std::string, int64_t, int64_t, int64_t>> out;
    for (const auto& r : grl_emu::take_launch_log()) out.emplace_back(r.name, r.grid, r.block, r.smem);
    return out;
  });
  m.def("stats", [] {
    const auto s = grl_emu::stats();
    return py::dict(py::arg("launches") = s.launches, py::arg("blocks") = s.blocks, py::arg("threads") = s.threads,
                    py::arg("barriers") = s.barriers, py::arg("warp_collectives") = s.warp_collectives);
  });
}
