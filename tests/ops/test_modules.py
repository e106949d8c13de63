"""nn.Module layers, schedules and the drop-in compat names."""

import io
import math

import pytest
import torch
from torch import nn

import grl_cuda
from grl_cuda import compat, reference, schedules

from tests.utils import CUDA, FLOAT_DTYPES


def grad_of(layer_fn, x, upstream):
    x = x.detach().clone().requires_grad_()
    (layer_fn(x) * upstream).sum().backward()
    return x.grad


# ---- GradientReversal ------------------------------------------------------------------------------

def test_gradient_reversal_module(device):
    grl = grl_cuda.GradientReversal(lambda_=1.0).to(device)
    x = torch.randn(4, 5, device=device)
    up = torch.randn(4, 5, device=device)
    torch.testing.assert_close(grad_of(grl, x, up), -up)
    grl.set_lambda(0.3)
    torch.testing.assert_close(grad_of(grl, x, up), -0.3 * up)
    grl.lambda_ = 0.5  # attribute assignment updates the buffer in place
    assert isinstance(grl.lambda_, torch.Tensor) and grl.lambda_.device.type == device
    torch.testing.assert_close(grad_of(grl, x, up), -0.5 * up)
    grl.lambda_ = torch.tensor(2.0, device=device)
    torch.testing.assert_close(grad_of(grl, x, up), -2.0 * up)
    assert "lambda_=2" in repr(grl)


def test_set_lambda_keeps_the_same_buffer():
    grl = grl_cuda.GradientReversal(0.1)
    buf = grl.lambda_
    grl.set_lambda(0.9)
    assert grl.lambda_ is buf and float(buf) == pytest.approx(0.9)


@pytest.mark.parametrize("bad, error", [(float("nan"), ValueError), (math.inf, ValueError), ("x", TypeError),
                                        (torch.ones(2), ValueError)])
def test_set_lambda_rejects_bad_values(bad, error):
    grl = grl_cuda.GradientReversal()
    with pytest.raises(error):
        grl.set_lambda(bad)
    with pytest.raises(error):
        grl_cuda.GradientReversal(bad)


def test_state_dict_round_trip():
    grl = grl_cuda.GradientReversal(0.42)
    buf = io.BytesIO()
    torch.save(grl.state_dict(), buf)
    buf.seek(0)
    other = grl_cuda.GradientReversal(1.0)
    other.load_state_dict(torch.load(buf))
    assert float(other.lambda_) == pytest.approx(0.42)
    assert list(grl.state_dict()) == ["lambda_"]


# ---- schedules and warm start ------------------------------------------------------------------

def test_dann_lambda_schedule():
    assert schedules.dann_lambda(0.0) == 0.0
    assert schedules.dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert schedules.dann_lambda(0.5, gamma=10, lo=0.2, hi=0.8) == pytest.approx(0.2 + 0.6 * (2 / (1 + math.exp(-5)) - 1))
    t = schedules.dann_lambda(torch.tensor([0.0, 0.5, 2.0]))
    torch.testing.assert_close(t, torch.tensor([0.0, 2 / (1 + math.exp(-5)) - 1, 2 / (1 + math.exp(-10)) - 1]))
    with pytest.raises(ValueError):
        schedules.dann_lambda(1.5)
    with pytest.raises(TypeError):
        schedules.dann_lambda("0.5")


def test_annealed_lr():
    assert schedules.annealed_lr(0.0) == pytest.approx(0.01)
    assert schedules.annealed_lr(1.0) == pytest.approx(0.01 / 11**0.75)
    assert schedules.annealed_lr_factor(50, 100) == pytest.approx(1 / 6**0.75)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedules.annealed_lr_factor(s, 100))
    for _ in range(100):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(schedules.annealed_lr(1.0))


def test_warm_start_schedule_and_state():
    ws = grl_cuda.WarmStartGradientReversal(alpha=10.0, lo=0.0, hi=1.0, max_iters=100, auto_step=True)
    x = torch.randn(3, requires_grad=True)
    lambdas = []
    for _ in range(150):
        x.grad = None
        ws(x).sum().backward()
        lambdas.append(-float(x.grad[0]))
    expected = [schedules.dann_lambda(min(i / 100, 1.0)) for i in range(150)]  # apply, then step
    assert lambdas == pytest.approx(expected, abs=1e-6)
    assert lambdas[-1] == pytest.approx(lambdas[100])  # progress never exceeds 1
    state = ws.state_dict()
    assert int(state["num_iter"]) == 150
    fresh = grl_cuda.WarmStartGradientReversal(max_iters=100)
    fresh.load_state_dict(state)
    assert int(fresh.num_iter) == 150 and float(fresh.lambda_) == pytest.approx(lambdas[-1], abs=1e-6)
    ws.eval()
    ws(x)
    assert int(ws.num_iter) == 150  # no stepping in eval mode


