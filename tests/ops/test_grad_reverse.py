"""The reversal itself: a pseudo-function (identity forward, -lambda backward), so it
is tested analytically rather than with finite differences."""

import math

import pytest
import torch

import grl_cuda
from grl_cuda import reference

from tests.utils import CUDA, FLOAT_DTYPES, make_layouts


@pytest.mark.parametrize("lam", [1.0, 0.7, 0.0, -0.5])
def test_first_and_second_order_analytic(device, lam):
    x = torch.randn(7, 3, dtype=torch.float64, device=device, requires_grad=True)
    y = grl_cuda.grad_reverse(x, lam) ** 2
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.testing.assert_close(g, -2 * lam * x)
    (gg,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(gg, torch.full_like(x, 2 * lam**2))
    # the pure-PyTorch reference agrees at both orders
    y_ref = reference.grad_reverse(x, lam) ** 2
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.sum(), x)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(gg, gg_ref)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "transposed", "expanded", "offset", "empty"])
@pytest.mark.parametrize("copy", [False, True])
def test_matches_reference_across_dtypes_and_layouts(device, dtype, layout, copy):
    x = make_layouts((4, 3, 5, 6), dtype, device)[layout].detach().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(x.shape, device=device).to(dtype)
    lam = 0.37
    y = grl_cuda.grad_reverse(x, lam, copy=copy)
    y_ref = reference.grad_reverse(x_ref, lam)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    if not copy:
        assert y.data_ptr() == x.data_ptr() and y.stride() == x.stride()  # zero-copy forward
    elif x.numel() > 0:
        assert y.data_ptr() != x.data_ptr()
    (y * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    # one rounding of (-lambda * grad) in the op math type, exactly as ATen does it
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)
    assert x.grad.dtype == dtype


@pytest.mark.parametrize("lam_kind", ["float", "tensor64", "tensor32", "tensor16", "tensor1d"])
def test_lambda_forms(device, lam_kind):
    lam = {
        "float": 0.25,
        "tensor64": torch.tensor(0.25, dtype=torch.float64, device=device),
        "tensor32": torch.tensor(0.25, device=device),
        "tensor16": torch.tensor(0.25, dtype=torch.float16, device=device),
        "tensor1d": torch.tensor([0.25], device=device),
    }[lam_kind]
    x = torch.randn(100, device=device, requires_grad=True)
    grl_cuda.grad_reverse(x, lam).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.25))


def test_cpu_lambda_with_cuda_tensor_is_allowed_and_other_device_is_not():
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    x = torch.randn(10, device="cuda", requires_grad=True)
    grl_cuda.grad_reverse(x, torch.tensor(2.0)).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -2.0))
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="lambda_ is on"):
            grl_cuda.grad_reverse(x, torch.tensor(1.0, device="cuda:1"))


def test_zero_lambda_gives_zero_gradients(device):
    x = torch.randn(10, device=device, requires_grad=True)
    (grl_cuda.grad_reverse(x, 0.0) * 3).sum().backward()
    assert torch.count_nonzero(x.grad) == 0


def test_backward_steals_only_exclusive_gradients(device):
    """A gradient someone else still holds must never be overwritten; the engine's
    reference count that the steal relies on is pinned here."""
    g = torch.randn(1000, device=device)
    g_before = g.clone()
    x = torch.randn(1000, device=device, requires_grad=True)
    grl_cuda.grad_reverse(x * 1.0, 0.5).backward(g)  # the user holds g
    torch.testing.assert_close(g, g_before)
    torch.testing.assert_close(x.grad, -0.5 * g_before)

    counts = []

    class Count(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            counts.append(grl_cuda._C.use_counts(grad)[0])
            return grad

    x3 = torch.randn(10, device=device, requires_grad=True)
    (Count.apply(x3) * 2).sum().backward()  # exclusive: MulBackward's fresh output
    held = g[:10].clone()
    Count.apply(x3).backward(held)  # not exclusive: `held` is referenced here
    from grl_cuda.functional import _ENGINE_GRAD_USES

    assert counts[0] == _ENGINE_GRAD_USES
    assert counts[1] > _ENGINE_GRAD_USES


def test_steal_reuses_the_buffer():
    # The Python Function: the mul node's post-hook below would stop the C++ node's
    # steal (tests/ops/test_steal.py counts that one's in-place scalings instead).
    x = torch.randn(4096, requires_grad=True)
    ptrs = {}

    def hook(grad):  # a tensor hook on x sees the final gradient
        ptrs["leaf"] = grad.data_ptr()

    x.register_hook(hook)
    mid = x.view_as(x)
    y = grl_cuda.GradReverse.apply(mid, 2.0)
    out = y * torch.randn(4096)

    def mul_hook(grads_in, grads_out):
        ptrs["mul"] = grads_in[0].data_ptr()

    out.grad_fn.register_hook(mul_hook)
    out.sum().backward()
    assert ptrs["leaf"] == ptrs["mul"], "the exclusive gradient should have been reversed in place"


def test_retain_grad_and_hooks_are_not_corrupted(device):
    x = torch.randn(50, device=device, requires_grad=True)
    y = x * 2
    y.retain_grad()
    w = torch.randn(50, device=device)
    z = grl_cuda.grad_reverse(y, 0.5)
    z.retain_grad()
    (z * w).sum().backward()
    torch.testing.assert_close(z.grad, w)
    torch.testing.assert_close(y.grad, -0.5 * w)
    torch.testing.assert_close(x.grad, -1.0 * w)


def test_inplace_on_view_output_is_refused_but_copy_allows_it():
    x = torch.randn(5, requires_grad=True)
    y = grl_cuda.grad_reverse(x * 1.0, 1.0)
    with pytest.raises(RuntimeError):
        y.add_(1)
    x2 = torch.randn(5, requires_grad=True)
    y2 = grl_cuda.grad_reverse(x2, 1.0, copy=True)
    y2.add_(1)
    y2.sum().backward()
    torch.testing.assert_close(x2.grad, -torch.ones(5))


def test_low_level_function_api(device):
    x = torch.randn(6, device=device, requires_grad=True)
    grl_cuda.GradReverse.apply(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.5))


