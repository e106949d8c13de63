"""Drop-in names for the gradient reversal layers of other projects. Each keeps the
original's call signature and numbers; only the import changes.

===========================================  ==============================================
their code                                   with grl_cuda
===========================================  ==============================================
fungtion/DANN ``ReverseLayerF.apply(x, a)``  ``from grl_cuda.compat import ReverseLayerF``
tllib ``GradientReverseLayer()``             ``from grl_cuda.compat import GradientReverseLayer``
tllib ``WarmStartGradientReverseLayer(...)`` ``from grl_cuda.compat import WarmStartGradientReverseLayer``
pytorch-revgrad ``RevGrad(alpha)``           ``from grl_cuda.compat import RevGrad``
pytorch-adapt ``GradientReversal(weight)``   ``from grl_cuda.compat import GradientReversal``
===========================================  ==============================================

Differences, on purpose: no layer copies its input in the forward pass (tllib's
does; pass ``copy=True`` to grl_cuda.grad_reverse if you modify the output in place),
and the warm-start schedule's progress stops at 1 (tllib's keeps growing past
``max_iters``, which pushes lambda past ``hi``).
"""

import torch
from torch import nn

from .functional import GradReverse, grad_reverse
from .modules import WarmStartGradientReversal


class ReverseLayerF(GradReverse):
    """fungtion/DANN: ``ReverseLayerF.apply(x, alpha)``."""


class GradientReverseLayer(nn.Module):
    """tllib: ``GradientReverseLayer()(x, coeff=1.0)``."""

    def forward(self, x, coeff=1.0):
        return grad_reverse(x, coeff)


class WarmStartGradientReverseLayer(WarmStartGradientReversal):
    """tllib's signature and defaults: ``(alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=False)``."""

    def __init__(self, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=False):
        super().__init__(alpha=alpha, lo=lo, hi=hi, max_iters=max_iters, auto_step=auto_step)

    @property
    def iter_num(self):
        return int(self.num_iter)


class RevGrad(nn.Module):
    """pytorch-revgrad: ``RevGrad(alpha=1.0)``."""

    def __init__(self, alpha=1.0, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._alpha = torch.tensor(float(alpha), requires_grad=False)

    def forward(self, x):
        return grad_reverse(x, self._alpha)


class GradientReversal(nn.Module):
    """pytorch-adapt: ``GradientReversal(weight=1.0)``; ``weight`` is a buffer."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.register_buffer("weight", torch.tensor([float(weight)]))

    def forward(self, x):
        return grad_reverse(x, self.weight)
