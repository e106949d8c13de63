"""The bounds of the paper's tables: source only (lower), train on target (upper),
and Subspace Alignment on the source-only model's features."""

import torch
import torch.nn.functional as F

from .. import diagnostics
from .base import Method


class SourceOnly(Method):
    """Trains the label predictor on labeled source data only."""

    name = "source-only"

    def __init__(self, cfg, model_factory, num_classes, device):
        super().__init__(cfg, model_factory, num_classes, device)
        self.model = model_factory().to(device)
        self.opt = self.sgd(self.model.parameters())

    def networks(self):
        return {"model": self.model}

    def optimizers(self):
        return {"opt": self.opt}

    def _batch(self, xs, ys, xt, yt):
        return xs, ys

    def train_step(self, xs, ys, xt, yt, progress, target_index=None):
        x, y = self._batch(xs, ys, xt, yt)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads(self.model.parameters())
        self.opt.step()
        return {"label_loss": loss.detach()}

    def predict(self, x, domain="target"):
        return self.model(x)

    def embed(self, x, domain="target"):
        return self.model.embed(x)

    def final_metrics(self, data, final_eval):
        # Subspace Alignment rides on every source-only model: it costs seconds.
        return {"sa": diagnostics.subspace_alignment(self, data)}


class TargetOnly(SourceOnly):
    """The upper bound: trained on labeled target data (the only method that sees target labels)."""

    name = "target-only"
    uses_target_labels = True

    def _batch(self, xs, ys, xt, yt):
        return xt, yt

    def final_metrics(self, data, final_eval):
        return {}


class SubspaceAlignment(SourceOnly):
    """Source-only training, then Subspace Alignment (Fernando et al., 2013) of the
    last hidden layer's features; the reported target accuracy is SA's."""

    name = "sa"

    def final_metrics(self, data, final_eval):
        extra = super().final_metrics(data, final_eval)
        return {**extra, "target_test_acc": extra["sa"]["target_test_acc"],
                "source_only_target_test_acc": final_eval["target_test_acc"]}