# ---- compat ------------------------------------------------------------------------------------

def test_compat_aliases_match_their_originals_semantics():
    x = torch.randn(6, 4)
    up = torch.randn(6, 4)
    # fungtion/DANN: grad.neg() * alpha
    torch.testing.assert_close(grad_of(lambda t: compat.ReverseLayerF.apply(t, 0.3), x, up), up.neg() * 0.3)
    # tllib: grad.neg() * coeff, coeff passed at call time
    torch.testing.assert_close(grad_of(lambda t: compat.GradientReverseLayer()(t, 0.6), x, up), up.neg() * 0.6)
    # pytorch-revgrad: -grad * alpha
    torch.testing.assert_close(grad_of(compat.RevGrad(alpha=2.0), x, up), -up * 2.0)
    # pytorch-adapt: weight buffer
    layer = compat.GradientReversal(weight=0.5)
    assert "weight" in layer.state_dict()
    torch.testing.assert_close(grad_of(layer, x, up), -0.5 * up)


def test_compat_tllib_warm_start_matches_tllib_formula():
    layer = compat.WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=True)
    x = torch.randn(2, requires_grad=True)
    for i in range(5):
        x.grad = None
        layer(x).sum().backward()
        coeff = 2.0 * (1.0 - 0.0) / (1.0 + math.exp(-1.0 * i / 1000)) - (1.0 - 0.0) + 0.0  # tllib's expression
        assert -float(x.grad[0]) == pytest.approx(coeff, abs=1e-6)
    assert layer.iter_num == 5
    # the flat name is tllib's layer: no clamp past max_iters, a settable iter_num, no state
    layer.iter_num = 3000
    x.grad = None
    layer(x).sum().backward()
    assert -float(x.grad[0]) == pytest.approx(2.0 / (1.0 + math.exp(-3.0)) - 1.0, abs=1e-6)  # 0.905
    assert layer.state_dict() == {}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_compat_dtypes(dtype):
    x = torch.randn(8).to(dtype)
    up = torch.randn(8).to(dtype)
    torch.testing.assert_close(grad_of(compat.RevGrad(0.7), x, up), grad_of(lambda t: reference.grad_reverse(t, 0.7), x, up))


# ---- GradientReversalLinear ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_reversal_linear_equals_unfused(device, dtype, lead):
    torch.manual_seed(1)
    fused = grl_cuda.GradientReversalLinear(7, 4, lambda_=0.8).to(device, dtype)
    unfused = nn.Sequential(grl_cuda.GradientReversal(0.8), nn.Linear(7, 4)).to(device, dtype)
    unfused[1].load_state_dict(fused.state_dict())
    x = torch.randn(lead + (7,), device=device).to(dtype)
    up = torch.randn(lead + (4,), device=device).to(dtype)
    outs, grads = [], []
    for module in (fused, unfused):
        xi = x.clone().requires_grad_()
        y = module(xi)
        (y * up).sum().backward()
        outs.append(y)
        params = list(module.parameters())
        grads.append([xi.grad] + [p.grad for p in params])
    tol = dict(rtol=1e-2, atol=1e-2) if dtype in (torch.float16, torch.bfloat16) else {}
    torch.testing.assert_close(outs[0], outs[1], **tol)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b, **tol)


def test_reversal_linear_state_dict_is_linears_and_lambda_updates():
    fused = grl_cuda.GradientReversalLinear(3, 2, lambda_=1.0)
    plain = nn.Linear(3, 2)
    assert set(fused.state_dict()) == set(plain.state_dict()) == {"weight", "bias"}
    plain.load_state_dict(fused.state_dict())
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3)
    up = torch.randn(4, 2)
    for lam in (0.25, torch.tensor(0.5)):  # host value (GEMM alpha) and tensor value
        fused.lambda_ = lam
        expected = -float(lam) * (up @ fused.weight.detach())
        torch.testing.assert_close(grad_of(fused, x, up), expected)


