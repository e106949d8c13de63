"""pytorch-revgrad's layer: ``from pytorch_revgrad import RevGrad``.

Swap the import for ``from grl_cuda.compat.revgrad import RevGrad``.

What matches pytorch-revgrad 0.2, observably:
- ``RevGrad(alpha=1., *args, **kwargs)``; extra arguments go to ``nn.Module``;
- alpha is held as ``self._alpha = torch.tensor(alpha)``: a plain attribute, not a
  buffer or parameter, so ``state_dict()`` is empty (checkpoints load both ways,
  strictly) and ``.to()`` does not move it (a CPU scalar works with any device);
  its dtype follows ``torch.tensor`` (a float alpha is rounded to float32 there
  as here, so the gradient is ``-grad * float32(alpha)``);
- forward returns a view of the input; backward ``-grad * alpha``, bitwise the same
  in float32/float64/float16/bfloat16.

Not kept: the original also saves the input for the backward (it never reads
it); we do not, so a step holds one tensor less.
"""

import torch
from torch import nn

from .._validation import check_lambda
from ..functional import grad_reverse


class RevGrad(nn.Module):
    """Gradient reversal layer: identity forward, ``-alpha * grad`` backward."""

    def __init__(self, alpha=1.0, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._alpha = torch.tensor(alpha, requires_grad=False)
        if self._alpha.numel() != 1 or self._alpha.dtype == torch.bool or self._alpha.is_complex():
            raise TypeError(f"grl_cuda: RevGrad's alpha must be a real number, got {alpha!r}.")
        if self._alpha.is_floating_point():
            check_lambda(self._alpha, name="alpha")  # NaN/inf: ValueError here, not a NaN gradient later

    def forward(self, input_):
        alpha = self._alpha
        if not alpha.is_floating_point():  # RevGrad(alpha=2): an int64 scalar there, exact as a float
            alpha = float(alpha)
        return grad_reverse(input_, alpha)


__all__ = ["RevGrad"]
