"""Python-side registrations of the torch.library ops defined in csrc/ops.cpp:
fake (meta) implementations for torch.compile, autograd formulas and autocast.
Importing this module is what makes the ops complete."""

import torch

ops = torch.ops.grl_cuda


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


def domain_labels_and_weights(logits, num_source, weight_source, weight_target):
    """Labels (0 source, 1 target) and weights broadcastable to `logits`, built
    from the row index. Used where the fused kernel's saved gradient cannot
    serve: double backward and the pure-PyTorch reference."""
    is_target = torch.arange(logits.shape[0], device=logits.device) >= num_source
    shape = (-1,) + (1,) * (logits.dim() - 1)
    labels = is_target.to(logits.dtype).reshape(shape)
    weights = torch.where(is_target, weight_target, weight_source).to(logits.dtype).reshape(shape)
    return labels, weights


def _domain_bce_backward(ctx, grad_loss, grad_grad, grad_accuracy):
    logits, saved_grad = ctx.saved_tensors
    num_source, weight_source, weight_target, reduction = ctx.args
    if torch.is_grad_enabled():
        # create_graph=True: rebuild the gradient from differentiable ops so a
        # second derivative sees its dependence on the logits.
        labels, weights = domain_labels_and_weights(logits, num_source, weight_source, weight_target)
        saved_grad = weights * (torch.sigmoid(logits) - labels)
    if reduction == "none":
        return saved_grad * grad_loss, None, None, None, None
    if reduction == "mean":
        grad_loss = grad_loss / logits.numel()
    return saved_grad * grad_loss.to(saved_grad.dtype), None, None, None, None


torch.library.register_autograd(
    "grl_cuda::domain_bce_with_logits", _domain_bce_backward, setup_context=_domain_bce_setup
)
# As PyTorch's autocast policy does for binary_cross_entropy_with_logits: compute in float32.
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("grl_cuda::domain_bce_with_logits", _device, torch.float32)


# ---- domain_cross_entropy (K domains) --------------------------------------------------------------

@torch.library.register_fake("grl_cuda::domain_cross_entropy")
def _domain_xent_fake(logits, domains, reduction):
    loss = logits.new_empty((logits.shape[0],)) if reduction == "none" else logits.new_empty(())
    return loss, logits.new_empty(logits.shape), logits.new_empty((), dtype=torch.float32)


def _domain_xent_setup(ctx, inputs, output):
    logits, domains, reduction = inputs
    _, grad, accuracy = output
    ctx.mark_non_differentiable(grad, accuracy)
    ctx.save_for_backward(logits, domains, grad)
    ctx.reduction = reduction


def xent_grad_formula(logits, domains):
    """softmax(logits) - one_hot(domains): the gradient as differentiable ops."""
    return torch.softmax(logits, dim=1) - torch.nn.functional.one_hot(domains, logits.shape[1]).to(logits.dtype)


def _domain_xent_backward(ctx, grad_loss, grad_grad, grad_accuracy):
    logits, domains, saved_grad = ctx.saved_tensors
    if torch.is_grad_enabled():
        saved_grad = xent_grad_formula(logits, domains)
    if ctx.reduction == "none":
        return saved_grad * grad_loss[:, None], None, None
    if ctx.reduction == "mean":
        grad_loss = grad_loss / logits.shape[0]
    return saved_grad * grad_loss.to(saved_grad.dtype), None, None


torch.library.register_autograd("grl_cuda::domain_cross_entropy", _domain_xent_backward,
                                setup_context=_domain_xent_setup)
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("grl_cuda::domain_cross_entropy", _device, torch.float32)
