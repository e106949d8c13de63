"""CGDM (Du, Li, Su, Zhu, Lu, CVPR 2021): bi-classifier adversarial training (MCD,
Saito et al. 2018) plus cross-domain gradient discrepancy minimisation with
clustered target pseudo labels. MCD is the same code with the gradient term,
the pseudo labels and the information-maximisation term switched off.

A generator G (the task's convolutional extractor plus a bottleneck) and two
classifiers F1, F2. The first ``refresh_every`` steps are plain MCD (the authors
start from a source-trained model); from the first pseudo-label refresh on, each
step is:

- A (G, F1, F2): source CE + alpha * entropy-weighted pseudo-label CE on target
  (+ information maximisation, as the authors' code adds);
- B (F1, F2, G fixed): source CE - discrepancy on target;
- C, ``num_k`` times (G): discrepancy + beta * gradient discrepancy (+ IM).

The gradient discrepancy is 1 - cos(g_s, g_t) between the gradients of the source
loss and of the weighted target loss w.r.t. the classifiers' parameters, per
parameter tensor (row-wise for matrices) and averaged, taken with
``create_graph=True`` so that it trains G through a double backward.

Differences from the paper, for a 2-core CPU: the bottleneck is 256-d as in the
paper, the classifiers are 256-256-K instead of 256-1000-1000-K. Steps A, B and C
each run G, F1 and F2 once over the source and target rows together, so the
BatchNorm1d layers of the bottleneck and the classifiers normalise by the mixture's
batch statistics (MCD's reference solver runs G on each domain apart, and its step A
on the source alone).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import mean_over_ranks
from .base import Method


def classifier(in_features, hidden, num_classes, dropout=0.5):
    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def discrepancy(logits1, logits2):
    """MCD's classifier discrepancy: mean |softmax1 - softmax2|."""
    return (F.softmax(logits1, dim=1) - F.softmax(logits2, dim=1)).abs().mean()


def information_maximisation(logits):
    """Mean prediction entropy minus the entropy of the mean prediction (minimised:
    confident and diverse predictions). Data-parallel: the mean prediction is the
    global batch's (each rank holds an equal share)."""
    p = F.softmax(logits, dim=1)
    entropy = -(p * torch.log(p + 1e-6)).sum(1).mean()
    mean_p = mean_over_ranks(p.mean(0))
    diversity = -(mean_p * torch.log(mean_p + 1e-6)).sum()
    return entropy - diversity


def entropy_weights(logits):
    """w = 1 + exp(-H(p)): confident target predictions count more."""
    p = F.softmax(logits, dim=1)
    h = -(p * torch.log(p + 1e-6)).sum(1)
    return 1.0 + torch.exp(-h)


def gradient_discrepancy(loss_source, loss_target, params):
    """1 - mean cosine similarity between d(loss_source)/d(params) and
    d(loss_target)/d(params): per tensor, row-wise for matrices. Differentiable
    (create_graph=True) so that it can train whatever produced the losses' inputs.
    Data-parallel: the cosines are of the global batch's gradients (the ranks' average),
    not of each rank's."""
    g_s = [mean_over_ranks(g) for g in torch.autograd.grad(loss_source, params, create_graph=True)]
    g_t = [mean_over_ranks(g) for g in torch.autograd.grad(loss_target, params, create_graph=True)]
    cosines = []
    for a, b in zip(g_s, g_t):
        if a.dim() >= 2:
            cosines.append(F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8).mean())
        else:
            cosines.append(F.cosine_similarity(a, b, dim=0, eps=1e-8))
    return 1.0 - torch.stack(cosines).mean()


@torch.no_grad()
def cluster_pseudo_labels(features, probabilities, rounds=1):
    """Nearest-centroid pseudo labels in cosine distance, as CGDM describes:
    features get a constant 1 appended and are L2-normalised; initial centroids
    are probability-weighted means; then ``rounds`` hard re-assignments."""
    f = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype, device=features.device)], 1)
    f = F.normalize(f, dim=1)
    weights = probabilities
    labels = None
    for _ in range(rounds + 1):
        centroids = weights.t() @ f / (weights.sum(0)[:, None] + 1e-8)
        labels = (f @ F.normalize(centroids, dim=1).t()).argmax(1)
        weights = F.one_hot(labels, probabilities.shape[1]).to(f.dtype)
    return labels


