"""Drop-in replacements for other projects' gradient reversal layers (and tllib's
DANN loss). Each submodule mirrors one project: change the import, keep the code,
get the same numbers. The flat names below are the same classes.

================================================  ==================================================
their import                                      grl_cuda
================================================  ==================================================
fungtion/DANN ``from functions import             ``from grl_cuda.compat.dann import ReverseLayerF``
ReverseLayerF``
tllib ``from tllib.modules.grl import ...``       ``from grl_cuda.compat.tllib import ...``
(``GradientReverseFunction``,                     (same names)
``GradientReverseLayer``,
``WarmStartGradientReverseLayer``)
tllib ``from tllib.modules.domain_discriminator   ``from grl_cuda.compat.tllib import
import DomainDiscriminator``                      DomainDiscriminator``
tllib ``from tllib.alignment.dann import          ``from grl_cuda.compat.tllib import
DomainAdversarialLoss``                           DomainAdversarialLoss``
pytorch-revgrad ``from pytorch_revgrad import     ``from grl_cuda.compat.revgrad import RevGrad``
RevGrad``
pytorch-adapt ``from pytorch_adapt.layers import  ``from grl_cuda.compat.pytorch_adapt import
GradientReversal``                                GradientReversal``
================================================  ==================================================

Flat names (``from grl_cuda.compat import X``): ``ReverseLayerF`` (fungtion/DANN),
``GradientReverseLayer`` and ``WarmStartGradientReverseLayer`` (tllib), ``RevGrad``
(pytorch-revgrad), ``GradientReversal`` (pytorch-adapt; not grl_cuda.GradientReversal).

What each matches (forward copy or view, gradient bits, state_dict keys, defaults)
is listed in its submodule's docstring; tests/compat/test_tllib.py and
tests/compat/test_peers.py check it, against each project's formula restated and,
when pytorch-adapt / pytorch-revgrad are installed, against their own layers.
"""

from . import dann, pytorch_adapt, revgrad, tllib
from .dann import ReverseLayerF
from .pytorch_adapt import GradientReversal
from .revgrad import RevGrad
from .tllib import GradientReverseLayer, WarmStartGradientReverseLayer

__all__ = [
    "dann",
    "pytorch_adapt",
    "revgrad",
    "tllib",
    "ReverseLayerF",
    "GradientReverseLayer",
    "WarmStartGradientReverseLayer",
    "RevGrad",
    "GradientReversal",
]
