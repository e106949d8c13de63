"""Pure-PyTorch twins of every grl_cuda op: the ground truth for the tests and the
baseline of the benchmarks. Written for clarity, not speed."""

import torch
import torch.nn.functional as F


def domain_labels_and_weights(logits, num_source, weight_source, weight_target):
    """Labels (0 source, 1 target) and weights broadcastable to `logits`, built
    from the row index, as the fused binary loss defines them."""
    is_target = torch.arange(logits.shape[0], device=logits.device) >= num_source
    shape = (-1,) + (1,) * (logits.dim() - 1)
    labels = is_target.to(logits.dtype).reshape(shape)
    weights = torch.where(is_target, weight_target, weight_source).to(logits.dtype).reshape(shape)
    return labels, weights


def bce_grad_formula(logits, num_source, weight_source, weight_target):
    """d(sum of weighted BCE-with-logits)/d(logits) = w * (sigmoid(z) - y), as differentiable ops."""
    labels, weights = domain_labels_and_weights(logits, num_source, weight_source, weight_target)
    return weights * (torch.sigmoid(logits) - labels)


def cross_entropy_grad_formula(logits, domains):
    """softmax(logits) - one_hot(domains): the K-way loss's gradient as differentiable ops."""
    return torch.softmax(logits, dim=1) - F.one_hot(domains, logits.shape[1]).to(logits.dtype)


class _ReferenceGradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        lambda_ = ctx.lambda_
        if isinstance(lambda_, torch.Tensor):
            lambda_ = lambda_.to(grad.device).reshape(())
        return grad.mul(-lambda_), None


def grad_reverse(x, lambda_=1.0):
    """The best single-pass pure-PyTorch GRL: ``view_as`` forward, ``grad.mul(-lambda)`` backward."""
    return _ReferenceGradReverse.apply(x, lambda_)


def neg_scale(x, lambda_=1.0):
    """``-lambda_ * x`` in x's dtype (computed in float for half types, as ATen does)."""
    if isinstance(lambda_, torch.Tensor):
        lambda_ = lambda_.to(x.device).reshape(())
    return x * (-lambda_)


def domain_bce_with_logits(logits, num_source, *, weight_source=1.0, weight_target=1.0, reduction="mean",
                           return_accuracy=False):
    """The fused loss spelled out: an explicit label tensor and F.binary_cross_entropy_with_logits."""
    labels, weights = domain_labels_and_weights(logits, num_source, weight_source, weight_target)
    labels = labels.expand_as(logits)
    weights = weights.expand_as(logits)
    loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction=reduction)
    if not return_accuracy:
        return loss
    predicted_target = logits.detach() > 0
    accuracy = (predicted_target == labels.bool()).float().mean()
    return loss, accuracy
