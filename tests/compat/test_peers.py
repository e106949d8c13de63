"""grl_cuda.compat.{dann, revgrad, pytorch_adapt} against fungtion/DANN's ReverseLayerF,
pytorch-revgrad's RevGrad and pytorch-adapt's GradientReversal.

Each peer's behaviour is restated below (forward view or copy, backward formula,
where alpha lives) and checked bit for bit. When the real packages are installed
(``pip install pytorch-revgrad==0.2.0 pytorch-adapt==0.0.83``) their own layers run
side by side with ours on the same inputs; otherwise those tests skip.
"""

import copy
import importlib
import importlib.util
import os

import numpy as np
import pytest
import torch

from grl_cuda import compat
from grl_cuda.compat import dann, pytorch_adapt, revgrad

from tests.utils import FLOAT_DTYPES

LAMBDAS = [1.0, 0.5, 0.7, 0.1, 30.0, 0.123456789, -0.3, 0.0]


# ---- the peers, restated -----------------------------------------------------------------------

class FungtionReverse(torch.autograd.Function):
    """fungtion/DANN: a view forward; backward negates then scales by alpha."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.neg() * ctx.alpha, None


class _ReturnInputScaled(torch.autograd.Function):
    """pytorch-revgrad / pytorch-adapt: the input itself forward; backward -scale * grad
    with the scale a tensor (0-dim for revgrad, shape (1,) for pytorch-adapt)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, g):
        return -g * ctx.scale, None