def test_reversal_linear_reads_lambda_from_its_buffer_at_backward(device):
    # Every way of changing the buffer counts, not only set_lambda: a value cached
    # on the side would be silently stale (and baked into a captured CUDA graph).
    fused = grl_cuda.GradientReversalLinear(3, 2, lambda_=1.0).to(device)
    x = torch.randn(4, 3, device=device)
    up = torch.randn(4, 2, device=device)
    weight = fused.weight.detach()
    with torch.no_grad():
        fused.lambda_.fill_(0.25)
    torch.testing.assert_close(grad_of(fused, x, up), -0.25 * (up @ weight))
    fused.lambda_.copy_(torch.tensor(-0.5))
    torch.testing.assert_close(grad_of(fused, x, up), 0.5 * (up @ weight))
    xi = x.clone().requires_grad_()
    y = fused(xi)
    fused.set_lambda(3.0)  # lambda is read when the backward runs, as GradientReversal's
    (y * up).sum().backward()
    torch.testing.assert_close(xi.grad, -3.0 * (up @ weight))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_reversal_linear_cuda_graph_replays_the_current_lambda():
    fused = grl_cuda.GradientReversalLinear(16, 8, lambda_=1.0).cuda()
    x = torch.randn(32, 16, device="cuda", requires_grad=True)
    up = torch.randn(32, 8, device="cuda")
    static_grad = torch.empty_like(x)

    def step():
        x.grad = None
        (fused(x) * up).sum().backward()
        static_grad.copy_(x.grad)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    fused.set_lambda(0.25)
    graph.replay()
    torch.testing.assert_close(static_grad, -0.25 * (up @ fused.weight.detach()))


def test_reversal_linear_double_backward():
    fused = grl_cuda.GradientReversalLinear(3, 2, lambda_=0.5).double()
    unfused = nn.Sequential(grl_cuda.GradientReversal(0.5), nn.Linear(3, 2)).double()
    unfused[1].load_state_dict(fused.state_dict())
    x = torch.randn(4, 3, dtype=torch.float64)
    results = []
    for module in (fused, unfused):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad((module(xi) ** 2).sum(), xi, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), xi)
        results.append((g, gg))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


# ---- DomainDiscriminator / DomainAdversarialLoss -------------------------------------------------

def test_domain_discriminator_shapes():
    d = grl_cuda.DomainDiscriminator(256, hidden=(1024, 1024), batch_norm=True)
    linears = [m for m in d if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 1024), (1024, 1024), (1024, 1)]
    assert d(torch.randn(8, 256)).shape == (8, 1)
    mnist = grl_cuda.DomainDiscriminator(768, hidden=(100,), fused_grl=True)
    assert isinstance(mnist[0], grl_cuda.GradientReversalLinear) and mnist.grl is mnist[0]
    with pytest.raises(ValueError):
        grl_cuda.DomainDiscriminator(0)


@pytest.mark.parametrize("fused", [False, True])
def test_domain_adversarial_loss_equals_unfused_composition(fused):
    torch.manual_seed(0)
    disc = grl_cuda.DomainDiscriminator(16, hidden=(32,), fused_grl=fused, lambda_=0.7)
    grl = None if fused else grl_cuda.GradientReversal(0.7)
    dal = grl_cuda.DomainAdversarialLoss(disc, grl=grl)
    f_s = torch.randn(6, 16, requires_grad=True)
    f_t = torch.randn(10, 16, requires_grad=True)
    loss = dal(f_s, f_t)
    loss.backward()
    grads = [f_s.grad.clone(), f_t.grad.clone()] + [p.grad.clone() for p in disc.parameters()]
    # unfused: reversal, discriminator, tllib's 0.5 * (mean source BCE + mean target BCE)
    for t in [f_s, f_t, *disc.parameters()]:
        t.grad = None
    f = reference.grad_reverse(torch.cat([f_s, f_t]), 0.7)
    if fused:
        plain = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        plain.load_state_dict(disc.state_dict())
        params = list(plain.parameters())
        d = plain(f)
    else:
        params = list(disc.parameters())
        d = disc(f)
    ref = 0.5 * (nn.functional.binary_cross_entropy_with_logits(d[:6], torch.zeros(6, 1))
                 + nn.functional.binary_cross_entropy_with_logits(d[6:], torch.ones(10, 1)))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads, [f_s.grad, f_t.grad] + [p.grad for p in params]):
        torch.testing.assert_close(a, b)
    expected_acc = 100.0 * float(torch.cat([d[:6] <= 0, d[6:] > 0]).float().mean())
    assert float(dal.domain_discriminator_accuracy) == pytest.approx(expected_acc)


def test_domain_adversarial_loss_bad_input():
    dal = grl_cuda.DomainAdversarialLoss(grl_cuda.DomainDiscriminator(4, hidden=(8,)))
    with pytest.raises(ValueError, match="both domains"):
        dal(torch.randn(0, 4), torch.randn(3, 4))
    with pytest.raises(TypeError):
        dal(torch.randn(2, 4), [1, 2])


def test_reversal_linear_under_autocast_matches_unfused():
    fused = grl_cuda.GradientReversalLinear(8, 4, lambda_=0.5)
    unfused = nn.Sequential(grl_cuda.GradientReversal(0.5), nn.Linear(8, 4))
    unfused[1].load_state_dict(fused.state_dict())
    x = torch.randn(3, 8)
    grads = []
    for module in (fused, unfused):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(xi)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-2)