def test_autocast_keeps_incoming_dtype():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        y = grl_cuda.grad_reverse(h, 1.0)
        assert y.dtype == h.dtype == torch.bfloat16
        out = y.float().sum()
    out.backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "x, lam, error, match",
    [
        ([1.0, 2.0], 1.0, TypeError, "x must be a torch.Tensor"),
        (torch.ones(3, dtype=torch.int64), 1.0, TypeError, "float32, float64, float16 or bfloat16"),
        (torch.ones(3, dtype=torch.bool), 1.0, TypeError, "float32, float64, float16 or bfloat16"),
        (torch.ones(3, dtype=torch.complex64), 1.0, TypeError, "float32, float64, float16 or bfloat16"),
        (torch.ones(3), float("nan"), ValueError, "lambda_ must be finite"),
        (torch.ones(3), float("inf"), ValueError, "lambda_ must be finite"),
        (torch.ones(3), torch.tensor(float("nan")), ValueError, "lambda_ must be finite"),
        (torch.ones(3), torch.ones(2), ValueError, "exactly one element"),
        (torch.ones(3), torch.tensor(1), TypeError, "floating dtype"),
        (torch.ones(3), "1.0", TypeError, "lambda_ must be a float"),
        (torch.ones(3), True, TypeError, "lambda_ must be a float"),
        (torch.ones(3), None, TypeError, "lambda_ must be a float"),
    ],
)
def test_bad_input(x, lam, error, match):
    with pytest.raises(error, match=match):
        grl_cuda.grad_reverse(x, lam)


def test_bad_input_reaches_the_op_layer_too():
    # the registered op checks its own arguments (a caller may bypass the Python layer)
    with pytest.raises(TypeError, match="float32, float64"):
        torch.ops.grl_cuda.neg_scale(torch.ones(3, dtype=torch.int32), torch.tensor(1.0))
    with pytest.raises(ValueError, match="exactly one element"):
        torch.ops.grl_cuda.neg_scale(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        grl_cuda._C.reverse_grad(torch.ones(3), math.inf, 2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_large_index_and_graph_capture():
    # lambda read on the device: a CUDA graph replays the current value
    x = torch.randn(1 << 20, device="cuda", requires_grad=True)
    lam = torch.tensor(1.0, device="cuda")
    g = torch.randn_like(x)
    static_grad = torch.empty_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            static_grad.copy_(torch.ops.grl_cuda.neg_scale(g, lam))
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_grad.copy_(torch.ops.grl_cuda.neg_scale(g, lam))
    lam.fill_(3.0)
    graph.replay()
    torch.testing.assert_close(static_grad, -3.0 * g)


def test_lambda_tensor_requiring_grad_gets_its_true_gradients(device):
    # grad_reverse's forward does not depend on lambda: its first-order gradient is
    # zero (None). Its backward -lambda * g does: under create_graph a second
    # derivative reaches lambda, on lambda's own device.
    x = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)  # CPU lambda for any device
    y = grl_cuda.grad_reverse(x, lam)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)  # -lam * 2x
    torch.testing.assert_close(gx, -0.3 * 2 * x)
    (g_lam,) = torch.autograd.grad(gx.sum(), lam)
    assert g_lam.device.type == "cpu"
    torch.testing.assert_close(g_lam, -(2 * x.detach()).sum().cpu())
    (y * 2.0).sum().backward()
    assert lam.grad is None  # first order: no dependence


@pytest.mark.parametrize("lam", [0.5, "tensor"])
def test_meta_tensors_go_through_forward_and_backward(lam):
    # shape inference on the meta device (no data): the backward must not reach a kernel
    x = torch.empty(4, 3, device="meta", requires_grad=True)
    lam = torch.tensor(0.5) if lam == "tensor" else lam
    y = grl_cuda.grad_reverse(x, lam)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.device.type == "meta" and gx.shape == x.shape
