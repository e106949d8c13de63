"""grl_cuda: fused gradient reversal (DANN) and domain-adversarial losses for PyTorch.

    import grl_cuda
    y = grl_cuda.grad_reverse(features, lambda_=0.7)
    grl = grl_cuda.GradientReversal(lambda_=1.0)
"""

import torch  # noqa: F401  (loads libtorch before our extension)

from ._version import __version__, check_torch as _check_torch

try:  # what setup.py built: refuse another torch before loading the extension into it
    from ._build_config import BUILD_CONFIG as _BUILT
except ImportError:  # a source checkout not built yet: the import of _C below says so
    _BUILT = {}
_check_torch(_BUILT, torch.__version__, torch.version.cuda)

try:
    from . import _C  # the compiled core; registers torch.ops.grl_cuda.*
except ImportError as exc:  # pragma: no cover - exercised by hand on broken installs
    raise ImportError(
        "grl_cuda's compiled extension (grl_cuda._C) is missing or was built against another torch. "
        "Rebuild it in this environment with:  pip install --no-build-isolation .  "
        f"(torch {torch.__version__}; original error: {exc})"
    ) from exc

from . import _ops  # noqa: F401,E402  (fake, autograd and autocast registrations)
from .functional import (  # noqa: E402
    GradReverse,
    domain_bce_with_logits,
    domain_cross_entropy,
    grad_reverse,
    neg_scale,
)
from .modules import (  # noqa: E402
    DomainAdversarialLoss,
    DomainDiscriminator,
    GradientReversal,
    GradientReversalLinear,
    WarmStartGradientReversal,
)
from . import compat, reference, schedules  # noqa: E402,F401


def __getattr__(name):
    # The training pipeline is not the library: `import grl_cuda` never loads it
    # (nor matplotlib, scikit-learn, tqdm). `grl_cuda.pipeline` and the old path
    # `grl_cuda.models` are imported on first use.
    if name in ("pipeline", "models"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_info():
    """What this installation was built with: CUDA kernels compiled or not (and
    why not), architectures, toolkit and torch versions."""
    try:
        from ._build_config import BUILD_CONFIG
    except ImportError:
        BUILD_CONFIG = {}
    info = dict(BUILD_CONFIG)
    info["cuda_compiled"] = _C.cuda_compiled()
    info["cuda_available"] = torch.cuda.is_available()
    info["torch_runtime_version"] = torch.__version__
    return info


__all__ = [
    "GradReverse",
    "grad_reverse",
    "neg_scale",
    "domain_bce_with_logits",
    "domain_cross_entropy",
    "GradientReversal",
    "WarmStartGradientReversal",
    "GradientReversalLinear",
    "DomainDiscriminator",
    "DomainAdversarialLoss",
    "schedules",
    "build_info",
]