class RevGradRef(torch.nn.Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self._alpha = torch.tensor(alpha, requires_grad=False)  # a plain attribute

    def forward(self, x):
        return _ReturnInputScaled.apply(x, self._alpha)


class AdaptRef(torch.nn.Module):
    def __init__(self, weight=1.0):
        super().__init__()
        self.register_buffer("weight", torch.tensor([weight]))

    def forward(self, x):
        return _ReturnInputScaled.apply(x, self.weight.to(x.device))


def grads(fn, x, up):
    x = x.detach().clone().requires_grad_()
    fn(x).backward(up)
    return x.grad


def assert_same_grads(fn_a, fn_b, device, dtype, shape=(37, 5)):
    x = torch.randn(shape, device=device).to(dtype)
    up = torch.randn(shape, device=device).to(dtype)
    a, b = grads(fn_a, x, up), grads(fn_b, x, up)
    assert a.dtype == b.dtype == dtype and torch.equal(a, b)


# ---- formulas, bit for bit ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lam", LAMBDAS)
def test_fungtion_dann_bitwise(device, dtype, lam):
    assert_same_grads(lambda t: dann.ReverseLayerF.apply(t, lam), lambda t: FungtionReverse.apply(t, lam), device, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lam", LAMBDAS + [2])
def test_revgrad_bitwise(device, dtype, lam):
    assert_same_grads(revgrad.RevGrad(lam), RevGradRef(lam), device, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lam", LAMBDAS + [2])
def test_pytorch_adapt_bitwise(device, dtype, lam):
    assert_same_grads(pytorch_adapt.GradientReversal(lam).to(device), AdaptRef(lam).to(device), device, dtype)


def test_fungtion_dann_alpha_kinds():
    x = torch.randn(6)
    up = torch.randn(6)
    # the original's loop passes a numpy float64 (2 / (1 + np.exp(-10 p)) - 1)
    alpha = 2.0 / (1.0 + np.exp(-10 * 0.37)) - 1
    assert isinstance(alpha, np.float64)
    assert torch.equal(grads(lambda t: dann.ReverseLayerF.apply(t, alpha), x, up),
                       grads(lambda t: FungtionReverse.apply(t, alpha), x, up))
    lam = torch.tensor(0.25)
    assert torch.equal(grads(lambda t: dann.ReverseLayerF.apply(t, lam), x, up), up.neg() * lam)
    with pytest.raises(TypeError):
        dann.ReverseLayerF.apply(x)  # alpha has no default there either


# ---- what a user can observe besides the numbers -----------------------------------------------

@pytest.mark.parametrize("make_ours, make_ref", [
    (lambda: (lambda t: dann.ReverseLayerF.apply(t, 0.5)), lambda: (lambda t: FungtionReverse.apply(t, 0.5))),
    (lambda: revgrad.RevGrad(0.5), lambda: RevGradRef(0.5)),
    (lambda: pytorch_adapt.GradientReversal(0.5), lambda: AdaptRef(0.5)),
])
def test_forward_is_a_view_like_the_originals(make_ours, make_ref):
    for fn in (make_ours(), make_ref()):
        x = torch.randn(4, requires_grad=True)
        y = fn(x)
        assert y.data_ptr() == x.data_ptr() and torch.equal(y, x)
        with pytest.raises(RuntimeError):
            y.mul_(2.0)  # autograd refuses in-place changes of a custom Function's view output


def test_revgrad_state_and_alpha():
    layer = revgrad.RevGrad(0.7)
    assert layer.state_dict() == {} == RevGradRef(0.7).state_dict()
    layer.load_state_dict(RevGradRef(0.3).state_dict(), strict=True)
    RevGradRef().load_state_dict(layer.state_dict(), strict=True)
    assert layer._alpha.dtype == torch.float32 and layer._alpha.dim() == 0 and not layer._alpha.requires_grad
    assert revgrad.RevGrad(alpha=2)._alpha.dtype == torch.int64  # torch.tensor(2), as the original
    assert list(layer.buffers()) == [] and list(layer.parameters()) == []
    layer.to(torch.float64)
    assert layer._alpha.dtype == torch.float32  # not a buffer: .to() leaves it alone, as the original
    assert revgrad.RevGrad is compat.RevGrad
    with pytest.raises(TypeError, match="alpha must be a real number"):
        revgrad.RevGrad(alpha=[0.5, 0.5])
    with pytest.raises(ValueError, match="alpha must be finite"):
        revgrad.RevGrad(alpha=float("inf"))


def test_pytorch_adapt_state_and_weight():
    layer = pytorch_adapt.GradientReversal(0.5)
    ref = AdaptRef(0.5)
    assert list(layer.state_dict()) == ["weight"] == list(ref.state_dict())
    w = layer.state_dict()["weight"]
    assert w.shape == (1,) and w.dtype == torch.float32 and float(w) == 0.5
    layer.load_state_dict(AdaptRef(0.25).state_dict(), strict=True)
    ref.load_state_dict(layer.state_dict(), strict=True)
    assert float(ref.weight) == 0.25
    x, up = torch.randn(5), torch.randn(5)
    layer.update_weight(3.0)
    assert layer.weight.tolist() == [3.0]
    assert torch.equal(grads(layer, x, up), -torch.tensor([3.0]) * up)
    assert repr(layer) == "GradientReversal(weight=tensor([3.]))"
    assert layer._record_these == ["weight"]
    assert pytorch_adapt.GradientReversal is compat.GradientReversal
    with pytest.raises(ValueError, match="weight must be finite"):
        pytorch_adapt.GradientReversal(float("nan"))


def test_flat_names_are_the_peer_classes():
    assert compat.ReverseLayerF is dann.ReverseLayerF
    assert compat.GradientReverseLayer is compat.tllib.GradientReverseLayer
    assert compat.WarmStartGradientReverseLayer is compat.tllib.WarmStartGradientReverseLayer


# ---- the real packages, side by side -----------------------------------------------------------

def _real_revgrad():
    return pytest.importorskip("pytorch_revgrad").RevGrad


def _real_adapt():
    """pytorch-adapt's GradientReversal. Its ``pytorch_adapt.layers`` package imports
    every layer, and with them torchmetrics 0.9.3 (pinned by pytorch-adapt 0.0.83),
    which imports ``pkg_resources`` (gone from recent setuptools). If that import
    fails, load the layer's own file, which needs only torch and
    pytorch-metric-learning."""
    pkg = pytest.importorskip("pytorch_adapt")
    try:
        return importlib.import_module("pytorch_adapt.layers").GradientReversal
    except ImportError:
        path = os.path.join(os.path.dirname(pkg.__file__), "layers", "gradient_reversal.py")
        spec = importlib.util.spec_from_file_location("pytorch_adapt.layers.gradient_reversal", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            pytest.skip(f"pytorch-adapt's layer cannot be imported here: {exc}")
        return module.GradientReversal


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lam", LAMBDAS + [2])
def test_real_pytorch_revgrad_side_by_side(device, dtype, lam):
    Real = _real_revgrad()
    assert_same_grads(revgrad.RevGrad(lam), Real(lam), device, dtype)
    assert_same_grads(revgrad.RevGrad(lam), Real(lam), device, dtype, shape=(2, 3, 4, 5))


def test_real_pytorch_revgrad_state_and_views():
    Real = _real_revgrad()
    real, mine = Real(0.7), revgrad.RevGrad(0.7)
    assert real.state_dict() == mine.state_dict() == {}
    mine.load_state_dict(real.state_dict(), strict=True)
    real.load_state_dict(mine.state_dict(), strict=True)
    assert mine._alpha.dtype == real._alpha.dtype and torch.equal(mine._alpha, real._alpha)
    assert Real(2)._alpha.dtype == revgrad.RevGrad(2)._alpha.dtype
    for layer in (real, mine):
        x = torch.randn(3, requires_grad=True)
        y = layer(x)
        assert y.data_ptr() == x.data_ptr()
        with pytest.raises(RuntimeError):
            y.add_(1.0)


@pytest.mark.parametrize("alpha", [None, 0.5, 0.7, 0.1, 30.0])
def test_real_pytorch_revgrad_own_test_passes_with_ours(alpha):
    """pytorch-revgrad's own test (a net's gradients are exactly the reversed net's,
    negated and divided by alpha), run with the real layer and with ours."""
    Real = _real_revgrad()
    for layer_cls in (Real, revgrad.RevGrad):
        torch.manual_seed(0)
        network = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 1))
        rev = layer_cls() if alpha is None else layer_cls(alpha=alpha)
        revnetwork = torch.nn.Sequential(copy.deepcopy(network), rev)
        inp, outp = torch.randn(8, 5), torch.randn(8, 1)
        torch.nn.MSELoss()(network(inp), outp).backward()
        torch.nn.MSELoss()(revnetwork(inp), outp).backward()
        for p1, p2 in zip(network.parameters(), revnetwork.parameters()):
            if alpha is None:
                assert (p1.grad == -p2.grad).all()
            else:
                assert torch.isclose(p1.grad, -p2.grad / alpha).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lam", LAMBDAS + [2])
def test_real_pytorch_adapt_side_by_side(device, dtype, lam):
    Real = _real_adapt()
    assert_same_grads(pytorch_adapt.GradientReversal(lam).to(device), Real(lam), device, dtype)
    real_cpu_weight = Real(lam)  # its weight stays on the CPU and is moved per call; ours is read there
    assert_same_grads(pytorch_adapt.GradientReversal(lam), real_cpu_weight, device, dtype, shape=(2, 3, 4))


def test_real_pytorch_adapt_state_update_and_repr():
    Real = _real_adapt()
    real, mine = Real(0.5), pytorch_adapt.GradientReversal(0.5)
    assert list(real.state_dict()) == list(mine.state_dict()) == ["weight"]
    assert real.weight.dtype == mine.weight.dtype and real.weight.shape == mine.weight.shape
    mine.load_state_dict(Real(0.125).state_dict(), strict=True)
    real.load_state_dict(mine.state_dict(), strict=True)
    assert torch.equal(real.weight, mine.weight)
    for layer in (real, mine):
        layer.update_weight(4.0)
    x, up = torch.randn(7), torch.randn(7)
    assert torch.equal(grads(real, x, up), grads(mine, x, up))
    assert repr(real) == repr(mine)
    assert real._record_these == mine._record_these
    assert Real(2).weight.dtype == pytorch_adapt.GradientReversal(2).weight.dtype == torch.int64
    for layer in (real, mine):
        x = torch.randn(3, requires_grad=True)
        y = layer(x)
        assert y.data_ptr() == x.data_ptr()
        with pytest.raises(RuntimeError):
            y.add_(1.0)
