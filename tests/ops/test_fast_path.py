"""grad_reverse's two paths: the C++ autograd node (csrc/bindings.cpp) for the plain
eager call, the Python Function (functional.GradReverse) for everything else. Which
one a call takes must be invisible: same numbers, same views, same errors."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import grl_cuda
from grl_cuda import functional

from tests.utils import FLOAT_DTYPES


def _path(y):
    name = y.grad_fn.name()
    assert name in ("torch::autograd::CppNode<grl_cuda::GradReverse>", "GradReverseBackward"), name
    return "cpp" if name.startswith("torch::") else "python"


class _PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_plain_calls_take_the_cpp_node(device):
    x = torch.randn(5, device=device, requires_grad=True)
    assert _path(grl_cuda.grad_reverse(x, 0.5)) == "cpp"
    assert _path(grl_cuda.grad_reverse(x, torch.tensor(0.5))) == "cpp"  # a CPU lambda buffer
    assert _path(grl_cuda.grad_reverse(x, torch.tensor(0.5, device=device))) == "cpp"
    assert _path(grl_cuda.GradientReversal(0.5).to(device)(x)) == "cpp"
    # float64 computes in float64: a lambda beyond the float32 range is allowed there
    assert _path(grl_cuda.grad_reverse(x.double(), 1e39)) == "cpp"


@pytest.mark.parametrize("case", ["copy", "int_lambda", "numpy_lambda", "lambda_requires_grad", "parameter",
                                  "torch_function_mode", "device_context"])
def test_other_calls_take_the_python_function(case):
    x = torch.randn(5, requires_grad=True)
    call = {
        "copy": lambda: grl_cuda.grad_reverse(x, 0.5, copy=True),
        "int_lambda": lambda: grl_cuda.grad_reverse(x, 1),
        "numpy_lambda": lambda: grl_cuda.grad_reverse(x, np.float64(0.5)),
        "lambda_requires_grad": lambda: grl_cuda.grad_reverse(x, torch.tensor(0.5, requires_grad=True)),
        "parameter": lambda: grl_cuda.grad_reverse(torch.nn.Parameter(torch.randn(5)), 0.5),
    }.get(case)
    if case == "torch_function_mode":  # the mode must see what the Python Function does
        with _PassThrough():
            y = grl_cuda.grad_reverse(x, 0.5)
    elif case == "device_context":  # a TorchFunctionMode too
        with torch.device("cpu"):
            y = grl_cuda.grad_reverse(x, 0.5)
    else:
        y = call()
    assert _path(y) == "python"


@pytest.mark.parametrize("lam, error", [(float("nan"), ValueError), (float("inf"), ValueError), (1e39, ValueError),
                                        (torch.tensor(float("nan")), ValueError),
                                        (torch.tensor([0.5, 0.5]), ValueError),
                                        (torch.tensor(1), TypeError), (True, TypeError)])
def test_lambdas_the_cpp_node_declines_raise_the_python_errors(lam, error):
    with pytest.raises(error, match="lambda_"):
        grl_cuda.grad_reverse(torch.randn(3, requires_grad=True), lam)


def test_inf_lambda_is_refused_for_float64_too():
    with pytest.raises(ValueError, match="finite"):
        grl_cuda.grad_reverse(torch.randn(3, dtype=torch.float64, requires_grad=True), float("inf"))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lam_kind", ["float", "tensor"])
@pytest.mark.parametrize("grad_kind", ["exclusive", "expanded", "strided", "held"])
def test_both_paths_give_identical_numbers(device, dtype, lam_kind, grad_kind):
    base = torch.randn(6, 8, device=device).to(dtype)
    w = torch.randn(8, 6, device=device).to(dtype).t()  # a non-contiguous upstream factor
    held = torch.randn(6, 8, device=device).to(dtype)
    lam = 0.3 if lam_kind == "float" else torch.tensor(0.3)
    results = []
    for reverse in (grl_cuda.grad_reverse, functional.GradReverse.apply):
        x = base.clone().requires_grad_()
        y = reverse(x, lam)
        assert y._base is x and torch.equal(y, x)
        if grad_kind == "exclusive":
            (y * 2.0).sum().backward()
        elif grad_kind == "expanded":  # sum's backward hands an expanded, zero-stride gradient
            y.sum().backward()
        elif grad_kind == "strided":
            (y * w).sum().backward()
        else:
            y.backward(held)
        results.append(x.grad)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_cpp_node_under_create_graph_reaches_a_tensor_lambda_through_the_op():
    # Under create_graph the backward is the registered op: differentiable in x and lambda.
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=torch.float64)
    y = grl_cuda.grad_reverse(x, lam)
    assert _path(y) == "cpp"
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    torch.testing.assert_close(gx, -0.3 * 2 * x)
    (ggx,) = torch.autograd.grad(gx.sum(), x)  # d/dx of -2 lam y, through the reversal again: 2 lam^2
    torch.testing.assert_close(ggx, torch.full_like(x, 2 * 0.3 * 0.3))


def test_cpp_node_reads_a_tensor_lambda_when_the_backward_runs():
    lam = torch.tensor(0.5)
    x = torch.randn(4, requires_grad=True)
    y = grl_cuda.grad_reverse(x, lam)
    lam.fill_(2.0)  # as set_lambda does between the forward and the backward
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -2.0))


@pytest.mark.filterwarnings("ignore")
def test_jit_trace_keeps_the_reversal():
    # The tracer cannot record a C++ custom Function (it would keep only the view):
    # while tracing, the Python Function is used, and the traced graph reverses.
    x = torch.randn(5, requires_grad=True)
    traced = torch.jit.trace(lambda t: grl_cuda.grad_reverse(t, 0.5) * 2.0, (x,))
    traced(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -1.0))


def test_functorch_transforms_get_the_python_functions_answer():
    # the C++ node would raise its own error under vmap; the Python Function's is the documented one
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.vmap(lambda t: grl_cuda.grad_reverse(t, 0.5))(torch.randn(2, 3))


def test_views_and_modes_match_the_python_function():
    x = torch.randn(5, requires_grad=True)
    for reverse in (grl_cuda.grad_reverse, functional.GradReverse.apply):
        with torch.no_grad():
            y = reverse(x, 0.5)
            assert y.grad_fn is None and y._base is x
        with torch.inference_mode():
            z = reverse(torch.randn(3), 0.5)
            assert z.is_inference()
        with pytest.raises(RuntimeError, match="is a view and is being modified inplace"):
            reverse(x, 0.5).mul_(2.0)
