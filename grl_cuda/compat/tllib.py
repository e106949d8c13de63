"""tllib (thuml/Transfer-Learning-Library) drop-in: the same names, signatures,
defaults, state_dict keys and numbers, for a whole training run.

=====================================================  ==========================================
tllib                                                  grl_cuda.compat.tllib
=====================================================  ==========================================
``tllib.modules.grl.GradientReverseFunction``          ``GradientReverseFunction``
``tllib.modules.grl.GradientReverseLayer``             ``GradientReverseLayer``
``tllib.modules.grl.WarmStartGradientReverseLayer``    ``WarmStartGradientReverseLayer``
``tllib.modules.domain_discriminator.DomainDiscriminator``  ``DomainDiscriminator``
``tllib.alignment.dann.DomainAdversarialLoss``         ``DomainAdversarialLoss``
=====================================================  ==========================================

What matches, observably:

- Reversal: the forward returns a copy of its input (tllib's ``input * 1.0``: the
  output may be modified in place), the backward ``-coeff * grad``, bitwise the
  same as tllib's ``grad.neg() * coeff`` in float32/float64/float16/bfloat16.
- Warm start: tllib's coefficient ``2 (hi - lo) / (1 + exp(-alpha i / max_iters))
  - (hi - lo) + lo`` evaluated in float64 at every step, the same expression and
  order, so the same float; the progress ``i / max_iters`` is NOT clamped (with the
  defaults the coefficient is 0.462 at step 1000, 0.762 at 2000, 0.905 at 3000 and
  keeps rising toward ``hi``). ``iter_num`` is a plain, settable attribute that is
  not saved in ``state_dict`` (as tllib's); ``auto_step`` steps on every forward,
  training or not (as tllib's). This differs from grl_cuda's own
  :class:`grl_cuda.WarmStartGradientReversal`, whose progress stops at 1.
- Discriminator: tllib's layers in tllib's order (the final layer is built first,
  as tllib does, so the same seed gives the same initial weights), hence the same
  ``state_dict`` keys; ``get_parameters()`` returns ``[{"params": ..., "lr": 1.}]``.
- Loss: source is label 1, target label 0; ``0.5 * (BCE_source + BCE_target)``
  with tllib's reductions and per-sample weights ``w_s``/``w_t``;
  ``domain_discriminator_accuracy`` is tllib's 0-dim tensor in percent (``0.5 *
  (source accuracy + target accuracy)``, a probability >= 0.5 counting as source).
  The default ``grl`` is tllib's ``WarmStartGradientReverseLayer(alpha=1, lo=0,
  hi=1, max_iters=1000, auto_step=True)``. ``sigmoid=False`` (newer tllib) takes
  2-way logits and cross-entropy, with tllib's list-of-one-tensor accuracy.

How the loss is computed: when the discriminator is this module's
``DomainDiscriminator(sigmoid=True)`` (unmodified, no hooks on it or its final
Sigmoid) the net is run up to its final Sigmoid and grl_cuda's fused
``domain_bce_with_logits`` takes the logits. ``BCE(sigmoid(z), 1) = BCE(-z, 0)``,
so the value is tllib's up to float rounding, and stays exact where tllib's
``log`` saturates: tllib clamps each term at 100 and its gradient vanishes once
``sigmoid(z)`` rounds to 0 or 1 (``|z|`` > ~17 in float32); ours keeps the true
loss and gradient there. With ``w_s``/``w_t`` it uses
``F.binary_cross_entropy_with_logits`` with those weights. Any other
discriminator gets tllib's exact ``F.binary_cross_entropy`` on its probabilities.

Under ``torch.compile`` the warm start's coefficient is a Python float computed
from the ``iter_num`` attribute, so each step recompiles, as tllib's layer does;
for compiled loops use :class:`grl_cuda.WarmStartGradientReversal` (buffers,
updated in place) instead.

Where tllib fails, we do not: source and target batches of different sizes (tllib
splits the discriminator output in halves and raises a size mismatch; we give
each domain's mean) and autocast (tllib's probability BCE is refused under
autocast; the fused loss computes in float32).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from .._validation import check_bool, check_float_tensor, check_int, check_real

try:  # tllib evaluates its schedule with numpy's exp: the same function gives the same floats
    from numpy import exp as _exp
except ImportError:  # pragma: no cover - numpy is optional for the library
    from math import exp as _exp
from ..functional import GradReverse, domain_bce_with_logits, domain_cross_entropy, grad_reverse

_REDUCTIONS = ("mean", "sum", "none")


# ---- tllib.modules.grl ---------------------------------------------------------------------------

class GradientReverseFunction(GradReverse):
    """``GradientReverseFunction.apply(input, coeff=1.)``: a copy of ``input``
    forward, ``-coeff * grad`` backward."""

    @staticmethod
    def forward(ctx, input, coeff=1.0):
        return GradReverse.forward(ctx, input, coeff, True)


class GradientReverseLayer(nn.Module):
    """``GradientReverseLayer()(input, coeff=1.)``: :class:`GradientReverseFunction` as a module."""

    def forward(self, *input):
        return grad_reverse(*input, copy=True)


class WarmStartGradientReverseLayer(nn.Module):
    """Gradient reversal whose coefficient follows tllib's warm-start schedule

    ``coeff = 2 (hi - lo) / (1 + exp(-alpha * iter_num / max_iters)) - (hi - lo) + lo``

    evaluated at every forward (no clamp: past ``max_iters`` it keeps rising toward
    ``hi``). ``iter_num`` is a plain attribute (settable, not in ``state_dict``);
    ``step()`` adds one; with ``auto_step`` every forward uses the current
    coefficient and then steps.
    """

    def __init__(self, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000.0, auto_step=False):
        super().__init__()
        for name, value in (("alpha", alpha), ("lo", lo), ("hi", hi), ("max_iters", max_iters)):
            check_real(value, name, float32=False)  # checked; kept as given, as tllib keeps it
        if max_iters <= 0:
            raise ValueError(f"grl_cuda: max_iters must be positive, got {max_iters}.")
        self.alpha = alpha
        self.lo = lo
        self.hi = hi
        self.iter_num = 0
        self.max_iters = max_iters
        self.auto_step = check_bool(auto_step, "auto_step")

    def coefficient(self):
        """The coefficient the next forward applies (a Python float)."""
        span = self.hi - self.lo
        # float64 through numpy (when installed), in tllib's order of operations: the same float
        return float(2.0 * span / (1.0 + _exp(-self.alpha * self.iter_num / self.max_iters)) - span + self.lo)

    def forward(self, input):
        coeff = self.coefficient()
        if self.auto_step:
            self.step()
        return grad_reverse(input, coeff, copy=True)

    def step(self):
        """Advance ``iter_num`` by one."""
        self.iter_num += 1


# ---- tllib.modules.domain_discriminator ----------------------------------------------------------

class DomainDiscriminator(nn.Sequential):
    """tllib's domain discriminator: ``in_feature -> hidden_size -> hidden_size -> 1``.

    ``batch_norm=True``: Linear, BatchNorm1d, ReLU, twice; otherwise Linear,
    ReLU(inplace), Dropout(0.5), twice. The last layer is ``Sequential(Linear(hidden,
    1), Sigmoid())`` (a probability, source = 1) or, with ``sigmoid=False``,
    ``Linear(hidden, 2)`` (2-way logits). Module indices, hence ``state_dict`` keys,
    are tllib's.
    """

    def __init__(self, in_feature, hidden_size, batch_norm=True, sigmoid=True):
        in_feature = check_int(in_feature, "in_feature", low=1)
        hidden_size = check_int(hidden_size, "hidden_size", low=1)
        batch_norm = check_bool(batch_norm, "batch_norm")
        sigmoid = check_bool(sigmoid, "sigmoid")
        # The final layer is made first, as tllib does: a seeded run draws the same initial weights.
        if sigmoid:
            final_layer = nn.Sequential(nn.Linear(hidden_size, 1), nn.Sigmoid())
        else:
            final_layer = nn.Linear(hidden_size, 2)
        if batch_norm:
            body = [nn.Linear(in_feature, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(),
                    nn.Linear(hidden_size, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU()]
        else:
            body = [nn.Linear(in_feature, hidden_size), nn.ReLU(inplace=True), nn.Dropout(0.5),
                    nn.Linear(hidden_size, hidden_size), nn.ReLU(inplace=True), nn.Dropout(0.5)]
        super().__init__(*body, final_layer)

    def get_parameters(self):
        """Parameter groups for an optimizer (tllib's convention: learning-rate multiplier 1)."""
        return [{"params": self.parameters(), "lr": 1.0}]

    def logits(self, x):
        """The output before the final Sigmoid (``sigmoid=True`` only): ``sigmoid(logits(x)) == self(x)``."""
        if not _ends_in_sigmoid(self):
            raise ValueError("grl_cuda: logits() needs a DomainDiscriminator(sigmoid=True) whose last layer "
                             "is still Sequential(Linear, Sigmoid).")
        *body, final = self
        for module in body:
            x = module(x)
        return final[0](x)


def _ends_in_sigmoid(net):
    final = net[-1] if len(net) else None
    return type(final) is nn.Sequential and len(final) == 2 and type(final[1]) is nn.Sigmoid


def _has_hooks(m):
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _logits_fn(disc):
    """``disc.logits`` when calling ``disc`` is exactly ``sigmoid(disc.logits(x))`` with
    nothing observing the skipped calls; otherwise None (then tllib's probability path)."""
    if not isinstance(disc, DomainDiscriminator) or type(disc).forward is not nn.Sequential.forward:
        return None
    if not _ends_in_sigmoid(disc) or _has_hooks(disc) or _has_hooks(disc[-1]) or _has_hooks(disc[-1][1]):
        return None
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return None
    return disc.logits


# ---- tllib.utils.metric (what the loss reports) --------------------------------------------------

def _binary_accuracy(prob, label):
    """Percent of rows whose prediction (prob >= 0.5 means label 1) equals ``label``,
    a 0-dim float tensor computed as tllib does (float32 count times 100 / rows)."""
    with torch.no_grad():
        hits = (prob >= 0.5).float().reshape(-1).eq(label.reshape(-1)).float().sum()
        return hits.mul_(100.0 / label.size(0))


def _top1_accuracy(logits, label):
    """tllib's ``accuracy(output, target)`` for top-1: a list holding one 0-dim tensor (percent)."""
    with torch.no_grad():
        _, pred = logits.topk(1, 1, True, True)
        hits = pred.t().eq(label[None])[:1].flatten().sum(dtype=torch.float32)
        return [hits * (100.0 / label.size(0))]


# ---- tllib.alignment.dann ------------------------------------------------------------------------

class DomainAdversarialLoss(nn.Module):
    """tllib's DANN loss: ``loss = dal(f_s, f_t, w_s=None, w_t=None)``.

    ``f_s``/``f_t`` go through ``grl`` and ``domain_discriminator`` in one batch;
    the discriminator outputs the probability of *source* (source label 1, target
    0); the loss is ``0.5 * (BCE(d_s, 1; w_s) + BCE(d_t, 0; w_t))`` with
    ``reduction`` applied to each domain's terms. ``domain_discriminator_accuracy``
    holds the last batch's accuracy in percent (a 0-dim tensor, no host sync).

    Args:
        domain_discriminator: maps (N, F) features to (N, 1) probabilities, or to
            (N, 2) logits with ``sigmoid=False``.
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        grl: the reversal layer; default tllib's warm start
            (``alpha=1, lo=0, hi=1, max_iters=1000, auto_step=True``).
        sigmoid: False for a 2-way discriminator (cross-entropy, source = class 1).
    """

    def __init__(self, domain_discriminator, reduction="mean", grl=None, sigmoid=True):
        super().__init__()
        if not callable(domain_discriminator):
            raise TypeError("grl_cuda: domain_discriminator must be a module (or callable), "
                            f"got {type(domain_discriminator).__name__}.")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"grl_cuda: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        if grl is not None and not callable(grl):
            raise TypeError(f"grl_cuda: grl must be a module (or callable) or None, got {type(grl).__name__}.")
        self.grl = (WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=True)
                    if grl is None else grl)
        self.domain_discriminator = domain_discriminator
        self.sigmoid = check_bool(sigmoid, "sigmoid")
        self.reduction = reduction
        self.domain_discriminator_accuracy = None

    def bce(self, input, target, weight):
        """tllib's ``bce`` helper: ``F.binary_cross_entropy`` with this loss's reduction."""
        return F.binary_cross_entropy(input, target, weight=weight, reduction=self.reduction)

    def forward(self, f_s, f_t, w_s=None, w_t=None):
        check_float_tensor(f_s, "f_s")
        check_float_tensor(f_t, "f_t")
        n_s, n_t = f_s.size(0), f_t.size(0)
        if n_s == 0 or n_t == 0:
            raise ValueError(f"grl_cuda: both domains need samples, got {n_s} source and {n_t} target.")
        f = self.grl(torch.cat((f_s, f_t), dim=0))
        if not self.sigmoid:
            return self._two_way(f, n_s, n_t, w_s, w_t)
        label_s = torch.ones((n_s, 1), device=f_s.device)
        label_t = torch.zeros((n_t, 1), device=f_t.device)
        logits_fn = _logits_fn(self.domain_discriminator)
        if logits_fn is None:
            return self._probability_bce(self.domain_discriminator(f), n_s, n_t, label_s, label_t, w_s, w_t)
        z = logits_fn(f)
        z_s, z_t = z.split((n_s, n_t))
        with torch.no_grad():
            p = torch.sigmoid(z)  # exactly what the discriminator's final Sigmoid would output
            p_s, p_t = p.split((n_s, n_t))
            self.domain_discriminator_accuracy = 0.5 * (_binary_accuracy(p_s, label_s) + _binary_accuracy(p_t, label_t))
        if w_s is None and w_t is None:
            # BCE(sigmoid(z), 1) = BCE(-z, 0): the fused loss (source rows first, label 0)
            # on -z gives tllib's labels; the weights turn its one mean over all rows
            # into the mean of the two domains' means.
            neg = -z
            if self.reduction == "none":
                terms = domain_bce_with_logits(neg, n_s, reduction="none")
                return 0.5 * (terms[:n_s] + terms[n_s:])
            if self.reduction == "sum":
                return domain_bce_with_logits(neg, n_s, weight_source=0.5, weight_target=0.5, reduction="sum")
            n = n_s + n_t
            return domain_bce_with_logits(neg, n_s, weight_source=n / (2.0 * n_s), weight_target=n / (2.0 * n_t))
        if w_s is None:
            w_s = torch.ones_like(label_s)
        if w_t is None:
            w_t = torch.ones_like(label_t)
        loss_s = F.binary_cross_entropy_with_logits(z_s, torch.ones_like(z_s), weight=w_s.view_as(z_s),
                                                    reduction=self.reduction)
        loss_t = F.binary_cross_entropy_with_logits(z_t, torch.zeros_like(z_t), weight=w_t.view_as(z_t),
                                                    reduction=self.reduction)
        return 0.5 * (loss_s + loss_t)

    def _probability_bce(self, d, n_s, n_t, label_s, label_t, w_s, w_t):
        """tllib's computation, for a discriminator we cannot run to its logits."""
        d_s, d_t = d.split((n_s, n_t))
        self.domain_discriminator_accuracy = 0.5 * (_binary_accuracy(d_s, label_s) + _binary_accuracy(d_t, label_t))
        if w_s is None:
            w_s = torch.ones_like(label_s)
        if w_t is None:
            w_t = torch.ones_like(label_t)
        return 0.5 * (self.bce(d_s, label_s, w_s.view_as(d_s)) + self.bce(d_t, label_t, w_t.view_as(d_t)))

    def _two_way(self, f, n_s, n_t, w_s, w_t):
        """``sigmoid=False``: 2-way logits, cross-entropy against source = 1, target = 0."""
        d = self.domain_discriminator(f)
        label = torch.cat((torch.ones((n_s,), device=f.device), torch.zeros((n_t,), device=f.device))).long()
        self.domain_discriminator_accuracy = _top1_accuracy(d, label)
        if w_s is None and w_t is None and self.reduction != "none":
            return domain_cross_entropy(d, label, reduction=self.reduction)  # weights of one: the fused loss
        if w_s is None:
            w_s = torch.ones((n_s,), device=f.device)
        if w_t is None:
            w_t = torch.ones((n_t,), device=f.device)
        loss = domain_cross_entropy(d, label, reduction="none") * torch.cat([w_s, w_t], dim=0)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


__all__ = [
    "GradientReverseFunction",
    "GradientReverseLayer",
    "WarmStartGradientReverseLayer",
    "DomainDiscriminator",
    "DomainAdversarialLoss",
]
