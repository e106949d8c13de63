"""The bounds of the paper's tables: source only (lower), train on target (upper),
and Subspace Alignment on the source-only model's features."""

import torch
import torch.nn.functional as F

from .base import Method


class SourceOnly(Method):
    """Trains the label predictor on labeled source data only."""

    name = "source-only"
    distribute = "ddp"
    subspace_alignment = "also"  # SA rides on every source-only model: it costs seconds
    supports_target_labeled = True  # with --target-labeled: the "source + few target labels" baseline

    def __init__(self, cfg, model_factory, num_classes, device):
        super().__init__(cfg, model_factory, num_classes, device)
        self.model = model_factory().to(device)
        self.opt = self.make_optimizer(self.model.parameters())

    def networks(self):
        return {"model": self.model}

    def optimizers(self):
        return {"opt": self.opt}

    def _batch(self, source, target):
        return source.x, source.y

    def losses(self, source, target, progress):
        x, y = self._batch(source, target)
        labeled = None if self.uses_target_labels else self.labeled_target(target)
        if labeled is None:
            loss = F.cross_entropy(self.model(x), y)
        else:  # one forward; each domain's rows averaged on their own, as DANN does
            logits = self.model(torch.cat([x, labeled[0]]))
            loss = F.cross_entropy(logits[:len(y)], y) + F.cross_entropy(logits[len(y):], labeled[1])
        return loss, {"label_loss": loss.detach()}

    def predict(self, x, domain="target"):
        return self.model(x)

    def embed(self, x, domain="target"):
        return self.model.embed(x)


class TargetOnly(SourceOnly):
    """The upper bound: trained on labeled target data (the only method that sees target labels)."""

    name = "target-only"
    uses_target_labels = True  # the loop hands it LabeledTargetBatch
    supports_target_labeled = False  # it reads every target train label already
    subspace_alignment = None

    def _batch(self, source, target):
        return target.x, target.y


class SubspaceAlignment(SourceOnly):
    """Source-only training, then Subspace Alignment (Fernando et al., 2013) of the
    last hidden layer's features; the reported target accuracy is SA's."""

    name = "sa"
    subspace_alignment = "instead"
