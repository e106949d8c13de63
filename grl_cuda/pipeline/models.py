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
    its own statistics and affine parameters, per domain: each source domain and the
    target. A batch shared by several domains (the DANN minibatch) is routed by
    ``route_domains``: its first rows, in blocks of ``source_sizes`` (one block per
    source, in source order), go through their source's layer, the rest through the
    target layer. Otherwise the whole input goes through the layer of ``domain``.

    Why: with one BatchNorm the running statistics are a mixture that fits neither
    domain at test time, and the per-domain shift in low-level statistics is exactly
    what the adversary would otherwise have to remove from the features. With several
    sources the same holds between the sources (MNIST and Syn Numbers differ as much
    as either differs from the target)."""

    def __init__(self, num_features, num_sources=1):
        super().__init__()
        if num_sources < 1:
            raise ValueError(f"num_sources must be at least 1, got {num_sources}")
        self.source = nn.BatchNorm2d(num_features)  # source 0 (the only one with one source)
        # sources 1..S-1 of a multi-source run; empty with one source, whose state_dict keys stay as they were
        self.more_sources = nn.ModuleList(nn.BatchNorm2d(num_features) for _ in range(num_sources - 1))
        self.target = nn.BatchNorm2d(num_features)
        self.source_sizes = None
        self.domain = "target"

    @property
    def num_sources(self):
        return 1 + len(self.more_sources)

    def layer(self, domain):
        """The BatchNorm of ``domain``: "target", "source" (one source only) or a source's index."""
        if domain == "target":
            return self.target
        if domain == "source":
            if self.num_sources > 1:  # which source's statistics would be a guess: a silent wrong answer
                raise ValueError(f"{self.num_sources} source domains: route source rows by their source "
                                 "index (route_domains(source_sizes=...)), not by domain='source'")
            return self.source
        return self.source if domain == 0 else self.more_sources[domain - 1]

    def forward(self, x):
        sizes = self.source_sizes
        if sizes is None:
            return self.layer(self.domain)(x)
        if len(sizes) == 1:  # one source: as before multi-source DSBN existed, to the bit
            n = sizes[0]
            return torch.cat([self.source(x[:n]), self.target(x[n:])])
        return self._per_source(x, sizes)

    # Under --compile this runs eager (a graph break): the per-source row counts change from
    # batch to batch, and compiled each new split would be a recompilation of the whole part.
    @torch.compiler.disable
    def _per_source(self, x, sizes):
        parts = x.split([*sizes, x.shape[0] - sum(sizes)])
        layers = [self.layer(d if d < len(sizes) else "target") for d in range(len(parts))]
        # A domain absent from this batch is skipped (BatchNorm of no rows has no statistics),
        # except by a synchronised BatchNorm (--sync-bn): every rank must join its all-reduce.
        return torch.cat([layer(part) for layer, part in zip(layers, parts)
                          if part.shape[0] or type(layer) is not nn.BatchNorm2d])


@contextlib.contextmanager
def route_domains(model, n_source=None, domain="target", source_sizes=None):
    """Within the block, every DomainBatchNorm2d in ``model`` sends its input's rows
    to the statistics of their domain:

    - ``source_sizes`` [n_0, .., n_{S-1}]: the first n_0 rows to source 0, the next n_1
      to source 1, ..., the remaining rows (if any) to the target;
    - ``n_source``: the same as ``source_sizes=[n_source]`` (one source);
    - else all rows to ``domain`` ("source", "target", or a source's index).

    A no-op for models without domain BatchNorm."""
    if n_source is not None:
        if source_sizes is not None:
            raise ValueError("give n_source or source_sizes, not both")
        source_sizes = [n_source]
    if source_sizes is None and domain not in DOMAINS and not isinstance(domain, int):
        raise ValueError(f"domain must be one of {DOMAINS} or a source index, got {domain!r}")
    layers = [m for m in model.modules() if isinstance(m, DomainBatchNorm2d)]
    if source_sizes is not None:
        source_sizes = [int(n) for n in source_sizes]
        for m in layers:
            if len(source_sizes) != m.num_sources:
                raise ValueError(f"source_sizes has {len(source_sizes)} entries for a DomainBatchNorm2d of "
                                 f"{m.num_sources} source domains")
    elif isinstance(domain, int):
        for m in layers:
            if not 0 <= domain < m.num_sources:
                raise ValueError(f"source index {domain} out of range for {m.num_sources} source domains")
    saved = [(m.source_sizes, m.domain) for m in layers]
    for m in layers:
        m.source_sizes, m.domain = source_sizes, domain
    try:
        yield
    finally:
        for m, (n, d) in zip(layers, saved):
            m.source_sizes, m.domain = n, d


def batch_norms(model):
    """The BatchNorm layers of ``model`` that normalise by the batch in training mode."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_running_stats(model):
    """Within the block, ``model``'s BatchNorm layers normalise as before (by the batch in
    training mode) but leave their running statistics, the ones evaluation uses, alone:
    for extra passes over inputs that are not data (VAT's perturbed images). Through
    track_running_stats, not by writing the old values back: autograd has saved the
    statistics' tensors of the passes before, and an in-place write would void them."""
    layers = [m for m in batch_norms(model) if m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def sorted_by_source(ids, num_sources):
    """(order, sizes): a stable order that groups rows by source id 0..S-1, and each
    source's row count, which is what route_domains(source_sizes=...) reads."""
    order = torch.argsort(ids, stable=True)
    return order, torch.bincount(ids, minlength=num_sources).tolist()


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
    """conv5x5 - [BatchNorm] - ReLU. ``norm``: None, "batch" (one BatchNorm2d) or an int
    S (a DomainBatchNorm2d for S source domains and the target)."""
    layers = [nn.Conv2d(in_channels, out_channels, 5, padding=padding)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(out_channels))
    elif norm is not None:
        layers.append(DomainBatchNorm2d(out_channels, num_sources=norm))
    return layers + [nn.ReLU(inplace=True)]


def _conv_norm(batch_norm, domain_bn):
    """``domain_bn``: False, or the number of source domains of the DomainBatchNorm2d (True: one)."""
    if batch_norm and domain_bn:
        raise ValueError("batch_norm and domain_bn exclude each other")
    return int(domain_bn) if domain_bn else "batch" if batch_norm else None


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
    Not in the paper: ``domain_bn``, a DomainBatchNorm2d after each convolution (an int:
    for that many source domains; True: one);
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
    ``domain_bn``: a DomainBatchNorm2d after each convolution, as in mnist_net (not in the paper)."""
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
