"""pytorch-adapt's layer: ``from pytorch_adapt.layers import GradientReversal``.

Swap the import for ``from grl_cuda.compat.pytorch_adapt import GradientReversal``.

What matches pytorch-adapt 0.0.83, observably:
- ``GradientReversal(weight=1.0)`` with ``weight`` a persistent buffer holding
  ``torch.tensor([weight])`` (shape (1,), float32 for a float): the same
  ``state_dict`` key, shape and dtype, so checkpoints load both ways strictly;
- ``update_weight(w)`` writes ``weight[0]`` in place;
- forward returns a view of the input; backward ``-weight * grad`` with weight's
  float32 value, bitwise the same in float32/float64/float16/bfloat16 (the
  original computes the product in float32 for the half types and rounds once,
  as our kernel does);
- the weight is read on the input's device (the original moves it there).
- ``weight`` is listed in ``_record_these`` (pytorch-metric-learning's record
  keeper convention) and ``extra_repr`` prints ``weight=tensor([...])``.
"""

import torch
from torch import nn

from .._validation import check_lambda
from ..functional import grad_reverse


class GradientReversal(nn.Module):
    """Gradient reversal layer: identity forward, ``-weight * grad`` backward."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.register_buffer("weight", torch.tensor([weight]))
        if self.weight.numel() != 1 or self.weight.dtype == torch.bool or self.weight.is_complex():
            raise TypeError(f"grl_cuda: GradientReversal's weight must be a real number, got {weight!r}.")
        if self.weight.is_floating_point():
            check_lambda(self.weight, name="weight")  # NaN/inf: ValueError here, not a NaN gradient later
        self._record_these = ["weight"]

    def update_weight(self, new_weight):
        self.weight[0] = new_weight

    def forward(self, x):
        weight = self.weight
        if not weight.is_floating_point():  # GradientReversal(weight=2): int64 there, exact as a float
            weight = float(weight)
        elif weight.device != x.device and weight.device.type != "cpu":
            weight = weight.to(x.device)  # the original moves it to the input's device too
        return grad_reverse(x, weight)

    def extra_repr(self):
        return f"weight={self.weight}"


__all__ = ["GradientReversal"]
