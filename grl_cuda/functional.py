"""Functional API: gradient reversal and the fused domain losses."""

import sys

import torch

from . import _C
from ._ops import fused_loss_input_grad
from ._validation import check_bool, check_float_tensor, check_lambda, check_num_source
from .reference import bce_grad_formula, cross_entropy_grad_formula

ops = torch.ops.grl_cuda
_Tensor = torch.Tensor
_is_dynamo_compiling = torch.compiler.is_dynamo_compiling  # a module global: one lookup per call

# When may the reversal's backward overwrite its incoming gradient in place (the
# "steal": one pass, no new buffer)? Only when nothing outside autograd can
# observe that buffer. Two counts together decide it:
# - C++ references to the tensor: the engine's input buffer plus the Python
#   object handed to us. More means another node, a post-hook on our node (the
#   engine keeps a copy of its inputs for them) or C++ code holds it.
# - Python references to that object: the engine's call frames plus ours. More
#   means a Python holder: a tensor hook or grad_fn pre-hook that stored it, a
#   module's full backward hook, the user's own `grad_outputs` tensor.
# Storage shared with any other tensor (a view or `.data` kept by a hook) is
# checked in C++. Grad mode on (create_graph=True) and anomaly mode never steal.
# Both baselines are measured once, at import, on a probe Function whose backward
# counts the same way from the same place (Python versions differ in frame
# counts). The Python count is read with sys.getrefcount straight from the
# backward, never through a Python helper: a helper's own frame may hold one
# more reference in some interpreter states (seen after a failed torch.compile,
# whose frame-evaluation hook keeps call arguments). tests/ops/test_steal.py pins the
# baselines and every case above.
# grad_reverse's plain eager calls skip all this: they run a C++ autograd node
# (csrc/bindings.cpp) that takes the gradient out of the engine's list and steals
# only at one C++ reference, AccumulateGrad's own rule (any Python object of the
# gradient holds one more, so Python holders are covered, conservatively).


class _ProbeEngineRefs(torch.autograd.Function):
    """Records the reference counts of an exclusively owned incoming gradient."""

    counts = []

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _ProbeEngineRefs.counts.append((sys.getrefcount(grad), _C.use_counts(grad)[0]))
        return grad


def _measure_engine_refs():
    """(Python refs, C++ refs) of a gradient that only autograd holds, as seen
    from a Python backward; (0, 0), which disables the steal, if they look odd."""
    _ProbeEngineRefs.counts.clear()
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.zeros(2, requires_grad=True)
        (_ProbeEngineRefs.apply(x) * 2.0).sum().backward()  # MulBackward's fresh output
    (py_refs, cpp_refs), = _ProbeEngineRefs.counts
    return (py_refs, cpp_refs) if 2 <= py_refs <= 16 and 1 <= cpp_refs <= 4 else (0, 0)


_ENGINE_PY_REFS, _ENGINE_GRAD_USES = _measure_engine_refs()


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
        if torch.compiler.is_compiling() or not (grad.is_cpu or grad.is_cuda):
            # compiled autograd traces this backward (plain aten fuses), or a device
            # without our kernels (meta for shape inference, mps, xpu...): aten's multiply
            return _TracedGradReverse.scale(grad, ctx.lambda_), None, None
        # The steal's Python-side test, counted as in the probe (this frame's own
        # reference included; bind `grad` to nothing else before it). 0: never in place.
        global _ENGINE_PY_REFS
        refs = sys.getrefcount(grad)
        if refs < _ENGINE_PY_REFS:  # the import-time probe ran in a state with extra frame
            _ENGINE_PY_REFS = refs  # references (a tracer, say): only ever lower the baseline
        exclusive = refs <= _ENGINE_PY_REFS and not torch.is_anomaly_enabled()
        max_uses = _ENGINE_GRAD_USES if exclusive else 0
        if torch.is_grad_enabled():  # building a graph for a double backward
            return ops.neg_scale(grad, _lambda_tensor(ctx.lambda_, grad)), None, None
        return _C.reverse_grad(grad, ctx.lambda_, max_uses), None, None


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
        lambda_ = ctx.saved_tensors[0] if ctx.saved_tensors else ctx.lambda_
        return _TracedGradReverse.scale(grad, lambda_), None, None

    @staticmethod
    def scale(grad, lambda_):
        if isinstance(lambda_, torch.Tensor):
            lambda_ = lambda_.to(device=grad.device).reshape(())
        return grad * (-lambda_)


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
    if _is_dynamo_compiling():
        check_float_tensor(x, "x")
        return _TracedGradReverse.apply(x, check_lambda(lambda_, x), check_bool(copy, "copy"))
    if copy is False and type(x) is _Tensor:
        # The common eager case without Python on the forward or the backward: a C++
        # autograd node (csrc/bindings.cpp), same numbers and the same steal rule.
        # None when the arguments need the Python Function (checks, errors, modes).
        y = _C.grad_reverse(x, lambda_)
        if y is not None:
            return y
    return GradReverse.apply(x, lambda_, copy)  # its forward checks the arguments


def neg_scale(x, lambda_=1.0):
    """``-lambda_ * x`` in one pass (the reversal's backward as a differentiable op)."""
    check_float_tensor(x, "x")
    lambda_ = check_lambda(lambda_, x)
    return ops.neg_scale(x, _lambda_tensor(lambda_, x))


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

        scale = 1.0 / logits.numel() if reduction == "mean" else 1.0
        grad = fused_loss_input_grad(
            saved, grad_loss, reduction, scale,
            formula=lambda: bce_grad_formula(logits, num_source, weight_source, weight_target),
            recompute=lambda: _C.domain_bce_with_logits(logits, *ctx.args)[1],
        )
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
        grad = fused_loss_input_grad(
            saved, grad_loss[:, None] if reduction == "none" else grad_loss,  # per-row losses
            reduction, scale,
            formula=lambda: cross_entropy_grad_formula(logits, domains),
            recompute=lambda: _C.domain_cross_entropy(logits, domains, reduction)[1],
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
