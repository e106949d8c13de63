"""grl_cuda.compat.tllib against tllib (thuml/Transfer-Learning-Library).

tllib is not installed here: its behaviour is restated below from its documented
formulas and layer layout (tllib/modules/grl.py, tllib/modules/domain_discriminator.py,
tllib/alignment/dann.py, tllib/utils/metric), written for these tests, and our
modules are run side by side with that restatement: per call, and for whole runs
of several thousand steps.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import grl_cuda
from grl_cuda import compat
from grl_cuda.compat import tllib as ours

from tests.utils import FLOAT_DTYPES


# ---- tllib, restated ---------------------------------------------------------------------------

def tllib_coeff(i, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000):
    """tllib's warm-start coefficient at iteration i (float64, no clamp)."""
    return float(2.0 * (hi - lo) / (1.0 + np.exp(-alpha * i / max_iters)) - (hi - lo) + lo)


class RefReverse(torch.autograd.Function):
    """tllib's reversal: the forward multiplies by 1.0 (a copy), the backward negates and scales."""

    @staticmethod
    def forward(ctx, x, coeff=1.0):
        ctx.coeff = coeff
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        return g.neg() * ctx.coeff, None


class RefWarmStart(nn.Module):
    def __init__(self, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000.0, auto_step=False):
        super().__init__()
        self.alpha, self.lo, self.hi, self.max_iters, self.auto_step = alpha, lo, hi, max_iters, auto_step
        self.iter_num = 0

    def forward(self, x):
        c = tllib_coeff(self.iter_num, self.alpha, self.lo, self.hi, self.max_iters)
        if self.auto_step:
            self.iter_num += 1
        return RefReverse.apply(x, c)


