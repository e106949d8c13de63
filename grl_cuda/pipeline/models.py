"""The DANN paper's digit architectures (Ganin & Lempitsky, 2015): a feature
extractor G_f, a label predictor G_y and a domain classifier G_d whose first layer
reverses gradients (GradientReversalLinear: the reversal folded into its GEMM)."""

import contextlib

import torch
from torch import nn

from grl_cuda import DomainDiscriminator

DOMAINS = ("source", "target")


class DomainBatchNorm2d(nn.Module):
    """Domain-specific BatchNorm (DSBN; Chang et al., CVPR 2019): one BatchNorm2d, with
    its own statistics and affine parameters, per domain. A batch shared by both
    domains (the DANN minibatch) is routed by ``route_domains``: its first
    ``n_source`` rows go through the source layer, the rest through the target
    layer. Otherwise the whole input goes through the layer of ``domain``.

    Why: with one BatchNorm the running statistics are a mixture that fits neither
    domain at test time, and the per-domain shift in low-level statistics is exactly
    what the adversary would otherwise have to remove from the features."""

    def __init__(self, num_features):
        super().__init__()
        self.source = nn.BatchNorm2d(num_features)
        self.target = nn.BatchNorm2d(num_features)
        self.n_source = None
        self.domain = "target"

    def forward(self, x):
        if self.n_source is not None:
            n = self.n_source
            return torch.cat([self.source(x[:n]), self.target(x[n:])])
        return getattr(self, self.domain)(x)


@contextlib.contextmanager
def route_domains(model, n_source=None, domain="target"):
    """Within the block, every DomainBatchNorm2d in ``model`` sends the first
    ``n_source`` rows of its input to the source statistics and the rest to the
    target's (n_source given), or all rows to ``domain``'s. A no-op for models
    without domain BatchNorm."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    layers = [m for m in model.modules() if isinstance(m, DomainBatchNorm2d)]
    saved = [(m.n_source, m.domain) for m in layers]
    for m in layers:
        m.n_source, m.domain = n_source, domain
    try:
        yield
    finally:
        for m, (n, d) in zip(layers, saved):
            m.n_source, m.domain = n, d


class DigitNet(nn.Module):
    """features -> (label logits, feature vector the domain head sees).

    ``embed(x)`` returns the last hidden layer of the label predictor (used by
    Subspace Alignment, t-SNE and the proxy A-distance); ``features(x)`` the output
    of the convolutional extractor that the domain classifier reads."""

    def __init__(self, extractor, feature_dim, label_hidden, num_classes, dropout=0.0, batch_norm=False):
        super().__init__()
        self.extractor = extractor
        layers, width = [], feature_dim
        for h in label_hidden:
            layers += [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if batch_norm else []), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.label_hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        self.feature_dim = feature_dim
        self.embed_dim = width

    def features(self, x):
        return self.extractor(x).flatten(1)

    def embed(self, x):
        return self.label_hidden(self.features(x))

    def forward(self, x):
        return self.classifier(self.embed(x))


def _conv(in_channels, out_channels, norm, padding=0):
    """conv5x5 - [BatchNorm] - ReLU. ``norm``: None, "batch" (one BatchNorm2d) or "domain"
    (a DomainBatchNorm2d)."""
    layers = [nn.Conv2d(in_channels, out_channels, 5, padding=padding)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(out_channels))
    elif norm == "domain":
        layers.append(DomainBatchNorm2d(out_channels))
    return layers + [nn.ReLU(inplace=True)]


def _conv_norm(batch_norm, domain_bn):
    if batch_norm and domain_bn:
        raise ValueError("batch_norm and domain_bn exclude each other")
    return "domain" if domain_bn else "batch" if batch_norm else None


def _input_layers(input_norm):
    """``input_norm="instance"``: each image standardised per channel over its own pixels
    (InstanceNorm2d without affine parameters; VADA's instance-normalised inputs, Shu et
    al. 2018), which removes per-image brightness, contrast and colour before the first
    convolution."""
    if input_norm in (None, "none"):
        return []
    if input_norm == "instance":
        return [nn.InstanceNorm2d(3, affine=False)]
    raise ValueError(f"input_norm must be 'none' or 'instance', got {input_norm!r}")


def mnist_net(num_classes=10, domain_bn=False, batch_norm=False, input_norm=None):
    """conv5x5 32 - ReLU - maxpool 2/2 - conv5x5 48 - ReLU - maxpool 2/2 | FC100-ReLU-FC100-ReLU-FC10.
    Not in the paper: ``domain_bn``, a DomainBatchNorm2d after each convolution;
    ``batch_norm``, a BatchNorm after each convolution and each hidden FC layer;
    ``input_norm`` (see _input_layers)."""
    norm = _conv_norm(batch_norm, domain_bn)
    extractor = nn.Sequential(
        *_input_layers(input_norm),
        *_conv(3, 32, norm), nn.MaxPool2d(2, 2),
        *_conv(32, 48, norm), nn.MaxPool2d(2, 2),
    )
    return DigitNet(extractor, 48 * 5 * 5, (100, 100), num_classes, batch_norm=batch_norm)


def mnist_bn_net(num_classes=10, domain_bn=False, input_norm=None):
    """The paper's MNIST net with BatchNorm after every convolution and hidden FC layer."""
    return mnist_net(num_classes, domain_bn=domain_bn, batch_norm=not domain_bn, input_norm=input_norm)


