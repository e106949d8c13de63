"""The DANN paper's digit architectures (Ganin & Lempitsky, 2015): a feature
extractor G_f, a label predictor G_y and a domain classifier G_d whose first layer
reverses gradients (GradientReversalLinear: the reversal folded into its GEMM)."""

from torch import nn

from .modules import DomainDiscriminator


class DigitNet(nn.Module):
    """features -> (label logits, feature vector the domain head sees).

    ``embed(x)`` returns the last hidden layer of the label predictor (used by
    Subspace Alignment, t-SNE and the proxy A-distance); ``features(x)`` the output
    of the convolutional extractor that the domain classifier reads."""

    def __init__(self, extractor, feature_dim, label_hidden, num_classes, dropout=0.0):
        super().__init__()
        self.extractor = extractor
        layers, width = [], feature_dim
        for h in label_hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
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


def mnist_net(num_classes=10):
    """conv5x5 32 - ReLU - maxpool 2/2 - conv5x5 48 - ReLU - maxpool 2/2 | FC100-ReLU-FC100-ReLU-FC10."""
    extractor = nn.Sequential(
        nn.Conv2d(3, 32, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 48, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
    )
    return DigitNet(extractor, 48 * 5 * 5, (100, 100), num_classes)


def svhn_net(num_classes=10):
    """conv5x5 64 - maxpool 3/2 - conv5x5 64 - maxpool 3/2 - conv5x5 128 | FC3072-FC2048-FC10, dropout."""
    extractor = nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(inplace=True),
    )
    return DigitNet(extractor, 128 * 7 * 7, (3072, 2048), num_classes, dropout=0.5)


ARCHITECTURES = {"mnist": mnist_net, "svhn": svhn_net}
# Architecture by task when --arch is not given (default: mnist).
DEFAULT_ARCH = {}  # the paper used the SVHN net for Syn Numbers; at 26M parameters it is too slow for 2 CPU cores, so opt in with --arch svhn


def domain_head(arch, feature_dim, lambda_=1.0):
    """The paper's domain classifier for each architecture, reversal fused into its first layer."""
    hidden = (1024, 1024) if arch == "svhn" else (100,)
    return DomainDiscriminator(feature_dim, hidden=hidden, fused_grl=True, lambda_=lambda_)
