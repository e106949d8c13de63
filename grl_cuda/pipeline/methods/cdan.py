"""CDAN and CDAN+E (Long, Cao, Wang, Jordan, NeurIPS 2018, "Conditional Adversarial
Domain Adaptation"): DANN whose domain classifier sees the label predictor's
output beside the features, through a multilinear map, so that it aligns the
joint distribution of (features, predictions) rather than the features alone.

- Multilinear map: T(h, g) = h (x) g, the outer product of the features h (the
  label predictor's last hidden layer, the paper's bottleneck) and the softmax
  prediction g, flattened to dim(h) * K values.
- Randomised map, when dim(h) * K is large: T(h, g) = (R_h h) * (R_g g) / sqrt(d),
  elementwise, with R_h, R_g fixed Gaussian matrices of d rows (d = 1024 by
  default): its inner products are unbiased estimates of the multilinear map's.
  ``--cdan-map auto`` picks it above ``RANDOMIZED_ABOVE`` values.
- CDAN+E weights each sample's domain loss by w = 1 + exp(-H(g)) (confident
  predictions count more), normalised so that each domain's weights sum to one,
  and the loss is half the sum over both domains: with equal weights, DANN's mean.

As in the authors' code, g enters the map detached (the label predictor is
trained by the label loss; the adversary reaches the extractor through h). The
entropy weights are detached too (the authors' code also reverses a gradient
through them; we do not). The reversal is the head's fused first layer, the
loss the fused ``domain_bce_with_logits`` (reduction "none" for CDAN+E's per-row
weights: the fused op takes one weight per domain, not per row).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from grl_cuda import domain_bce_with_logits

from ..config import CDAN_MAPS, disc_hidden
from ..health import prediction_entropy
from ..models import domain_head
from .dann import DANN

RANDOMIZED_ABOVE = 4096  # multilinear map widths above this use the randomised map under "auto"


class MultilinearMap(nn.Module):
    """(h, g) -> h (x) g flattened: (N, F), (N, K) -> (N, F * K)."""

    def __init__(self, feature_dim, num_classes):
        super().__init__()
        self.out_features = feature_dim * num_classes

    def forward(self, h, g):
        return torch.bmm(g.unsqueeze(2), h.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    """(h, g) -> (h R_h^T) * (g R_g^T) / sqrt(d): (N, F), (N, K) -> (N, d). R_h, R_g are
    drawn once (from the global generator at construction, so they follow the
    seed) and are buffers: saved with the checkpoint, never trained."""

    def __init__(self, feature_dim, num_classes, dim=1024):
        super().__init__()
        self.out_features = dim
        self.register_buffer("r_h", torch.randn(dim, feature_dim))
        self.register_buffer("r_g", torch.randn(dim, num_classes))

    def forward(self, h, g):
        return (h @ self.r_h.t()) * (g @ self.r_g.t()) / math.sqrt(self.out_features)


def conditioning_map(kind, feature_dim, num_classes, random_dim=1024):
    """The map of ``--cdan-map`` (auto: multilinear up to RANDOMIZED_ABOVE values)."""
    if kind not in CDAN_MAPS:
        raise ValueError(f"cdan map must be one of {CDAN_MAPS}, got {kind!r}")
    if kind == "randomized" or (kind == "auto" and feature_dim * num_classes > RANDOMIZED_ABOVE):
        return RandomizedMultilinearMap(feature_dim, num_classes, random_dim)
    return MultilinearMap(feature_dim, num_classes)


class CDAN(DANN):
    name = "cdan"
    supports_target_labeled = False  # its losses read no labeled target rows
    k_way_domains = False  # a binary domain loss: several sources are pooled into one domain
    entropy_conditioning = False

    def build_head(self):
        self.map = conditioning_map(self.cfg.cdan_map, self.model.embed_dim, self.num_classes,
                                    self.cfg.cdan_random_dim).to(self.device)
        return domain_head(self.cfg.arch, self.map.out_features, hidden=disc_hidden(self.cfg))

    def extra_state(self):
        # the randomised map's matrices (seeded, so rebuilt identically; kept to be sure)
        return {"map": self.map.state_dict()}

    def load_extra_state(self, state):
        if "map" in state:
            self.map.load_state_dict(state["map"])

    def losses(self, source, target, progress):
        xs, ys, xt = source.x, source.y, target.x
        lam = self.reversal_lambda(progress)
        self.head.grl.set_lambda(lam)
        ns = xs.shape[0]
        h = self.model.label_hidden(self.features_of_both(xs, xt))
        logits = self.model.classifier(h)
        label_loss = F.cross_entropy(logits[:ns], ys)
        g = F.softmax(logits, dim=1).detach()
        domain_logits = self.head(self.map(h, g))
        record = {"label_loss": label_loss.detach()}
        if self.entropy_conditioning:
            w = 1.0 + torch.exp(-prediction_entropy(g))
            w = torch.cat([w[:ns] / w[:ns].sum(), w[ns:] / w[ns:].sum()])
            per_row, domain_acc = domain_bce_with_logits(domain_logits, ns, reduction="none", return_accuracy=True)
            domain_loss = 0.5 * (w * per_row.reshape(-1)).sum()
        else:
            domain_loss, domain_acc = domain_bce_with_logits(domain_logits, ns, return_accuracy=True)
        record.update(domain_loss=domain_loss.detach(), domain_acc=domain_acc, **{"lambda": torch.tensor(lam)})
        return label_loss + domain_loss, record


class CDANEntropy(CDAN):
    """CDAN+E: CDAN with entropy conditioning."""

    name = "cdan-e"
    entropy_conditioning = True
