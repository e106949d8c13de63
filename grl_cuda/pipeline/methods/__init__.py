"""Training methods, one file each over the Method interface (base.py) and the one
loop in loop.py: the loop never knows which method runs, a method never
re-implements the loop. A new method: a file here with a Method subclass, and one
entry in METHODS."""

import torch

from .. import models
from ..config import UserError
from .base import Method
from .cdan import CDAN, CDANEntropy
from .cgdm import CGDM, MCD
from .dann import DANN, DANNDomainBN
from .mcc import DANNMCC, MCC
from .source_only import SourceOnly, SubspaceAlignment, TargetOnly
from .vada import DIRTT, VADA

METHODS = {
    "source-only": SourceOnly,
    "target-only": TargetOnly,
    "sa": SubspaceAlignment,
    "dann": DANN,
    "dann-dsbn": DANNDomainBN,
    "mcd": MCD,
    "cgdm": CGDM,
    "cdan": CDAN,
    "cdan-e": CDANEntropy,
    "mcc": MCC,
    "dann-mcc": DANNMCC,
    "vada": VADA,
    "dirt-t": DIRTT,
}


def get_method(name):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(cfg, num_classes, device, input_shape=None):
    """``cfg.method`` on fresh networks of ``cfg.arch`` (settled before: see loop.settle);
    ``input_shape``: one sample's shape, for networks sized by the data."""
    if cfg.arch not in models.ARCHITECTURES:
        raise UserError(f"unknown --arch {cfg.arch!r}; choose from: {', '.join(models.ARCHITECTURES)}")
    factory = models.model_factory(cfg.arch, num_classes, input_shape, cfg.weights, cfg.input_norm)
    return get_method(cfg.method)(cfg, factory, num_classes, torch.device(device))


__all__ = ["METHODS", "Method", "build_method", "get_method"]
