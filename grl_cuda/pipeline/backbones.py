"""Networks beyond the paper's digit nets, registered in models.ARCHITECTURES by one
hook (this module imports nothing of models.py at load): the JMLR paper's shallow net for feature vectors, and (with a domain count
above two) the K-way domain classifier of multi-source DANN.

Each network has DigitNet's interface (``features``, ``label_hidden``, ``classifier``,
``embed``, ``feature_dim``) so every method runs on it unchanged."""

from torch import nn

from grl_cuda import GradientReversalLinear


def shallow_net(num_classes, input_shape, hidden=50, domain_bn=False):
    """Ganin et al., JMLR 2016, section 5.1 (Amazon reviews): one hidden layer of
    ``hidden`` sigmoid units G_f (50 in the paper) read by a softmax label predictor
    G_y and, through the reversal, a logistic-regression domain classifier G_d.
    ``domain_bn`` is accepted for DANN-DSBN and adds nothing: the net has no
    BatchNorm (route_domains is a no-op on it)."""
    from .models import DigitNet  # here: models.py imports this module

    if len(input_shape) != 1:
        raise ValueError(f"the shallow net reads vectors (N, D), got inputs of shape (N, {', '.join(map(str, input_shape))})")
    extractor = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.Sigmoid())
    return DigitNet(extractor, hidden, (), num_classes)


# Networks sized by the data: model_factory passes them input_shape (one sample's shape).
ARCHITECTURES = {"shallow": shallow_net}
# Hidden widths of each one's domain classifier (the shallow net's is logistic regression).
DOMAIN_HIDDEN = {"shallow": ()}


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
