"""Functional API: gradient reversal and the fused domain losses."""

import torch

from . import _C
from ._ops import domain_labels_and_weights, xent_grad_formula
from ._validation import check_bool, check_float_tensor, check_lambda, check_num_source

ops = torch.ops.grl_cuda

# References to an incoming gradient that the autograd engine itself holds when
# it calls a Python Function's backward (its input buffer plus the Python object
# handed to us, plus the binding's own argument). More than this means someone
# else (a hook, retain_grad, a user) holds it too: then we must not overwrite it.
# tests/test_grad_reverse.py::test_backward_steals_only_exclusive_gradients pins it.
_ENGINE_GRAD_USES = 2


def _lambda_tensor(lambda_, like):
    if isinstance(lambda_, torch.Tensor):
        return lambda_
    return torch.tensor(lambda_, dtype=torch.float64)


class GradReverse(torch.autograd.Function):
    """Gradient reversal as a plain `torch.autograd.Function` (the low-level API).

    ``GradReverse.apply(x, lambda_, copy=False)``: forward returns ``x`` unchanged
    (a view sharing its storage, or a fresh copy when ``copy`` is true); backward
    returns ``-lambda_ * grad`` in one pass. When autograd hands the backward the
    only reference to a dense gradient, it is scaled in place and reused (no new
    buffer); under ``create_graph=True`` the backward is itself differentiable (its
    derivative is the same reversal).
    """

    @staticmethod
    def forward(ctx, x, lambda_=1.0, copy=False):
        check_float_tensor(x, "x")
        ctx.lambda_ = check_lambda(lambda_, x)
        if check_bool(copy, "copy"):
            return ops.copy(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # building a graph for a double backward
            return ops.neg_scale(grad, _lambda_tensor(ctx.lambda_, grad)), None, None
        return _C.reverse_grad(grad, ctx.lambda_, _ENGINE_GRAD_USES), None, None


class _TracedGradReverse(torch.autograd.Function):
    """The reversal in plain aten ops, used under torch.compile: Inductor fuses the
    scale into the neighbouring kernels (measured: free inside a compiled head)."""

    @staticmethod
    def forward(ctx, x, lambda_, copy):
        if isinstance(lambda_, torch.Tensor):
            ctx.save_for_backward(lambda_)  # saved, so AOTAutograd keeps this value for the backward
        else:
            ctx.lambda_ = lambda_
        return x.clone() if copy else x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.saved_tensors:
            lambda_ = ctx.saved_tensors[0].to(device=grad.device).reshape(())
        else:
            lambda_ = ctx.lambda_
        return grad * (-lambda_), None, None


def grad_reverse(x, lambda_=1.0, *, copy=False):
    """Gradient reversal layer (Ganin & Lempitsky, 2015): identity forward,
    gradient multiplied by ``-lambda_`` backward.

    Args:
        x: floating tensor (float32/float64/float16/bfloat16), any shape, strides or device.
        lambda_: a finite float (within the float32 range unless ``x`` is float64:
            other dtypes compute in float32), or a one-element floating tensor on the CPU or on
            ``x``'s device (read by the kernel: no host sync, no recompilation under
            ``torch.compile`` when it changes, CUDA-graph safe). Negative values are
            allowed; 0 gives zero gradients.
        copy: a bool: return a fresh tensor instead of a view of ``x``. Needed only if the
            output is modified in place (autograd forbids in-place changes of a view
            returned by a custom Function).

    Returns:
        A tensor equal to ``x``, with ``x``'s dtype, shape and strides.
    """
    if torch.compiler.is_dynamo_compiling():
        check_float_tensor(x, "x")
        return _TracedGradReverse.apply(x, check_lambda(lambda_, x), check_bool(copy, "copy"))
    return GradReverse.apply(x, lambda_, copy)  # its forward checks the arguments


def neg_scale(x, lambda_=1.0):
    """``-lambda_ * x`` in one pass (the reversal's backward as a differentiable op)."""
    check_float_tensor(x, "x")
    lambda_ = check_lambda(lambda_, x)
    return ops.neg_scale(x, _lambda_tensor(lambda_, x))


# The saved gradient buffer is made by our forward and never handed out, so any
# reference count is ours: let the in-place path take it.
_OWNED_BUFFER_USES = 1 << 30


def _fused_loss_input_grad(saved, recompute, formula, grad_loss, reduction, scale):
    """The logits' gradient of a fused loss from the gradient its forward kept.

    saved: that buffer, or None after a first backward (retain_graph=True);
    recompute(): the forward kernel again (same numbers); formula(): the gradient
    as differentiable ops, for create_graph=True; grad_loss: broadcastable to the
    logits when reduction is "none"; scale: 1/count for a mean, else 1."""
    if torch.is_grad_enabled():  # a second derivative must see the logits
        return formula() * (grad_loss * scale)
    if saved is None:
        saved = recompute()
    if reduction == "none":
        return saved.mul_(grad_loss)
    return _C.scale_saved_grad(saved, grad_loss.detach(), scale, _OWNED_BUFFER_USES)


def _autocast_to_float32(logits):
    """PyTorch's autocast policy for these losses (as for BCE-with-logits): float32."""
    if torch.is_autocast_enabled(logits.device.type) and logits.dtype != torch.float64:
        return logits.float()
    return logits


class _DomainBce(torch.autograd.Function):
    """Eager path of the fused loss: the forward kernel keeps the gradient, the
    backward scales that buffer in place (it was never handed out) by the incoming
    gradient, read on the device."""

    @staticmethod
    def forward(ctx, logits, num_source, weight_source, weight_target, reduction):
        loss, grad, accuracy = _C.domain_bce_with_logits(logits, num_source, weight_source, weight_target, reduction)
        ctx.mark_non_differentiable(accuracy)
        ctx.save_for_backward(logits)
        ctx.saved_grad = grad
        ctx.args = (num_source, weight_source, weight_target, reduction)
        return loss, accuracy

    @staticmethod
    def backward(ctx, grad_loss, grad_accuracy):
        (logits,) = ctx.saved_tensors
        num_source, weight_source, weight_target, reduction = ctx.args
        saved, ctx.saved_grad = ctx.saved_grad, None

        def recompute():
            return _C.domain_bce_with_logits(logits, num_source, weight_source, weight_target, reduction)[1]

        def formula():
            labels, weights = domain_labels_and_weights(logits, num_source, weight_source, weight_target)
            return weights * (torch.sigmoid(logits) - labels)

        scale = 1.0 / logits.numel() if reduction == "mean" else 1.0
        grad = _fused_loss_input_grad(saved, recompute, formula, grad_loss, reduction, scale)
        return grad, None, None, None, None


def domain_bce_with_logits(
    logits,
    num_source,
    *,
    weight_source=1.0,
    weight_target=1.0,
    reduction="mean",
    return_accuracy=False,
):
    """Binary cross-entropy of a domain classifier, fused: one pass computes the
    loss, its gradient (kept for the backward) and the classifier's accuracy.

    Rows ``[0, num_source)`` of ``logits`` are source samples (label 0), the rest
    target samples (label 1); no label tensor is built or read.

    Args:
        logits: (N,), (N, 1) or (N, 1, *spatial) floating tensor; every element of a
            row shares that row's domain (per-pixel discriminators).
        num_source: int in [0, N]: a Python or numpy integer, or a one-element
            integer tensor on the CPU. A tensor on a GPU is refused (TypeError):
            the kernels take the count on the host, so reading it would synchronise
            the device every step; pass the source batch size as a Python int.
        weight_source, weight_target: finite floats weighting each domain's terms
            (within the float32 range unless ``logits`` is float64).
        reduction: "mean" (over all elements, as PyTorch), "sum" or "none".
        return_accuracy: also return the fraction of elements classified to the
            right domain (logit > 0 means target), a float32 0-dim tensor.

    Returns:
        ``loss`` (0-dim, or shaped like ``logits`` for reduction "none", in the
        logits' dtype), or ``(loss, accuracy)``.
    """
    check_float_tensor(logits, "logits")
    num_source = check_num_source(num_source)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"grl_cuda: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    return_accuracy = check_bool(return_accuracy, "return_accuracy")
    weight_source = check_lambda(weight_source, logits, name="weight_source")
    weight_target = check_lambda(weight_target, logits, name="weight_target")
    if isinstance(weight_source, torch.Tensor) or isinstance(weight_target, torch.Tensor):
        raise TypeError("grl_cuda: weight_source and weight_target must be Python floats.")
    if torch.compiler.is_compiling():
        loss, _, accuracy = ops.domain_bce_with_logits(logits, num_source, weight_source, weight_target, reduction)
    else:
        loss, accuracy = _DomainBce.apply(_autocast_to_float32(logits), num_source, weight_source, weight_target,
                                          reduction)
    return (loss, accuracy) if return_accuracy else loss


class _DomainCrossEntropy(torch.autograd.Function):
    """Eager path of the K-way loss (same scheme as _DomainBce)."""

    @staticmethod
    def forward(ctx, logits, domains, reduction):
        loss, grad, accuracy = _C.domain_cross_entropy(logits, domains, reduction)
        ctx.mark_non_differentiable(accuracy)
        ctx.save_for_backward(logits, domains)
        ctx.saved_grad = grad
        ctx.reduction = reduction
        return loss, accuracy

    @staticmethod
    def backward(ctx, grad_loss, grad_accuracy):
        logits, domains = ctx.saved_tensors
        saved, ctx.saved_grad = ctx.saved_grad, None
        reduction = ctx.reduction
        scale = 1.0 / logits.shape[0] if reduction == "mean" else 1.0
        grad = _fused_loss_input_grad(
            saved,
            lambda: _C.domain_cross_entropy(logits, domains, reduction)[1],
            lambda: xent_grad_formula(logits, domains),
            grad_loss[:, None] if reduction == "none" else grad_loss,  # per-row losses
            reduction,
            scale,
        )
        return grad, None, None


def domain_cross_entropy(logits, domains, *, reduction="mean", return_accuracy=False):
    """Multi-domain adversarial loss (K > 2 domains, e.g. multi-source DANN), fused:
    softmax cross-entropy of each row against its domain id, its gradient and the
    domain classifier's accuracy in one pass.

    Args:
        logits: (N, K) floating tensor, K >= 2.
        domains: (N,) int64 domain ids in [0, K). On the CPU an id outside raises a
            ValueError naming the ids' range; on a GPU it trips a device-side assert
            (checking on the host would need a sync). Never a NaN loss.
        reduction: "mean" (over rows), "sum" or "none" (per-row losses).
        return_accuracy: also return the fraction of rows whose argmax is their domain.
    """
    check_float_tensor(logits, "logits")
    if not isinstance(domains, torch.Tensor):
        raise TypeError(f"grl_cuda: domains must be an int64 tensor, got {type(domains).__name__}.")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"grl_cuda: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    return_accuracy = check_bool(return_accuracy, "return_accuracy")
    if torch.compiler.is_compiling():
        loss, _, accuracy = ops.domain_cross_entropy(logits, domains, reduction)
    else:
        loss, accuracy = _DomainCrossEntropy.apply(_autocast_to_float32(logits), domains, reduction)
    return (loss, accuracy) if return_accuracy else loss
