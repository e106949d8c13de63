"""Training methods. Each is one file over the shared loop in grl_cuda.train; the
loop never knows which method runs, a method never re-implements the loop."""

from .base import Method
from .dann import DANN
from .source_only import SourceOnly, SubspaceAlignment, TargetOnly

METHODS = {
    "source-only": SourceOnly,
    "target-only": TargetOnly,
    "sa": SubspaceAlignment,
    "dann": DANN,
}

try:  # CGDM/MCD live in their own file
    from .cgdm import CGDM, MCD

    METHODS["mcd"] = MCD
    METHODS["cgdm"] = CGDM
except ImportError:  # pragma: no cover
    pass


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(sorted(METHODS))}")
    return METHODS[name]
