"""nn.Module layers: the reversal, its warm-start schedule, the reversal folded
into a linear layer, the paper's domain discriminator and the domain-adversarial
loss."""

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    check_bool,
    check_float_tensor,
    check_int,
    check_lambda,
    check_module,
    check_positive,
    check_real,
    check_sizes,
)
from .functional import domain_bce_with_logits, grad_reverse


def _write_lambda(buffer, value):
    """Checks `value` and writes it into the lambda buffer in place; returns the
    checked value (a float, or a tensor)."""
    value = check_lambda(value, buffer)
    with torch.no_grad():
        if isinstance(value, torch.Tensor):
            buffer.copy_(value.reshape(()))
        else:
            buffer.fill_(value)
    return value


class _AssignLambda:
    """``module.lambda_ = value`` calls ``set_lambda(value)`` (an in-place update of
    the buffer) instead of replacing the buffer."""

    def __setattr__(self, name, value):
        if name == "lambda_" and "lambda_" in self.__dict__.get("_buffers", {}):
            self.set_lambda(value)
            return
        super().__setattr__(name, value)


class _LambdaBuffer(_AssignLambda, nn.Module):
    """Holds lambda in a float32 buffer named ``lambda_`` (saved in state_dict, moved
    with the module). ``set_lambda`` and ``module.lambda_ = value`` update it in place:
    no new tensor, so torch.compile does not recompile and CUDA graphs see the value."""

    def __init__(self, lambda_, persistent=True):
        super().__init__()
        value = check_lambda(lambda_)
        self.register_buffer("lambda_", torch.tensor(float(value), dtype=torch.float32), persistent=persistent)
        if isinstance(value, torch.Tensor):
            self.set_lambda(value)

    def set_lambda(self, value):
        _write_lambda(self.lambda_, value)
        return self


class GradientReversal(_LambdaBuffer):
    """Gradient reversal layer: identity forward, ``-lambda_ * grad`` backward.

    Args:
        lambda_: initial lambda (float or one-element tensor). Change it with
            ``set_lambda(v)`` or ``layer.lambda_ = v`` between steps: the buffer is
            read when the backward runs (on the device, without a host sync).
        copy: return a fresh tensor rather than a view of the input (only needed if
            the output is modified in place).
    """

    def __init__(self, lambda_=1.0, copy=False):
        super().__init__(lambda_)
        self.copy = check_bool(copy, "copy")

    def forward(self, x):
        return grad_reverse(x, self.lambda_, copy=self.copy)

    def extra_repr(self):
        return f"lambda_={float(self.lambda_):.4g}, copy={self.copy}"


class WarmStartGradientReversal(GradientReversal):
    """Gradient reversal whose lambda follows the DANN schedule
    ``lo + (hi - lo) * (2 / (1 + exp(-alpha * p)) - 1)``, ``p = min(step / max_iters, 1)``.

    The step counter is a buffer (saved in state_dict, so a resumed run continues
    the schedule) and lambda is recomputed on the module's device: no host sync and
    no recompilation under torch.compile. With ``auto_step`` each training-mode
    forward applies the current lambda and then advances the step (tllib's order);
    otherwise call ``step()`` yourself once per training step.

    ``max_iters`` is a positive finite number of steps (int or float); ``alpha``,
    ``lo`` and ``hi`` are finite and within the float32 range (the schedule runs in
    float32).
    """

    def __init__(self, alpha=10.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=False, copy=False):
        max_iters = check_positive(max_iters, "max_iters")
        # the schedule is computed in float32 (the lambda buffer's dtype)
        alpha, lo, hi = (check_real(v, name) for name, v in (("alpha", alpha), ("lo", lo), ("hi", hi)))
        auto_step = check_bool(auto_step, "auto_step")
        super().__init__(lo, copy=copy)
        self.alpha, self.lo, self.hi = alpha, lo, hi
        self.max_iters = max_iters
        self.auto_step = auto_step
        self.register_buffer("num_iter", torch.zeros((), dtype=torch.int64))
        self._refresh_lambda()

    def _lambda_at(self, num_iter):
        p = (num_iter.to(torch.float32) / self.max_iters).clamp(max=1.0)
        return self.lo + (self.hi - self.lo) * (2.0 / (1.0 + torch.exp(-self.alpha * p)) - 1.0)

    def _refresh_lambda(self):
        with torch.no_grad():
            self.lambda_.copy_(self._lambda_at(self.num_iter))

    def step(self):
        with torch.no_grad():
            self.num_iter.add_(1)
        self._refresh_lambda()

    def forward(self, x):
        if not (self.auto_step and self.training):
            return grad_reverse(x, self.lambda_, copy=self.copy)
        if torch.compiler.is_compiling():
            # Inside a compiled graph the backward would read lambda one step late:
            # AOTAutograd's partitioner recomputes saved values in the backward from
            # the graph's inputs after the forward's mutations of them (observed with
            # torch 2.14 even for a clone). Refuse rather than be silently off.
            raise RuntimeError(
                "grl_cuda: WarmStartGradientReversal(auto_step=True) cannot step inside torch.compile. "
                "Use auto_step=False and call .step() once per training step outside the compiled function "
                "(no recompilation: the step counter and lambda are buffers updated in place)."
            )
        # Apply this step's lambda, then advance (tllib's order). The backward reads
        # lambda when it runs, so it gets a snapshot taken before the step.
        lambda_now = self.lambda_.clone()
        self.step()
        return grad_reverse(x, lambda_now, copy=self.copy)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh_lambda()

    def extra_repr(self):
        return f"alpha={self.alpha}, lo={self.lo}, hi={self.hi}, max_iters={self.max_iters}, auto_step={self.auto_step}"


