"""Few-line re-implementations of other projects' gradient reversal layers,
written by us from their published semantics, so the benchmark compares like with
like in one process. Each names the project whose behaviour it mirrors."""

import torch


class FungtionDANN(torch.autograd.Function):
    """fungtion/DANN `ReverseLayerF`: view_as forward; backward grad.neg() * alpha (two passes)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.neg() * ctx.alpha, None


class Tllib(torch.autograd.Function):
    """tllib `GradientReverseFunction`: copying forward (input * 1.0); backward grad.neg() * coeff."""

    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return grad.neg() * ctx.coeff, None


class RevGrad(torch.autograd.Function):
    """pytorch-revgrad: saves the input and alpha tensor; backward -grad * alpha (two passes)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x, alpha)
        return x

    @staticmethod
    def backward(ctx, grad):
        _, alpha = ctx.saved_tensors
        return -grad * alpha, None


class PytorchAdapt(torch.autograd.Function):
    """pytorch-adapt: a 1-element float32 weight tensor; backward -weight * grad
    (promotes half gradients to float, autograd casts back)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return -weight * grad, None


def layers(lam=1.0):
    """{name: callable(x) -> y}, ours first."""
    import grl_cuda
    from grl_cuda import reference  # the best single-pass pure PyTorch GRL: view_as, grad.mul(-lambda)

    revgrad_alpha = torch.tensor(lam)
    adapt_weight = torch.tensor([lam])
    return {
        "grl_cuda": lambda x: grl_cuda.grad_reverse(x, lam),
        "grl_cuda copy=True": lambda x: grl_cuda.grad_reverse(x, lam, copy=True),
        "fungtion/DANN": lambda x: FungtionDANN.apply(x, lam),
        "tllib": lambda x: Tllib.apply(x, lam),
        "pytorch-revgrad": lambda x: RevGrad.apply(x, revgrad_alpha),
        "pytorch-adapt": lambda x: PytorchAdapt.apply(x, adapt_weight),
        "best pure PyTorch": lambda x: reference.grad_reverse(x, lam),
    }
