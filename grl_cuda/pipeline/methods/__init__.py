"""Training methods. Each is one file over the shared loop in grl_cuda.train; the
loop never knows which method runs, a method never re-implements the loop."""

from .base import Method
from .cgdm import CGDM, MCD
from .dann import DANN, DANNDomainBN
from .source_only import SourceOnly, SubspaceAlignment, TargetOnly

METHODS = {
    "source-only": SourceOnly,
    "target-only": TargetOnly,
    "sa": SubspaceAlignment,
    "dann": DANN,
    "dann-dsbn": DANNDomainBN,
    "mcd": MCD,
    "cgdm": CGDM,
}

# Every Config field that some method reads and others ignore.
METHOD_OPTIONS = frozenset(option for method in METHODS.values() for option in method.options)


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(sorted(METHODS))}")
    return METHODS[name]