class CGDM(Method):
    name = "cgdm"
    use_gradient_discrepancy = True
    # DDP cannot serve this step: three optimiser steps over different parameter sets,
    # and step C's backward through autograd.grad(create_graph=True) (DDP's reducer
    # does not support double backward). sync_grads after each backward instead.
    distribute = "explicit"

    def __init__(self, cfg, model_factory, num_classes, device, bottleneck=256, hidden=(256, 256)):
        super().__init__(cfg, model_factory, num_classes, device)
        base = model_factory()
        self.G = nn.Sequential(base.extractor, nn.Flatten(), nn.Linear(base.feature_dim, bottleneck),
                               nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True)).to(device)
        self.F1 = classifier(bottleneck, hidden, num_classes).to(device)
        self.F2 = classifier(bottleneck, hidden, num_classes).to(device)
        self.opt_g = self.make_optimizer(self.G.parameters())
        self.opt_f = self.make_optimizer(list(self.F1.parameters()) + list(self.F2.parameters()))
        self.pseudo_labels = None
        self.alpha = cfg.alpha if self.use_gradient_discrepancy else 0.0
        self.beta = cfg.beta if self.use_gradient_discrepancy else 0.0
        self.im_weight = cfg.im_weight if self.use_gradient_discrepancy else 0.0

    def networks(self):
        return {"G": self.G, "F1": self.F1, "F2": self.F2}

    def optimizers(self):
        return {"opt_g": self.opt_g, "opt_f": self.opt_f}

    def extra_state(self):
        return {"pseudo_labels": self.pseudo_labels}

    def load_extra_state(self, state):
        self.pseudo_labels = state.get("pseudo_labels")

    def classifier_params(self):
        return list(self.F1.parameters()) + list(self.F2.parameters())

    @torch.no_grad()
    def refresh(self, step, target_x):
        # The authors start from a source-trained model: until the first refresh the
        # steps are plain MCD, since pseudo labels of an untrained model are noise.
        if not self.use_gradient_discrepancy or step == 0:
            return {}
        self.train(False)
        feats, probs = [], []
        for i in range(0, len(target_x), 512):
            f = self.G(target_x[i:i + 512])
            feats.append(f)
            probs.append(F.softmax(self.F1(f) + self.F2(f), dim=1))
        self.train(True)
        self.pseudo_labels = cluster_pseudo_labels(torch.cat(feats), torch.cat(probs))
        return {"pseudo_labels": self.pseudo_labels}  # the loop logs their accuracy

    @staticmethod
    def _source_ce(l1, l2, ys):
        """Cross-entropy of both classifiers on the labeled source rows."""
        ns = ys.shape[0]
        return F.cross_entropy(l1[:ns], ys) + F.cross_entropy(l2[:ns], ys)

    def _target_ce(self, l1, l2, target_index):
        """Entropy-weighted CE of both classifiers against the pseudo labels."""
        pl = self.pseudo_labels[target_index]
        w = entropy_weights((l1 + l2).detach())
        return ((F.cross_entropy(l1, pl, reduction="none") + F.cross_entropy(l2, pl, reduction="none")) * w).mean()

    def train_step(self, source, target, progress):
        xs, ys, xt, target_index = source.x, source.y, target.x, target.index
        ns = xs.shape[0]
        x = torch.cat([xs, xt])
        pseudo = self.use_gradient_discrepancy and self.pseudo_labels is not None and target_index is not None

        # A: G, F1, F2 on source labels (+ weighted pseudo labels, + IM)
        f = self.G(x)
        l1, l2 = self.F1(f), self.F2(f)
        loss_a = self._source_ce(l1, l2, ys)
        if pseudo and self.alpha:
            loss_a = loss_a + self.alpha * self._target_ce(l1[ns:], l2[ns:], target_index)
        if pseudo and self.im_weight:
            loss_a = loss_a + self.im_weight * information_maximisation(l1[ns:] + l2[ns:])
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_f.zero_grad(set_to_none=True)
        loss_a.backward()
        self.sync_grads(list(self.G.parameters()) + self.classifier_params())
        self.opt_g.step()
        self.opt_f.step()
        source_loss = loss_a.detach()

        # B: classifiers maximise their disagreement on target, stay right on source
        with torch.no_grad():
            f = self.G(x)
        l1, l2 = self.F1(f), self.F2(f)
        loss_b = self._source_ce(l1, l2, ys) - discrepancy(l1[ns:], l2[ns:])
        self.opt_f.zero_grad(set_to_none=True)
        loss_b.backward()
        self.sync_grads(self.classifier_params())
        self.opt_f.step()

        # C: the generator minimises the disagreement (+ the gradient discrepancy)
        gd = torch.zeros((), device=x.device)
        for _ in range(self.cfg.num_k):
            f = self.G(x)
            l1, l2 = self.F1(f), self.F2(f)
            dis = discrepancy(l1[ns:], l2[ns:])
            loss_c = dis
            if pseudo and self.beta:
                src = self._source_ce(l1, l2, ys)
                tgt = self._target_ce(l1[ns:], l2[ns:], target_index)
                gd = gradient_discrepancy(src, tgt, self.classifier_params())
                loss_c = loss_c + self.beta * gd
            if pseudo and self.im_weight:
                loss_c = loss_c + self.im_weight * information_maximisation(l1[ns:] + l2[ns:])
            self.opt_g.zero_grad(set_to_none=True)
            loss_c.backward()
            self.sync_grads(list(self.G.parameters()))
            self.opt_g.step()
        for p in self.classifier_params():  # step C's gradients on F are not used
            p.grad = None
        return {"label_loss": source_loss, "discrepancy": dis.detach(), "gradient_discrepancy": gd.detach()}

    def predict(self, x, domain="target"):
        f = self.G(x)
        return self.F1(f) + self.F2(f)

    def embed(self, x, domain="target"):
        return self.G(x)


class MCD(CGDM):
    """Maximum Classifier Discrepancy: CGDM without pseudo labels, gradient
    discrepancy and information maximisation."""

    name = "mcd"
    use_gradient_discrepancy = False
