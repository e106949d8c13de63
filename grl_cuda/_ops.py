"""Python-side registrations of the torch.library ops defined in csrc/ops.cpp:
fake (meta) implementations for torch.compile, autograd formulas and autocast.
Importing this module is what makes the ops complete."""

import torch

from . import _C
from .reference import bce_grad_formula, cross_entropy_grad_formula

ops = torch.ops.grl_cuda

# The saved gradient buffer of the eager path is made by our forward and never
# handed out, so any reference count is ours: let the in-place path take it.
_OWNED_BUFFER_USES = 1 << 30


def fused_loss_input_grad(saved, grad_loss, reduction, scale, formula, recompute=None):
    """The logits' gradient of a fused loss: the one backward of both losses, for
    their eager Functions (grl_cuda/functional.py) and their registered ops (below).

    saved: the gradient the forward kept. recompute: given on the eager path only,
    where `saved` is a private buffer (None after a first backward with
    retain_graph=True): it is then overwritten in place, and recompute() runs the
    forward kernel again when it is gone. Without it, `saved` is the op's output
    and is left alone. formula(): the gradient as differentiable ops, used for
    create_graph=True (a second derivative must see the logits) and when compiled
    autograd traces the eager path (our buffer is kept outside save_for_backward).
    grad_loss: broadcastable to the logits when reduction is "none"; scale:
    1/count for a mean, else 1."""
    owned = recompute is not None
    if torch.is_grad_enabled() or (owned and torch.compiler.is_compiling()):
        return formula() * (grad_loss * scale)
    if owned and saved is None:
        saved = recompute()
    if reduction == "none":
        return saved.mul_(grad_loss) if owned else saved * grad_loss
    if owned:
        return _C.scale_saved_grad(saved, grad_loss.detach(), scale, _OWNED_BUFFER_USES)
    return saved * (grad_loss * scale).to(saved.dtype)


# ---- neg_scale: -lambda * x ----------------------------------------------------------------------

@torch.library.register_fake("grl_cuda::neg_scale")
def _neg_scale_fake(x, lambda_):
    return torch.empty_like(x)  # csrc/ops.cpp allocates every output as empty_like(x) too


def _neg_scale_setup(ctx, inputs, output):
    x, lambda_ = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, lambda_)


def _neg_scale_backward(ctx, grad):
    x, lambda_ = ctx.saved_tensors
    grad_x = ops.neg_scale(grad, lambda_) if ctx.needs_input_grad[0] else None
    grad_lambda = None
    if ctx.needs_input_grad[1]:
        # on lambda's own device and dtype (a CPU lambda may scale a CUDA tensor)
        grad_lambda = -(grad * x).sum().to(device=lambda_.device, dtype=lambda_.dtype).reshape(lambda_.shape)
    return grad_x, grad_lambda


torch.library.register_autograd("grl_cuda::neg_scale", _neg_scale_backward, setup_context=_neg_scale_setup)


@torch.library.register_fake("grl_cuda::neg_scale_")
def _neg_scale_inplace_fake(x, lambda_):
    return None


# ---- copy ------------------------------------------------------------------------------------------

@torch.library.register_fake("grl_cuda::copy")
def _copy_fake(x):
    return torch.empty_like(x)


torch.library.register_autograd("grl_cuda::copy", lambda ctx, grad: grad)


# ---- domain_bce_with_logits ------------------------------------------------------------------------

@torch.library.register_fake("grl_cuda::domain_bce_with_logits")
def _domain_bce_fake(logits, num_source, weight_source, weight_target, reduction):
    loss = logits.new_empty(logits.shape) if reduction == "none" else logits.new_empty(())
    grad = logits.new_empty(logits.shape)
    accuracy = logits.new_empty((), dtype=torch.float32)
    return loss, grad, accuracy


def _domain_bce_setup(ctx, inputs, output):
    logits, num_source, weight_source, weight_target, reduction = inputs
    _, grad, accuracy = output
    ctx.mark_non_differentiable(grad, accuracy)
    ctx.save_for_backward(logits, grad)
    ctx.args = (num_source, weight_source, weight_target, reduction)


def _domain_bce_backward(ctx, grad_loss, grad_grad, grad_accuracy):
    logits, saved_grad = ctx.saved_tensors
    num_source, weight_source, weight_target, reduction = ctx.args
    scale = 1.0 / logits.numel() if reduction == "mean" else 1.0
    grad = fused_loss_input_grad(saved_grad, grad_loss, reduction, scale,
                                 lambda: bce_grad_formula(logits, num_source, weight_source, weight_target))
    return grad, None, None, None, None


torch.library.register_autograd(
    "grl_cuda::domain_bce_with_logits", _domain_bce_backward, setup_context=_domain_bce_setup
)
# As PyTorch's autocast policy does for binary_cross_entropy_with_logits: compute in float32.
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("grl_cuda::domain_bce_with_logits", _device, torch.float32)


# ---- domain_cross_entropy (K domains) --------------------------------------------------------------

@torch.library.register_fake("grl_cuda::domain_cross_entropy")
def _domain_cross_entropy_fake(logits, domains, reduction):
    loss = logits.new_empty((logits.shape[0],)) if reduction == "none" else logits.new_empty(())
    return loss, logits.new_empty(logits.shape), logits.new_empty((), dtype=torch.float32)


def _domain_cross_entropy_setup(ctx, inputs, output):
    logits, domains, reduction = inputs
    _, grad, accuracy = output
    ctx.mark_non_differentiable(grad, accuracy)
    ctx.save_for_backward(logits, domains, grad)
    ctx.reduction = reduction


def _domain_cross_entropy_backward(ctx, grad_loss, grad_grad, grad_accuracy):
    logits, domains, saved_grad = ctx.saved_tensors
    scale = 1.0 / logits.shape[0] if ctx.reduction == "mean" else 1.0
    grad = fused_loss_input_grad(saved_grad, grad_loss[:, None] if ctx.reduction == "none" else grad_loss,
                                 ctx.reduction, scale, lambda: cross_entropy_grad_formula(logits, domains))
    return grad, None, None


torch.library.register_autograd("grl_cuda::domain_cross_entropy", _domain_cross_entropy_backward,
                                setup_context=_domain_cross_entropy_setup)
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("grl_cuda::domain_cross_entropy", _device, torch.float32)