def svhn_net(num_classes=10, domain_bn=False, input_norm=None):
    """conv5x5 64 - maxpool 3/2 - conv5x5 64 - maxpool 3/2 - conv5x5 128 | FC3072-FC2048-FC10, dropout.
    ``domain_bn``: a DomainBatchNorm2d after each convolution (not in the paper)."""
    norm = _conv_norm(False, domain_bn)
    extractor = nn.Sequential(
        *_input_layers(input_norm),
        *_conv(3, 64, norm, padding=2), nn.MaxPool2d(3, 2),
        *_conv(64, 64, norm, padding=2), nn.MaxPool2d(3, 2),
        *_conv(64, 128, norm, padding=2),
    )
    return DigitNet(extractor, 128 * 7 * 7, (3072, 2048), num_classes, dropout=0.5)


ARCHITECTURES = {"mnist": mnist_net, "mnist-bn": mnist_bn_net, "svhn": svhn_net}
DIGIT_NETS = tuple(ARCHITECTURES)


def model_factory(arch, num_classes, input_shape=None, weights=None, input_norm=None):
    """What methods get to build their networks: ``factory(**options)`` -> a fresh net
    (options such as ``domain_bn=True`` are the method's to ask for; ``input_norm`` is the
    run's, the same for every method). Networks sized by the data (backbones.ARCHITECTURES)
    get ``input_shape`` (one sample's shape) and ``weights`` (--weights) instead."""
    if arch in backbones.ARCHITECTURES:
        if input_norm not in (None, "none"):
            raise ValueError(f"--input-norm {input_norm} is for the digit nets ({', '.join(DIGIT_NETS)}), "
                             f"not --arch {arch}")
        return lambda **options: ARCHITECTURES[arch](num_classes, input_shape=input_shape, weights=weights, **options)
    return lambda **options: ARCHITECTURES[arch](num_classes, input_norm=input_norm, **options)
# Architecture by task when --arch is not given (default: mnist).
DEFAULT_ARCH = {}  # the paper used the SVHN net for Syn Numbers; at 26M parameters it is too slow for 2 CPU cores, so opt in with --arch svhn


def domain_head(arch, feature_dim, lambda_=1.0, hidden=None, num_domains=2):
    """The paper's domain classifier for each architecture (or ``hidden`` widths), the
    reversal fused into its first layer; K-way (backbones.MultiDomainDiscriminator) for
    ``num_domains`` > 2."""
    if not hidden:
        hidden = backbones.DOMAIN_HIDDEN.get(arch, (1024, 1024) if arch == "svhn" else (100,))
    if num_domains > 2:
        return backbones.MultiDomainDiscriminator(feature_dim, hidden, num_domains, lambda_=lambda_)
    return DomainDiscriminator(feature_dim, hidden=hidden, fused_grl=True, lambda_=lambda_)


from . import backbones  # noqa: E402 - the networks of other settings (they build on DigitNet above)

ARCHITECTURES.update(backbones.ARCHITECTURES)