class _ReversedLinearFn(torch.autograd.Function):
    """y = x W^T + b; grad_x = -lambda * grad_y W. lambda is read from its buffer
    when the backward runs: in CPU memory it becomes the GEMM's alpha (the reversal
    touches no tensor of its own); on a GPU the GEMM's fresh output is scaled in
    place by the device value, so a captured CUDA graph replays the current lambda."""

    @staticmethod
    def forward(ctx, x, weight, bias, lambda_):
        ctx.save_for_backward(x, weight)
        ctx.lambda_ = lambda_
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g2 = grad_y.reshape(-1, grad_y.shape[-1])
        # Under autocast the forward GEMM ran in the autocast dtype; the backward GEMMs
        # do too, as nn.Linear's would (autograd casts the results to each input's dtype).
        weight, x = weight.to(g2.dtype), x.to(g2.dtype)
        if ctx.needs_input_grad[0]:
            lambda_ = ctx.lambda_
            if lambda_.device.type == "cpu":  # reading CPU memory is no synchronisation
                grad_x = torch.addmm(g2.new_zeros(()), g2, weight, beta=0.0, alpha=-float(lambda_))
            else:
                grad_x = torch.mm(g2, weight).mul_(-lambda_.to(device=g2.device, dtype=torch.float32).reshape(()))
            grad_x = grad_x.reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None


class GradientReversalLinear(_AssignLambda, nn.Linear):
    """``nn.Linear`` preceded by a gradient reversal, fused: the reversal is folded
    into the GEMM that computes the input gradient. Same results as
    ``nn.Sequential(GradientReversal(lambda_), nn.Linear(...))``; state_dict keys are
    nn.Linear's (lambda is not saved), so checkpoints load both ways. lambda lives
    in the non-persistent buffer ``lambda_``, read when the backward runs (as
    :class:`GradientReversal` reads its own).
    """

    def __init__(self, in_features, out_features, bias=True, lambda_=1.0, device=None, dtype=None):
        in_features = check_int(in_features, "in_features", low=1)
        out_features = check_int(out_features, "out_features", low=1)
        bias = check_bool(bias, "bias")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        value = check_lambda(lambda_)
        self.register_buffer("lambda_", torch.tensor(0.0, dtype=torch.float32, device=device), persistent=False)
        self.set_lambda(value)

    def set_lambda(self, value):
        _write_lambda(self.lambda_, value)
        return self

    def forward(self, x):
        check_float_tensor(x, "x")
        if torch.compiler.is_compiling():
            # Traceable form: Inductor fuses the scale into the GEMM's epilogue.
            return F.linear(grad_reverse(x, self.lambda_), self.weight, self.bias)
        return _ReversedLinearFn.apply(x, self.weight, self.bias, self.lambda_)

    def extra_repr(self):
        return super().extra_repr() + f", lambda_={float(self.lambda_):.4g}"


