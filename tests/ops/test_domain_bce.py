"""The fused domain BCE against F.binary_cross_entropy_with_logits on explicit labels."""

import sys

import pytest
import torch
import torch.nn.functional as F

import grl_cuda
from grl_cuda import reference

from tests.utils import FLOAT_DTYPES

TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


def explicit_labels(logits, num_source):
    labels = torch.zeros_like(logits)
    labels[num_source:] = 1
    return labels


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape, num_source", [((64,), 32), ((10, 1), 3), ((4, 1, 5, 7), 1), ((5,), 0), ((5,), 5)])
def test_matches_pytorch(device, dtype, reduction, shape, num_source):
    z = (torch.randn(shape, device=device) * 4).to(dtype).requires_grad_()
    z_ref = z.detach().clone().requires_grad_()
    loss, acc = grl_cuda.domain_bce_with_logits(z, num_source, reduction=reduction, return_accuracy=True)
    # ground truth in float64 from the same (rounded) logits
    ref = F.binary_cross_entropy_with_logits(z_ref.double(), explicit_labels(z_ref, num_source).double(),
                                             reduction=reduction)
    assert loss.dtype == dtype and loss.shape == ref.shape
    torch.testing.assert_close(loss.double(), ref, **TOL[dtype])
    upstream = torch.randn(ref.shape, device=device, dtype=torch.float64)
    (loss.double() * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert z.grad.dtype == dtype
    torch.testing.assert_close(z.grad.double(), z_ref.grad.double(), **TOL[dtype])
    labels = explicit_labels(z_ref.detach(), num_source).bool()
    expected_acc = ((z_ref.detach() > 0) == labels).float().mean()
    torch.testing.assert_close(acc, expected_acc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_match_pytorch_weight_tensor(device, dtype):
    z = torch.randn(12, 1, dtype=dtype, device=device, requires_grad=True)
    loss = grl_cuda.domain_bce_with_logits(z, 4, weight_source=1.5, weight_target=0.25)
    ref = reference.domain_bce_with_logits(z, 4, weight_source=1.5, weight_target=0.25)
    weights = torch.tensor([1.5] * 4 + [0.25] * 8, dtype=dtype, device=device).reshape(12, 1)
    manual = F.binary_cross_entropy_with_logits(z, explicit_labels(z, 4), weight=weights)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(loss, manual)
    (g,) = torch.autograd.grad(loss, z)
    (g_ref,) = torch.autograd.grad(manual, z)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_extreme_logits_are_finite_and_match(device, dtype):
    big = 1e4 if dtype != torch.float16 else 6e4
    z = torch.tensor([-big, big, -30.0, 30.0, 0.0, big, -big, 17.0], device=device).to(dtype).requires_grad_()
    loss = grl_cuda.domain_bce_with_logits(z, 4, reduction="none")
    ref = F.binary_cross_entropy_with_logits(z.detach().double(), explicit_labels(z.detach(), 4).double(),
                                             reduction="none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), ref, **TOL[dtype])
    (g,) = torch.autograd.grad(loss.sum(), z)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.double(), torch.sigmoid(z.detach().double()) - explicit_labels(z.detach(), 4).double(),
                               **TOL[dtype])


def test_nan_propagates(device):
    z = torch.tensor([0.5, float("nan"), -1.0], device=device, requires_grad=True)
    loss = grl_cuda.domain_bce_with_logits(z, 1)
    assert torch.isnan(loss)
    loss.backward()
    assert torch.isnan(z.grad[1]) and torch.isfinite(z.grad[[0, 2]]).all()


def test_deterministic_bitwise(device):
    z = torch.randn(3_000_001, device=device)  # many reduction chunks, odd size
    a = grl_cuda.domain_bce_with_logits(z, 1_000_000)
    b = grl_cuda.domain_bce_with_logits(z, 1_000_000)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.double(), reference.domain_bce_with_logits(z.double(), 1_000_000), rtol=1e-6, atol=0)


def test_thread_count_does_not_change_the_sum():
    z = torch.randn(1_000_003)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grl_cuda.domain_bce_with_logits(z, 400_000)
        torch.set_num_threads(max(2, threads))
        many = grl_cuda.domain_bce_with_logits(z, 400_000)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the build adds -fopenmp on Linux")
def test_cpu_loops_run_on_several_threads():
    # the test above passes trivially when every CPU loop runs on one thread, which a build
    # without -fopenmp did (ATen's parallel_for is an OpenMP pragma in its headers)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert grl_cuda._C.parallel_for_threads(10_000) == 2
    finally:
        torch.set_num_threads(threads)


def test_autocast_computes_in_float32():
    lin = torch.nn.Linear(8, 1)
    x = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        assert logits.dtype == torch.bfloat16
        loss = grl_cuda.domain_bce_with_logits(logits, 3)
    assert loss.dtype == torch.float32
    loss.backward()
    assert lin.weight.grad is not None


def test_compiles_fullgraph():
    z = torch.randn(16, 1, requires_grad=True)

    def f(z):
        loss, acc = grl_cuda.domain_bce_with_logits(z, 8, return_accuracy=True)
        return loss * 2, acc

    compiled = torch.compile(f, fullgraph=True)
    (loss_c, acc_c), (loss_e, acc_e) = compiled(z), f(z)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(acc_c, acc_e)
    (g_c,) = torch.autograd.grad(loss_c, z)
    (g_e,) = torch.autograd.grad(loss_e, z)
    torch.testing.assert_close(g_c, g_e)


@pytest.mark.parametrize(
    "logits, num_source, kwargs, error, match",
    [
        (torch.zeros(4, 2), 2, {}, ValueError, "domain_cross_entropy"),
        (torch.zeros(0, 1), 0, {}, ValueError, "empty batch"),
        (torch.zeros(()), 0, {}, ValueError, "0-dim"),
        (torch.zeros(4), 5, {}, ValueError, r"num_source must be in \[0, N\]"),
        (torch.zeros(4), -1, {}, ValueError, r"num_source must be in \[0, N\]"),
        (torch.zeros(4, dtype=torch.int64), 2, {}, TypeError, "float32, float64"),
        (torch.zeros(4), 2.5, {}, TypeError, "num_source must be an int"),
        (torch.zeros(4), 2, {"reduction": "avg"}, ValueError, "reduction must be"),
        (torch.zeros(4), 2, {"weight_source": float("nan")}, ValueError, "weight_source must be finite"),
        ([0.0, 1.0], 1, {}, TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_input(logits, num_source, kwargs, error, match):
    with pytest.raises(error, match=match):
        grl_cuda.domain_bce_with_logits(logits, num_source, **kwargs)
