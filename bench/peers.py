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


# The published packages themselves, imported when installed (`pip install .[peers]`):
# name -> (module, how to build its layer). Each is checked for identical numbers
# before it is timed (optional_layers). skada pulls scikit-learn, POT, pandas and
# skorch, so it stays optional: CI does not install it.
OPTIONAL = {
    "torch-gradient-reversal": ("gradient_reversal", lambda mod, lam: lambda x: mod.gradient_reversal(x, lam)),
    "skada": ("skada.deep.modules", lambda mod, lam: lambda x: mod.GradientReversalLayer.apply(x, lam)),
}


def same_numbers(layer, lam, dtype=torch.float32):
    """Whether `layer` is the identity forward and gives -lam * grad backward, bitwise, on
    a probe (the reference's numbers: one product, as grl_cuda)."""
    x = (torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3).to(dtype).requires_grad_()
    w = torch.randn(1000, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = layer(x)
    (y * w).sum().backward()
    return torch.equal(y.detach(), x.detach()) and torch.equal(x.grad, w * -lam)


def optional_layers(lam=1.0):
    """({name: callable(x) -> y}, [notes]): the published packages that are installed and
    give identical numbers; a note for each one absent or different (it is then not timed)."""
    import importlib

    found, notes = {}, []
    for name, (module, build) in OPTIONAL.items():
        try:
            layer = build(importlib.import_module(module), lam)
        except ImportError as e:
            notes.append(f"{name}: not installed ({e.__class__.__name__}: {e}); `pip install .[peers]` adds it")
            continue
        if not same_numbers(layer, lam):
            notes.append(f"{name}: skipped, its gradient differs from -lambda * grad on the probe")
            continue
        found[name] = layer
    return found, notes