class DomainDiscriminator(nn.Sequential):
    """The paper's domain classifier: ``in_features -> hidden... -> 1`` logit, with
    ReLU (and optional BatchNorm/Dropout) between layers.

    ``hidden`` is one width or a sequence of widths (``hidden=256`` is ``(256,)``;
    ``()`` gives a linear classifier). MNIST net: ``hidden=(100,)``; SVHN and
    Office nets: ``hidden=(1024, 1024)``. ``dropout`` is in [0, 1).
    ``fused_grl=True`` makes the first layer a :class:`GradientReversalLinear`, so the
    discriminator reverses gradients itself at no extra cost (then give
    :class:`DomainAdversarialLoss` no separate ``grl``).
    """

    def __init__(self, in_features, hidden=(1024, 1024), batch_norm=False, dropout=0.0, fused_grl=False, lambda_=1.0):
        in_features = check_int(in_features, "in_features", low=1)
        hidden = check_sizes(hidden, "hidden")  # DomainDiscriminator(128, hidden=256) means one hidden layer
        batch_norm, fused_grl = check_bool(batch_norm, "batch_norm"), check_bool(fused_grl, "fused_grl")
        dropout = check_real(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        check_lambda(lambda_)  # checked even when unused (fused_grl=False): a bad value is a bug either way
        layers = []
        width = in_features
        for i, h in enumerate(hidden + (1,)):
            if i == 0 and fused_grl:
                layers.append(GradientReversalLinear(width, h, lambda_=lambda_))
            else:
                layers.append(nn.Linear(width, h))
            if i < len(hidden):
                if batch_norm:
                    layers.append(nn.BatchNorm1d(h))
                layers.append(nn.ReLU(inplace=True))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            width = h
        super().__init__(*layers)
        self.fused_grl = fused_grl

    @property
    def grl(self):
        """The fused reversal (the first layer) when ``fused_grl``, else None."""
        return self[0] if self.fused_grl else None


class DomainAdversarialLoss(nn.Module):
    """GRL -> discriminator -> fused binary cross-entropy, in one call. Shaped like
    tllib's loss but ours (source label 0, logits, equal weight per domain); the
    drop-in that gives tllib's numbers is :class:`grl_cuda.compat.tllib.DomainAdversarialLoss`.

    ``loss = dal(f_source, f_target)``: both domains go through the discriminator in
    one forward (one BatchNorm statistics pass, as in the paper). Each domain gets
    equal total weight (``0.5 * (mean source loss + mean target loss)``) whatever the
    batch sizes. Source is label 0, target label 1.

    Args:
        discriminator: an ``nn.Module`` mapping (N, F) features to (N, 1) or (N,) logits.
        grl: a reversal layer (``nn.Module``) applied first; defaults to
            ``GradientReversal()`` unless the discriminator carries a fused one
            (``fused_grl=True``), in which case a separate ``grl`` is refused (two
            reversals cancel).
    """

    def __init__(self, discriminator, grl=None):
        super().__init__()
        check_module(discriminator, "discriminator")
        check_module(grl, "grl", optional=True)
        if grl is not None and getattr(discriminator, "fused_grl", False):
            raise ValueError(
                "grl_cuda: the discriminator already reverses gradients (fused_grl=True); a separate grl would "
                "reverse them twice, i.e. not at all. Pass grl=None."
            )
        self.discriminator = discriminator
        if grl is None and not getattr(discriminator, "fused_grl", False):
            grl = GradientReversal()
        self.grl = grl
        self.domain_discriminator_accuracy = None  # percent, last batch (tllib's attribute)
        self._accuracy = None

    def forward(self, f_source, f_target):
        check_float_tensor(f_source, "f_source")
        check_float_tensor(f_target, "f_target")
        if f_source.dim() == 0 or f_target.dim() == 0:
            raise ValueError(
                f"grl_cuda: f_source and f_target must have a batch dimension, e.g. (N, F), got shapes "
                f"{tuple(f_source.shape)} and {tuple(f_target.shape)}."
            )
        n_s, n_t = f_source.shape[0], f_target.shape[0]
        if n_s == 0 or n_t == 0:
            raise ValueError(f"grl_cuda: both domains need samples, got {n_s} source and {n_t} target.")
        f = torch.cat([f_source, f_target], dim=0)
        if self.grl is not None:
            f = self.grl(f)
        logits = self.discriminator(f)
        n = n_s + n_t
        loss, accuracy = domain_bce_with_logits(
            logits, n_s, weight_source=n / (2.0 * n_s), weight_target=n / (2.0 * n_t), return_accuracy=True
        )
        self._accuracy = accuracy.detach()
        self.domain_discriminator_accuracy = _LazyPercent(self._accuracy)
        return loss


class _LazyPercent:
    """A percent read from a device tensor only when printed or converted (no host
    sync in the training step)."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def __float__(self):
        return float(self._value) * 100.0

    def item(self):
        return float(self)

    def __format__(self, spec):
        return format(float(self), spec)

    def __repr__(self):
        return f"{float(self):.2f}"

    def __eq__(self, other):
        return float(self) == float(other)

    def __lt__(self, other):
        return float(self) < float(other)

    def __gt__(self, other):
        return float(self) > float(other)

    __hash__ = None