class RefDomainDiscriminator(nn.Sequential):
    """tllib's DomainDiscriminator layout (its last layer is constructed first)."""

    def __init__(self, in_feature, hidden_size, batch_norm=True, sigmoid=True):
        last = nn.Sequential(nn.Linear(hidden_size, 1), nn.Sigmoid()) if sigmoid else nn.Linear(hidden_size, 2)
        if batch_norm:
            layers = [nn.Linear(in_feature, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(),
                      nn.Linear(hidden_size, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU()]
        else:
            layers = [nn.Linear(in_feature, hidden_size), nn.ReLU(inplace=True), nn.Dropout(0.5),
                      nn.Linear(hidden_size, hidden_size), nn.ReLU(inplace=True), nn.Dropout(0.5)]
        super().__init__(*layers, last)

    def get_parameters(self):
        return [{"params": self.parameters(), "lr": 1.0}]


ref_discriminator = RefDomainDiscriminator


def ref_binary_accuracy(prob, label):
    with torch.no_grad():
        n = label.size(0)
        correct = (prob >= 0.5).float().t().reshape(-1).eq(label.view(-1)).float().sum()
        return correct.mul_(100.0 / n)


class RefDomainAdversarialLoss(nn.Module):
    """tllib's DANN loss: source label 1, target 0, probability BCE, 0.5 * (source + target)."""

    def __init__(self, domain_discriminator, reduction="mean", grl=None):
        super().__init__()
        self.grl = RefWarmStart(alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=True) if grl is None else grl
        self.domain_discriminator = domain_discriminator
        self.reduction = reduction
        self.domain_discriminator_accuracy = None

    def forward(self, f_s, f_t, w_s=None, w_t=None):
        d = self.domain_discriminator(self.grl(torch.cat((f_s, f_t), dim=0)))
        d_s, d_t = d.chunk(2, dim=0)
        y_s = torch.ones((f_s.size(0), 1)).to(f_s.device)
        y_t = torch.zeros((f_t.size(0), 1)).to(f_t.device)
        self.domain_discriminator_accuracy = 0.5 * (ref_binary_accuracy(d_s, y_s) + ref_binary_accuracy(d_t, y_t))
        w_s = torch.ones_like(y_s) if w_s is None else w_s
        w_t = torch.ones_like(y_t) if w_t is None else w_t
        return 0.5 * (F.binary_cross_entropy(d_s, y_s, weight=w_s.view_as(d_s), reduction=self.reduction)
                      + F.binary_cross_entropy(d_t, y_t, weight=w_t.view_as(d_t), reduction=self.reduction))


def tllib_keys(batch_norm, sigmoid):
    """state_dict keys of tllib's DomainDiscriminator, spelled out."""
    if batch_norm:
        keys = []
        for i in (0, 3):
            keys += [f"{i}.weight", f"{i}.bias"]
            bn = i + 1
            keys += [f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var", f"{bn}.num_batches_tracked"]
    else:
        keys = ["0.weight", "0.bias", "3.weight", "3.bias"]
    keys += ["6.0.weight", "6.0.bias"] if sigmoid else ["6.weight", "6.bias"]
    return keys


def twin_discriminators(in_feature=6, hidden=8, batch_norm=True, sigmoid=True, dtype=torch.float32, device="cpu"):
    torch.manual_seed(3)
    ref = ref_discriminator(in_feature, hidden, batch_norm, sigmoid).to(device, dtype)
    mine = ours.DomainDiscriminator(in_feature, hidden, batch_norm=batch_norm, sigmoid=sigmoid).to(device, dtype)
    mine.load_state_dict(ref.state_dict(), strict=True)
    return ref, mine


# ---- the reversal -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("coeff", [1.0, 0.3, 0.123456789, 2.5, -0.7, 0.0])
def test_gradient_reverse_bitwise_equals_tllib(device, dtype, coeff):
    x = torch.randn(257, 3, device=device).to(dtype)
    up = torch.randn(257, 3, device=device).to(dtype)
    grads = []
    for fn in (RefReverse.apply, ours.GradientReverseFunction.apply, ours.GradientReverseLayer(),
               compat.GradientReverseLayer()):
        xi = x.clone().requires_grad_()
        y = fn(xi, coeff)
        assert torch.equal(y, x)
        y.backward(up)
        grads.append(xi.grad)
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


def test_gradient_reverse_default_coeff_and_forward_copy():
    x = torch.randn(5, requires_grad=True)
    for fn in (ours.GradientReverseFunction.apply, ours.GradientReverseLayer()):
        y = fn(x)
        assert y.data_ptr() != x.data_ptr()  # tllib's forward is x * 1.0: a new tensor
        y.mul_(2.0)  # in place on the output is allowed there, so here too (a view would be refused)
        assert not torch.equal(y, x)
        x.grad = None
        y.sum().backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, -2.0))


def test_warm_start_whole_run_matches_tllib():
    """Several thousand auto-stepped forwards: the applied coefficient equals tllib's
    at every step (bitwise in the float32 gradient) and keeps rising past max_iters."""
    layer = ours.WarmStartGradientReverseLayer(auto_step=True)  # tllib's defaults: alpha 1, max_iters 1000
    ref = RefWarmStart(auto_step=True)
    x = torch.randn(3)
    up = torch.tensor([1.0, -0.5, 0.25])
    checkpoints = {}
    for step in range(4001):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        layer(a).backward(up)
        ref(b).backward(up)
        assert torch.equal(a.grad, b.grad), step
        if step in (0, 1000, 2000, 3000, 4000):
            checkpoints[step] = -float(a.grad[0])
    assert layer.iter_num == ref.iter_num == 4001
    # the numbers of issue 12: 0.462 at step 1000, 0.762 at 2000, 0.905 at 3000 (no clamp)
    assert checkpoints[0] == 0.0
    assert checkpoints[1000] == pytest.approx(0.462, abs=5e-4)
    assert checkpoints[2000] == pytest.approx(0.762, abs=5e-4)
    assert checkpoints[3000] == pytest.approx(0.905, abs=5e-4)
    assert checkpoints[4000] == pytest.approx(math.tanh(2.0), abs=1e-6)
    assert checkpoints[1000] < checkpoints[2000] < checkpoints[3000] < checkpoints[4000] < 1.0


@pytest.mark.parametrize("kwargs", [dict(), dict(alpha=10.0, lo=0.1, hi=0.9, max_iters=500),
                                    dict(alpha=2, lo=-1, hi=2, max_iters=37)])
def test_warm_start_coefficient_formula(kwargs):
    layer = ours.WarmStartGradientReverseLayer(**kwargs)
    for i in (0, 1, 17, 499, 500, 1000, 12345, 10**6):
        layer.iter_num = i  # settable, as tllib's plain attribute
        assert layer.coefficient() == tllib_coeff(i, **kwargs)
        x = torch.randn(4, dtype=torch.float64, requires_grad=True)
        layer(x).sum().backward()
        assert torch.equal(x.grad, torch.full_like(x, 1.0).neg() * tllib_coeff(i, **kwargs))
        assert layer.iter_num == i  # auto_step defaults to False


def test_warm_start_steps_and_state():
    layer = ours.WarmStartGradientReverseLayer(auto_step=False)
    layer.step()
    layer.step()
    assert layer.iter_num == 2
    assert layer.state_dict() == {}  # tllib keeps iter_num outside the state_dict
    layer.load_state_dict(RefWarmStart().state_dict(), strict=True)
    RefWarmStart().load_state_dict(layer.state_dict(), strict=True)
    # auto_step steps on every forward, in eval mode too (as tllib's)
    auto = ours.WarmStartGradientReverseLayer(auto_step=True).eval()
    auto(torch.randn(2))
    assert auto.iter_num == 1
    assert compat.WarmStartGradientReverseLayer is ours.WarmStartGradientReverseLayer
    assert compat.GradientReverseLayer is ours.GradientReverseLayer
    # the default max_iters is tllib's float 1000.
    assert ours.WarmStartGradientReverseLayer().max_iters == 1000.0


def test_ours_saturates_but_the_compat_layer_does_not():
    """grl_cuda's own WarmStartGradientReversal keeps its clamp (documented as ours);
    the compat layer must not inherit it."""
    own = grl_cuda.WarmStartGradientReversal(alpha=1.0, max_iters=1000)
    for _ in range(2000):
        own.step()
    tl = ours.WarmStartGradientReverseLayer()
    tl.iter_num = 2000
    assert float(own.lambda_) == pytest.approx(tllib_coeff(1000), abs=1e-6)
    assert tl.coefficient() == pytest.approx(0.762, abs=5e-4)


@pytest.mark.parametrize("bad, exc, phrase", [
    (dict(max_iters=0), ValueError, "max_iters must be positive"),
    (dict(max_iters=-5.0), ValueError, "max_iters must be positive"),
    (dict(max_iters=float("inf")), ValueError, "max_iters must be finite"),
    (dict(alpha=float("nan")), ValueError, "alpha must be finite"),
    (dict(lo="0"), TypeError, "lo must be a real number"),
    (dict(auto_step=1), TypeError, "auto_step must be a bool"),
])
def test_warm_start_rejects_bad_arguments(bad, exc, phrase):
    with pytest.raises(exc, match=phrase):
        ours.WarmStartGradientReverseLayer(**bad)


# ---- DomainDiscriminator -------------------------------------------------------------------------

@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("sigmoid", [True, False])
def test_discriminator_layout_keys_and_strict_loading(batch_norm, sigmoid):
    torch.manual_seed(7)
    ref = ref_discriminator(5, 9, batch_norm, sigmoid)
    torch.manual_seed(7)
    mine = ours.DomainDiscriminator(in_feature=5, hidden_size=9, batch_norm=batch_norm, sigmoid=sigmoid)
    assert list(mine.state_dict()) == list(ref.state_dict()) == tllib_keys(batch_norm, sigmoid)
    assert [type(m) for m in mine.modules()][1:] == [type(m) for m in ref.modules()][1:]
    # same seed, same construction order: the same initial weights
    for k, v in ref.state_dict().items():
        assert torch.equal(mine.state_dict()[k], v), k
    # strict loading both ways, with checkpoints built from tllib's key names
    ckpt = {k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v + 3  # running_var must stay positive
            for k, v in ref.state_dict().items()}
    mine.load_state_dict(ckpt, strict=True)
    ref.load_state_dict(mine.state_dict(), strict=True)
    x = torch.randn(6, 5)
    mine.eval(), ref.eval()
    assert torch.equal(mine(x), ref(x))
    groups = mine.get_parameters()
    assert len(groups) == 1 and groups[0]["lr"] == 1.0
    assert [p.data_ptr() for p in groups[0]["params"]] == [p.data_ptr() for p in mine.parameters()]


def test_discriminator_modules_match_tllib():
    mine = ours.DomainDiscriminator(4, 3)
    ref = ref_discriminator(4, 3)
    assert repr(mine).split("\n", 1)[1] == repr(ref).split("\n", 1)[1]  # same layers, same settings
    mine_d = ours.DomainDiscriminator(4, 3, batch_norm=False, sigmoid=False)
    ref_d = ref_discriminator(4, 3, batch_norm=False, sigmoid=False)
    assert repr(mine_d).split("\n", 1)[1] == repr(ref_d).split("\n", 1)[1]


def test_discriminator_logits_are_before_the_sigmoid():
    ref, mine = twin_discriminators()
    mine.eval(), ref.eval()
    x = torch.randn(5, 6)
    assert torch.equal(torch.sigmoid(mine.logits(x)), ref(x))
    with pytest.raises(ValueError, match="sigmoid=True"):
        ours.DomainDiscriminator(6, 8, sigmoid=False).logits(x)


@pytest.mark.parametrize("bad, exc, phrase", [
    (dict(in_feature=0, hidden_size=4), ValueError, "in_feature must be an int >= 1"),
    (dict(in_feature=4, hidden_size=2.5), TypeError, "hidden_size must be an int"),
    (dict(in_feature=True, hidden_size=4), TypeError, "in_feature must be an int"),
    (dict(in_feature=4, hidden_size=4, batch_norm="yes"), TypeError, "batch_norm must be a bool"),
])
def test_discriminator_rejects_bad_arguments(bad, exc, phrase):
    with pytest.raises(exc, match=phrase):
        ours.DomainDiscriminator(**bad)


def test_discriminator_accepts_numpy_ints():
    d = ours.DomainDiscriminator(np.int64(4), np.int32(3))
    assert d[0].in_features == 4 and d[0].out_features == 3


# ---- DomainAdversarialLoss -----------------------------------------------------------------------

def run_both(ref_loss, my_loss, f_s, f_t, *weights):
    out = []
    for loss_fn in (ref_loss, my_loss):
        a = f_s.clone().requires_grad_()
        b = f_t.clone().requires_grad_()
        value = loss_fn(a, b, *weights)
        value.sum().backward()
        out.append((value.detach(), a.grad, b.grad, loss_fn.domain_discriminator_accuracy))
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_tllib(device, reduction, weighted):
    ref_d, my_d = twin_discriminators(device=device)
    ref = RefDomainAdversarialLoss(ref_d, reduction=reduction, grl=RefWarmStart(auto_step=True)).to(device)
    mine = ours.DomainAdversarialLoss(my_d, reduction=reduction).to(device)  # default grl: tllib's warm start
    weights = (torch.rand(8, device=device), torch.rand(8, device=device)) if weighted else ()
    for step in range(3):
        ref.grl.iter_num = mine.grl.iter_num = 400 * step + 250  # a non-zero coefficient
        f_s, f_t = torch.randn(8, 6, device=device), torch.randn(8, 6, device=device) + 0.5
        (rv, rgs, rgt, racc), (mv, mgs, mgt, macc) = run_both(ref, mine, f_s, f_t, *weights)
        assert mv.shape == rv.shape
        torch.testing.assert_close(mv, rv, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mgs, rgs, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(mgt, rgt, rtol=1e-4, atol=1e-7)
        assert torch.is_tensor(macc) and macc.dim() == 0 and torch.equal(macc, racc)
        assert mine.grl.iter_num == ref.grl.iter_num
    # the discriminator's parameters got the same gradients
    for (name, p), q in zip(my_d.named_parameters(), ref_d.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_loss_uses_the_fused_loss_on_our_discriminator(monkeypatch):
    calls = []
    real = ours.domain_bce_with_logits
    monkeypatch.setattr(ours, "domain_bce_with_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    loss = ours.DomainAdversarialLoss(ours.DomainDiscriminator(4, 5))
    loss(torch.randn(3, 4), torch.randn(3, 4))
    assert calls == [1]
    # a foreign discriminator, or ours observed by a hook, gets the probability BCE
    calls.clear()
    foreign = ours.DomainAdversarialLoss(nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()))
    foreign(torch.randn(3, 4), torch.randn(3, 4))
    hooked = ours.DomainDiscriminator(4, 5)
    hooked[-1][1].register_forward_hook(lambda m, i, o: None)
    ours.DomainAdversarialLoss(hooked)(torch.randn(3, 4), torch.randn(3, 4))
    assert calls == []


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_foreign_discriminator_is_bitwise_tllib(reduction):
    torch.manual_seed(1)
    foreign = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 1), nn.Sigmoid())
    ref = RefDomainAdversarialLoss(foreign, reduction=reduction, grl=RefWarmStart(auto_step=True))
    mine = ours.DomainAdversarialLoss(foreign, reduction=reduction)
    ref.grl.iter_num = mine.grl.iter_num = 1500
    f_s, f_t = torch.randn(5, 6), torch.randn(5, 6)
    w = (torch.rand(5), torch.rand(5))
    for weights in ((), w):
        (rv, rgs, rgt, racc), (mv, mgs, mgt, macc) = run_both(ref, mine, f_s, f_t, *weights)
        assert torch.equal(mv, rv) and torch.equal(mgs, rgs) and torch.equal(mgt, rgt) and torch.equal(macc, racc)


def test_hooked_discriminator_takes_the_exact_path():
    ref_d, my_d = twin_discriminators()
    seen = []
    my_d.register_forward_hook(lambda m, i, o: seen.append(o))
    ref = RefDomainAdversarialLoss(ref_d, grl=RefWarmStart(auto_step=True))
    mine = ours.DomainAdversarialLoss(my_d)
    (rv, *_), (mv, *_) = run_both(ref, mine, torch.randn(4, 6), torch.randn(4, 6))
    assert len(seen) == 1 and seen[0].min() >= 0 and seen[0].max() <= 1  # the hook saw probabilities
    assert torch.equal(mv, rv)


def test_loss_stable_where_tllib_clamps():
    """Logits far past float32's sigmoid range: tllib's terms clamp at 100 and its
    gradient vanishes; the fused loss keeps the true value and gradient."""
    ref_d, my_d = twin_discriminators(batch_norm=False)
    for d in (ref_d, my_d):
        d.eval()
        with torch.no_grad():
            d[3].weight.zero_()
            d[3].bias.fill_(1.0)
            d[-1][0].weight.fill_(1.0)
            d[-1][0].bias.fill_(-158.0)  # z = 8 * 1 - 158 = -150 for every row
    ref = RefDomainAdversarialLoss(ref_d, grl=nn.Identity())
    mine = ours.DomainAdversarialLoss(my_d, grl=nn.Identity())
    f = torch.randn(4, 6)
    value = mine(f, f)
    # source rows (label 1) at z = -150: log(1 + e^150) = 150; target rows: ~0
    assert value.item() == pytest.approx(0.5 * 150.0, rel=1e-6)
    assert ref(f, f).item() == pytest.approx(0.5 * 100.0, rel=1e-6)  # tllib's clamp
    value.backward()
    assert my_d[-1][0].bias.grad.abs().item() == pytest.approx(0.5, rel=1e-5)  # d/dz = -0.5 for the source half
    ref(f, f).backward()
    assert ref_d[-1][0].bias.grad.abs().item() == 0.0  # tllib's gradient vanished


def test_loss_two_way_discriminator():
    ref_d, my_d = twin_discriminators(sigmoid=False)
    mine = ours.DomainAdversarialLoss(my_d, sigmoid=False)
    mine.grl.iter_num = 700
    f_s, f_t = torch.randn(6, 6), torch.randn(6, 6)
    value = mine(f_s, f_t)
    ref_d.train()
    d = ref_d(torch.cat((f_s, f_t)))
    label = torch.cat((torch.ones(6), torch.zeros(6))).long()
    torch.testing.assert_close(value, F.cross_entropy(d, label))
    acc = mine.domain_discriminator_accuracy
    assert isinstance(acc, list) and len(acc) == 1  # tllib's accuracy() returns a list
    assert torch.equal(acc[0], (d.argmax(1) == label).float().sum() * (100.0 / 12))
    w_s, w_t = torch.rand(6), torch.rand(6)
    weighted = ours.DomainAdversarialLoss(my_d, reduction="none", sigmoid=False)(f_s, f_t, w_s, w_t)
    torch.testing.assert_close(weighted, F.cross_entropy(ref_d(torch.cat((f_s, f_t))), label, reduction="none")
                               * torch.cat((w_s, w_t)))


def test_loss_state_dict_is_tllibs():
    ref_d, my_d = twin_discriminators()
    ref = RefDomainAdversarialLoss(ref_d)
    mine = ours.DomainAdversarialLoss(my_d)
    assert list(mine.state_dict()) == list(ref.state_dict()) == ["domain_discriminator." + k for k in tllib_keys(True, True)]
    mine.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(mine.state_dict(), strict=True)
    assert mine.domain_discriminator is my_d and mine.reduction == "mean" and mine.sigmoid is True
    assert isinstance(mine.grl, ours.WarmStartGradientReverseLayer) and mine.grl.auto_step
    assert (mine.grl.alpha, mine.grl.lo, mine.grl.hi, mine.grl.max_iters) == (1.0, 0.0, 1.0, 1000)


def test_loss_accuracy_is_a_percent_tensor():
    loss = ours.DomainAdversarialLoss(ours.DomainDiscriminator(4, 5))
    assert loss.domain_discriminator_accuracy is None
    loss(torch.randn(6, 4), torch.randn(6, 4))
    acc = loss.domain_discriminator_accuracy
    assert 0.0 <= acc.item() <= 100.0 and float(acc) == acc.item()
    total = 0.0
    total += acc * 6  # tllib's example code accumulates it like this (AverageMeter)
    assert float(total / 6) == pytest.approx(acc.item())
    assert f"{acc.item():3.1f}"


def test_loss_unequal_batches_give_each_domains_mean():
    ref_d, my_d = twin_discriminators()
    for d in (ref_d, my_d):
        d.eval()
    mine = ours.DomainAdversarialLoss(my_d, grl=nn.Identity())
    f_s, f_t = torch.randn(3, 6), torch.randn(7, 6)
    p = ref_d(torch.cat((f_s, f_t)))
    expected = 0.5 * (F.binary_cross_entropy(p[:3], torch.ones(3, 1)) + F.binary_cross_entropy(p[3:], torch.zeros(7, 1)))
    torch.testing.assert_close(mine(f_s, f_t), expected)


@pytest.mark.parametrize("make, exc, phrase", [
    (lambda: ours.DomainAdversarialLoss(ours.DomainDiscriminator(4, 5), reduction="avg"), ValueError, "reduction"),
    (lambda: ours.DomainAdversarialLoss(3), TypeError, "domain_discriminator"),
    (lambda: ours.DomainAdversarialLoss(nn.Identity(), sigmoid=None), TypeError, "sigmoid must be a bool"),
    (lambda: ours.DomainAdversarialLoss(nn.Identity())(torch.randn(0, 4), torch.randn(2, 4)), ValueError,
     "both domains need samples"),
    (lambda: ours.DomainAdversarialLoss(nn.Identity())(torch.ones(2, 4, dtype=torch.long), torch.randn(2, 4)),
     TypeError, "f_s must be"),
])
def test_loss_rejects_bad_arguments(make, exc, phrase):
    with pytest.raises(exc, match=phrase):
        make()


# ---- whole runs ----------------------------------------------------------------------------------

@pytest.fixture
def float64_default():
    """tllib builds its labels in the default dtype: a float64 run needs it to be float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """Tiny tensors, thousands of steps: intra-op threads only add barriers (and
    stall badly on a loaded 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("dtype, steps", [(torch.float64, 4000), (torch.float32, 3000)])
def test_whole_run_coefficient_and_loss_match_tllib(dtype, steps, one_thread):
    """A DANN run of thousands of steps with tllib's default warm start (a
    discriminator and the features it reverses into, trained by SGD with momentum).
    At every step tllib's restated loss is evaluated on the same weights and batch
    (its own reversal layer counting its own steps): loss, accuracy, the features'
    gradient (which carries the coefficient) and the discriminator's gradients must
    equal ours. Shadowing each step, rather than training two copies, keeps the
    comparison exact: this adversarial game is chaotic, so two independently
    trained copies drift apart from float rounding alone."""
    old_default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # tllib builds its labels in the default dtype
    try:
        ref_d, my_d = twin_discriminators(in_feature=4, hidden=6, dtype=dtype)
        ref = RefDomainAdversarialLoss(ref_d)
        mine = ours.DomainAdversarialLoss(my_d)
        torch.manual_seed(1)
        feat = nn.Linear(3, 4).to(dtype)
        opt = torch.optim.SGD(list(feat.parameters()) + list(my_d.parameters()), lr=0.02, momentum=0.9)
        gen = torch.Generator().manual_seed(5)
        tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
        coeffs = {}
        worst = {}  # the largest relative difference of each compared quantity over the run
        ref_state = list(ref_d.state_dict(keep_vars=True).values())
        my_state = list(my_d.state_dict(keep_vars=True).values())

        def compare(name, a, b, step):
            diff = float(((a - b).abs() / (b.abs() + tol["atol"] / tol["rtol"])).max())
            if diff > worst.get(name, (-1.0, 0))[0]:
                worst[name] = (diff, step)

        for step in range(steps):
            x_s = torch.randn(16, 3, generator=gen).to(dtype)
            x_t = (torch.randn(16, 3, generator=gen) * 1.5 + 0.5).to(dtype)
            with torch.no_grad():  # the same weights and BatchNorm statistics
                for dst, src in zip(ref_state, my_state):
                    dst.copy_(src)
                f_s, f_t = feat(x_s), feat(x_t)
            g_ref = [f_s.clone().requires_grad_(), f_t.clone().requires_grad_()]
            ref_d.zero_grad()
            ref_value = ref(*g_ref)
            ref_value.backward()
            opt.zero_grad()
            a_s, a_t = feat(x_s), feat(x_t)
            a_s.retain_grad()
            a_t.retain_grad()
            value = mine(a_s, a_t)
            value.backward()
            compare("loss", value.detach(), ref_value.detach(), step)
            assert torch.equal(mine.domain_discriminator_accuracy, ref.domain_discriminator_accuracy), step
            compare("source feature gradient", a_s.grad, g_ref[0].grad, step)
            compare("target feature gradient", a_t.grad, g_ref[1].grad, step)
            for i, (p, q) in enumerate(zip(my_d.parameters(), ref_d.parameters())):
                compare(f"discriminator parameter {i} gradient", p.grad, q.grad, step)
            if step in (0, 999, 1999, 2999, 3999):
                coeffs[step + 1] = mine.grl.coefficient()  # the coefficient the next step applies
            opt.step()
        bad = {k: v for k, v in worst.items() if v[0] > tol["rtol"]}
        assert not bad, f"(relative difference, step) beyond {tol['rtol']}: {bad}"
        assert mine.grl.iter_num == ref.grl.iter_num == steps
        for i, c in coeffs.items():
            assert c == tllib_coeff(i)
        assert coeffs[1000] == pytest.approx(0.462, abs=5e-4) and coeffs[3000] == pytest.approx(0.905, abs=5e-4)
    finally:
        torch.set_default_dtype(old_default)


class _Backbone(nn.Module):
    def __init__(self, out_features=5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, x):
        return self.net(x)


class _ImageClassifier(nn.Module):
    """tllib's ImageClassifier shape: backbone -> bottleneck (Linear, BN, ReLU) -> head; returns (y, f)."""

    def __init__(self, backbone, num_classes, bottleneck_dim=6):
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(nn.Linear(backbone.out_features, bottleneck_dim),
                                        nn.BatchNorm1d(bottleneck_dim), nn.ReLU())
        self.head = nn.Linear(bottleneck_dim, num_classes)
        self.features_dim = bottleneck_dim

    def forward(self, x):
        f = self.bottleneck(self.backbone(x))
        y = self.head(f)
        return (y, f) if self.training else y

    def get_parameters(self, base_lr=1.0):
        return [{"params": self.backbone.parameters(), "lr": 0.1 * base_lr},
                {"params": self.bottleneck.parameters(), "lr": base_lr},
                {"params": self.head.parameters(), "lr": base_lr}]


def tllib_dann_recipe(DomainDiscriminator, DomainAdversarialLoss, iters=300, dtype=torch.float64):
    """tllib's examples/domain_adaptation/image_classification/dann.py training loop,
    restated at toy scale: only the two imported classes change between runs."""
    torch.manual_seed(0)
    lr, lr_gamma, lr_decay, trade_off, batch = 0.01, 0.001, 0.75, 1.0, 8
    classifier = _ImageClassifier(_Backbone(), num_classes=3).to(dtype)
    domain_discri = DomainDiscriminator(in_feature=classifier.features_dim, hidden_size=7).to(dtype)
    optimizer = torch.optim.SGD(classifier.get_parameters() + domain_discri.get_parameters(), lr,
                                momentum=0.9, weight_decay=1e-3, nesterov=True)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: lr * (1.0 + lr_gamma * float(x)) ** (-lr_decay))
    domain_adv = DomainAdversarialLoss(domain_discri)
    gen = torch.Generator().manual_seed(1)
    losses_sum = accs_sum = 0.0
    log = []
    classifier.train()
    domain_adv.train()
    for i in range(iters):
        x_s = torch.randn(batch, 4, generator=gen, dtype=dtype)
        labels_s = torch.randint(0, 3, (batch,), generator=gen)
        x_t = torch.randn(batch, 4, generator=gen, dtype=dtype) + 1.0
        x = torch.cat((x_s, x_t), dim=0)
        y, f = classifier(x)
        y_s, _ = y.chunk(2, dim=0)
        f_s, f_t = f.chunk(2, dim=0)
        cls_loss = F.cross_entropy(y_s, labels_s)
        transfer_loss = domain_adv(f_s, f_t)
        domain_acc = domain_adv.domain_discriminator_accuracy
        loss = cls_loss + transfer_loss * trade_off
        losses_sum += loss.item() * x_s.size(0)  # AverageMeter.update(loss.item(), n)
        accs_sum += domain_acc.item() * x_s.size(0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        if i % 50 == 0:
            log.append((loss.item(), domain_acc.item(), "{:3.1f}".format(domain_acc.item())))
    return log, losses_sum, accs_sum, classifier.state_dict(), domain_discri.state_dict(), domain_adv.grl.iter_num


def test_tllib_dann_recipe_runs_unchanged_with_the_import_swapped(float64_default, one_thread):
    ref = tllib_dann_recipe(ref_discriminator, RefDomainAdversarialLoss)
    mine = tllib_dann_recipe(ours.DomainDiscriminator, ours.DomainAdversarialLoss)
    assert mine[5] == ref[5] == 300
    for (rl, ra, rs), (ml, ma, ms) in zip(ref[0], mine[0]):
        assert ml == pytest.approx(rl, rel=1e-9) and ma == ra and ms == rs
    assert mine[1] == pytest.approx(ref[1], rel=1e-9) and mine[2] == ref[2]
    for sd_ref, sd_mine in ((ref[3], mine[3]), (ref[4], mine[4])):
        assert list(sd_mine) == list(sd_ref)
        for k in sd_ref:
            torch.testing.assert_close(sd_mine[k], sd_ref[k], rtol=1e-8, atol=1e-10, msg=k)
