"""Networks beyond the paper's digit nets, registered in models.ARCHITECTURES by one
hook (this module imports nothing of models.py at load): the JMLR paper's shallow
net for feature vectors, torchvision's ResNet-18/50 with tllib's bottleneck and
classifier head for images (``--backbone``), and (with a domain count above two) the
K-way domain classifier of multi-source DANN.

Each network has DigitNet's interface (``features``, ``label_hidden``, ``classifier``,
``embed``, ``feature_dim``) so every method runs on it unchanged."""

import os

import torch
from torch import nn

from grl_cuda import GradientReversalLinear

from .config import UserError

BACKBONES = ("resnet18", "resnet50")
PRETRAINED_LR_MULT = 0.1  # the pretrained trunk learns 10x slower than the new layers (DANN, Office; tllib)


def shallow_net(num_classes, input_shape, weights=None, hidden=50, domain_bn=False):
    """Ganin et al., JMLR 2016, section 5.1 (Amazon reviews): one hidden layer of
    ``hidden`` sigmoid units G_f (50 in the paper) read by a softmax label predictor
    G_y and, through the reversal, a logistic-regression domain classifier G_d.
    ``domain_bn`` is accepted for DANN-DSBN and adds nothing: the net has no
    BatchNorm (route_domains is a no-op on it)."""
    from .models import DigitNet  # here: models.py imports this module

    if weights:
        raise UserError("--weights loads a pretrained --backbone; the shallow net trains from scratch")
    if len(input_shape) != 1:
        raise UserError(f"the shallow net reads vectors (N, D), got samples of shape {tuple(input_shape)}")
    extractor = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.Sigmoid())
    return DigitNet(extractor, hidden, (), num_classes)


def load_weights(path):
    """A local state_dict for a torchvision ResNet (what ``torch.save(model.state_dict())``
    writes; torchvision's downloaded ImageNet files are such files)."""
    if not os.path.exists(path):
        raise UserError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise UserError(f"--weights {path} is not a readable state_dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights {path} holds no state_dict (a dict of tensors)")
    return state


def resnet(name, num_classes, input_shape, weights=None, bottleneck=256, domain_bn=False):
    """torchvision's ResNet trunk (up to global pooling) -> bottleneck Linear(.., 256) +
    BatchNorm1d + ReLU -> Linear(256, classes): tllib's recipe for Office-31, where the
    domain classifier reads the bottleneck. ``weights``: a local state_dict for the
    trunk (its ``fc.*`` entries, ImageNet's classifier, are dropped); None: random
    initialisation (users with internet get ImageNet's file from torchvision's
    ``ResNet18_Weights.IMAGENET1K_V1.get_state_dict()`` and save it). The trunk's
    parameters carry ``lr_mult`` 0.1 when pretrained."""
    import torchvision

    from .models import DigitNet  # here: models.py imports this module

    if domain_bn:
        raise UserError("dann-dsbn's domain BatchNorm is for the digit nets; use --method dann with --backbone")
    if len(input_shape) != 3:
        raise UserError(f"--backbone {name} reads images, got inputs of shape {tuple(input_shape)}")
    trunk = getattr(torchvision.models, name)(weights=None)
    width = trunk.fc.in_features
    trunk.fc = nn.Identity()
    if weights:
        state = {k: v for k, v in load_weights(weights).items() if not k.startswith("fc.")}
        try:
            missing, unexpected = trunk.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # tensors of other shapes (e.g. resnet50's file for resnet18)
            raise UserError(f"--weights {weights} does not fit {name}: {str(exc).splitlines()[1].strip()}") from exc
        if missing or unexpected:
            raise UserError(f"--weights {weights} does not fit {name}: missing {sorted(missing)[:4]}, "
                            f"unexpected {sorted(unexpected)[:4]}")
        for p in trunk.parameters():
            p.lr_mult = PRETRAINED_LR_MULT
    extractor = nn.Sequential(trunk, nn.Linear(width, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True))
    return DigitNet(extractor, bottleneck, (), num_classes)


def _resnet(name):
    return lambda num_classes, input_shape, weights=None, domain_bn=False: resnet(
        name, num_classes, input_shape, weights, domain_bn=domain_bn)


# Networks sized by the data: model_factory passes them input_shape (one sample's shape) and --weights.
ARCHITECTURES = {"shallow": shallow_net, **{name: _resnet(name) for name in BACKBONES}}
# Hidden widths of each one's domain classifier (the shallow net's is logistic regression;
# the backbones' is the paper's and tllib's 1024-1024).
DOMAIN_HIDDEN = {"shallow": (), **{name: (1024, 1024) for name in BACKBONES}}


def param_groups(params):
    """SGD parameter groups: parameters marked with ``lr_mult`` (a pretrained trunk) apart."""
    params = list(params)
    plain = [p for p in params if not hasattr(p, "lr_mult")]
    groups = [{"params": plain}] if plain else []
    for mult in sorted({p.lr_mult for p in params if hasattr(p, "lr_mult")}):
        groups.append({"params": [p for p in params if getattr(p, "lr_mult", None) == mult], "lr_mult": mult})
    return groups


class MultiDomainDiscriminator(nn.Sequential):
    """K-way domain classifier (multi-source DANN: S sources + the target): the widths
    of DomainDiscriminator with K logits out, the reversal fused into the first layer
    (``.grl``), trained with grl_cuda.domain_cross_entropy."""

    def __init__(self, in_features, hidden, num_domains, lambda_=1.0):
        widths = (in_features, *hidden, num_domains)
        layers = [GradientReversalLinear(widths[0], widths[1], lambda_=lambda_)]
        for a, b in zip(widths[1:-1], widths[2:]):
            layers += [nn.ReLU(inplace=True), nn.Linear(a, b)]
        super().__init__(*layers)

    @property
    def grl(self):
        return self[0]
