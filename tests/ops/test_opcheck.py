"""torch.library contracts of every registered op: opcheck (schema, fake tensor,
autograd registration, AOT dispatch), gradcheck and gradgradcheck in float64."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

import grl_cuda  # noqa: F401

from tests.utils import FLOAT_DTYPES, make_layouts

ops = torch.ops.grl_cuda


def neg_scale_samples(device):
    for dtype in FLOAT_DTYPES:
        for name, x in make_layouts((2, 3, 4, 5), dtype, device).items():
            for lam in (torch.tensor(0.5, dtype=torch.float64), torch.tensor([2.0], device=device)):
                yield name, x.detach().requires_grad_(dtype == torch.float64), lam


@pytest.mark.parametrize("op", ["neg_scale", "copy"])
def test_opcheck_elementwise(device, op):
    for name, x, lam in neg_scale_samples(device):
        args = (x, lam) if op == "neg_scale" else (x,)
        opcheck(getattr(ops, op), args)


def test_opcheck_inplace(device):
    for name, x, lam in neg_scale_samples(device):
        if name == "expanded":
            continue  # in-place writes into overlapping memory are undefined, as for aten ops
        opcheck(ops.neg_scale_, (x.detach().clone(), lam))


def test_inplace_result(device):
    for name, x, lam in neg_scale_samples(device):
        if name == "expanded":
            continue
        y = x.detach().clone()
        ops.neg_scale_(y, lam)
        torch.testing.assert_close(y, grl_cuda.reference.neg_scale(x.detach(), lam), rtol=0, atol=0)


def test_gradcheck_neg_scale(device):
    x = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    lam = torch.tensor(0.7, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(ops.neg_scale, (x, lam))
    assert gradgradcheck(ops.neg_scale, (x, lam))
    xt = torch.randn(4, 3, dtype=torch.float64, device=device).t().requires_grad_()
    assert gradcheck(ops.neg_scale, (xt, lam))


def test_gradcheck_copy(device):
    x = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(ops.copy, (x,))
    assert gradgradcheck(ops.copy, (x,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6,), (6, 1), (6, 1, 3, 2)])
def test_opcheck_and_gradcheck_domain_bce(device, reduction, shape):
    for dtype in FLOAT_DTYPES:
        z = torch.randn(shape, device=device).to(dtype).requires_grad_(dtype == torch.float64)
        for num_source in (0, 2, 6):
            opcheck(ops.domain_bce_with_logits, (z, num_source, 1.0, 0.5, reduction))

    z = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)

    def f(z):
        return grl_cuda.domain_bce_with_logits(z, 2, weight_source=1.5, weight_target=0.5, reduction=reduction)

    assert gradcheck(f, (z,))
    assert gradgradcheck(f, (z,))


@pytest.mark.parametrize("source", ["first", "last", "middle_view"])
def test_inplace_with_lambda_inside_the_tensor_uses_the_value_from_before(device, source):
    # neg_scale_(x, x[i]): on a GPU the kernel would overwrite lambda while other
    # threads still read it; every element must be scaled by the original value.
    x = torch.randn(4097, device=device) + 2.0
    before = x.clone()
    index = {"first": 0, "last": -1, "middle_view": 2000}[source]
    lam = x[index:index + 1] if index != -1 else x[-1:]
    expected = before * -before[index]
    ops.neg_scale_(x, lam)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_lambda_gradient_lives_on_lambdas_device(device):
    # neg_scale is differentiable in lambda; a CPU lambda may scale a tensor on
    # another device and must get its gradient on its own device and dtype.
    x = torch.randn(5, device=device, dtype=torch.float32, requires_grad=True)
    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)  # CPU, float64
    (ops.neg_scale(x, lam) * 2.0).sum().backward()
    assert lam.grad.device.type == "cpu" and lam.grad.dtype == torch.float64
    torch.testing.assert_close(lam.grad, -(2.0 * x.detach()).sum().double().cpu())
    torch.testing.assert_close(x.grad, torch.full_like(x, -1.0))
