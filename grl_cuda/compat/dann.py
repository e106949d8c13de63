"""fungtion/DANN's reversal (its ``functions.py``): ``ReverseLayerF.apply(x, alpha)``.

Swap ``from functions import ReverseLayerF`` for
``from grl_cuda.compat.dann import ReverseLayerF``.

What matches the original, observably:
- forward returns a view of ``x`` (``x.view_as(x)``), so in-place changes of the
  output are refused by autograd there as here;
- backward returns ``-alpha * grad`` (``grad.neg() * alpha``, bitwise the same in
  float32/float64/float16/bfloat16: the negation is exact and the product is one
  rounding in both);
- ``alpha`` is a number (numpy scalars included, as the original's training loop
  passes) or a one-element tensor; no state.
"""

from ..functional import GradReverse


class ReverseLayerF(GradReverse):
    """``ReverseLayerF.apply(x, alpha)``: identity forward (a view), ``-alpha * grad`` backward."""

    @staticmethod
    def forward(ctx, x, alpha):
        # the original has no default for alpha: keep it required
        return GradReverse.forward(ctx, x, alpha, False)


__all__ = ["ReverseLayerF"]
