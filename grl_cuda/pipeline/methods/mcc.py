"""MCC (Jin, Wang, Long, Wang, ECCV 2020, "Minimum Class Confusion for Versatile
Domain Adaptation"): source cross-entropy plus a penalty on how much the
classifier confuses classes on the target batch; no domain classifier.

The target term, for a batch of logits Z (B x K) and temperature T:
  Y = softmax(Z / T)                           (temperature rescaling)
  w_i ~ 1 + exp(-H(Y_i)), scaled to sum to B   (certain predictions count more)
  C = Y^T diag(w) Y                            (K x K class correlation)
  C~_jk = C_jk / sum_i C_ik                    (each class's column sums to 1)
  MCC = (sum of C~'s off-diagonal entries) / K
and the loss is CE(source) + mcc_weight * MCC. The paper: T = 2.5, weight 1.

The paper also adds MCC to adversarial methods (its "DANN+MCC", "CDAN+MCC" rows: the
regulariser beside the domain loss); ``dann-mcc`` is DANN's loss plus the same term.
"""

import torch
import torch.nn.functional as F

from ..distributed import mean_over_ranks
from ..health import prediction_entropy
from .dann import DANN
from .source_only import SourceOnly


def class_confusion(logits, temperature=2.5):
    """MCC's loss on a batch of target logits (module docstring); in [0, (K-1)/K]."""
    k = logits.shape[1]
    y = F.softmax(logits / temperature, dim=1)
    w = 1.0 + torch.exp(-prediction_entropy(y).detach())
    # The weights' scaling to sum to B cancels in the column normalisation, so C is
    # summed over the global batch in data-parallel runs (mean_over_ranks) and the
    # loss is what one process would compute on the whole batch.
    c = mean_over_ranks((y * w[:, None]).t() @ y)
    c = c / c.sum(0, keepdim=True)
    return (c.sum() - c.trace()) / k


class MCC(SourceOnly):
    """Built like source-only (one network, one optimizer); the target batch goes through
    the network in the same pass as the source batch."""

    name = "mcc"
    supports_target_labeled = False  # its losses read no labeled target rows
    subspace_alignment = None

    def losses(self, source, target, progress):
        xs, ys, xt = source.x, source.y, target.x
        ns = xs.shape[0]
        logits = self.model(torch.cat([xs, xt]))
        label_loss = F.cross_entropy(logits[:ns], ys)
        mcc = class_confusion(logits[ns:], self.cfg.mcc_temperature)
        loss = label_loss + self.cfg.mcc_weight * mcc
        return loss, {"label_loss": label_loss.detach(), "mcc_loss": mcc.detach()}


class DANNMCC(DANN):
    """DANN + MCC: DANN's step (one pass over source and target, the domain loss behind
    the reversal) with the class-confusion loss of the target rows' predictions added.
    Only the unlabeled target rows enter it (--target-labeled rows have their own label loss).
    The label head runs on the source rows (DANN's label loss) and then on these: on a net
    whose label head has BatchNorm (mnist-bn), training normalises each domain's rows by
    their own batch there, while evaluation uses running statistics fed by both."""

    name = "dann-mcc"  # the domain loss is DANN's: K-way with several sources

    def target_loss(self, target_features, record):
        logits = self.model.classifier(self.model.label_hidden(target_features))
        mcc = class_confusion(logits, self.cfg.mcc_temperature)
        record["mcc_loss"] = mcc.detach()
        return self.cfg.mcc_weight * mcc
