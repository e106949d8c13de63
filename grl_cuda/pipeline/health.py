"""Collapse detection during training, from the values the loop logs.

Adversarial training fails in recognisable ways (issue 15), each flagged when it
holds on every logged record of a window of steps (``--collapse-window``):

- ``disc50``: the domain classifier's accuracy pinned at 50% (within +-ACC_NEAR):
  it has given up (a constant output gives exactly 50% on the 50/50 batch). A
  healthy equilibrium near 50% wanders more than that on a 128-image batch (one
  record lands within +-0.02 with probability ~1/3, ten in a row ~1e-5).
- ``disc100``: the accuracy pinned at or above ACC_HIGH: the features separate the
  domains and the reversal no longer moves them.
- ``target-collapse``: the target predictions concentrate on few classes: the
  entropy of the batch's mean prediction (in units of log K) at or below
  MARGINAL_LOW, i.e. fewer than about K**MARGINAL_LOW classes in effective use,
  while the target batch is assumed to cover the classes. (A low mean per-image
  entropy alone is confident predictions, not collapse, and is not flagged.)
- ``uniform``: every target prediction near uniform (mean per-image entropy at or
  above UNIFORM_HIGH of log K): the network no longer separates classes at all. Seen
  with DANN when the reversed gradient kills the extractor's ReLUs (the features go
  to zero for both domains, the domain classifier then sits at 50% and the source
  label loss returns to log K: Syn -> MNIST with lambda 1, issue 15); it comes long
  before ``disc50`` does.

The target entropies are measured by the loop on the step's target batch, with the
network in evaluation mode (``target_prediction_stats``), for every method.
"""

import collections
import math

import torch
import torch.nn.functional as F

ACC_NEAR = 0.02
ACC_HIGH = 0.99
MARGINAL_LOW = 0.5
UNIFORM_HIGH = 0.98
FLAGS = ("disc50", "disc100", "target-collapse", "uniform")


def prediction_entropy(p, eps=1e-8):
    """H(p) of each row of probabilities ``p``, in nats."""
    return -(p * torch.log(p + eps)).sum(1)


@torch.no_grad()
def target_prediction_stats(method, x):
    """{target_entropy, target_marginal_entropy} of ``method``'s predictions on target
    images ``x``, both divided by log K (0: one class, 1: uniform): the mean entropy of
    each image's prediction, and the entropy of the batch's mean prediction."""
    method.train(False)
    try:
        p = F.softmax(method.predict(x, "target").float(), dim=1)
    finally:
        method.train(True)
    log_k = math.log(p.shape[1]) if p.shape[1] > 1 else 1.0
    return {"target_entropy": prediction_entropy(p).mean().item() / log_k,
            "target_marginal_entropy": prediction_entropy(p.mean(0, keepdim=True)).item() / log_k}


def window_records(window_steps, log_every):
    """How many consecutive log records span ``window_steps`` steps (at least 2)."""
    return max(2, math.ceil(window_steps / log_every))


class CollapseMonitor:
    """Fed each train record of metrics.jsonl in order (``update``); says which flags
    hold over the last ``window`` records, and keeps when each was first and last seen
    for summary.json. Its state is a function of the records alone, so a resumed run
    rebuilds it by replaying the records kept in its checkpoint."""

    def __init__(self, window):
        if window < 1:
            raise ValueError(f"window must be >= 1 record, got {window}")
        self.window = window
        self.recent = collections.deque(maxlen=window)
        self.seen = {}  # flag -> {"first": step, "last": step, "records": n}
        self.active = []

    def update(self, record):
        """The flags (a sorted list, maybe empty) that hold at this record."""
        self.recent.append(record)
        active = []
        if len(self.recent) == self.window:
            if self._all("domain_acc", lambda a: abs(a - 0.5) <= ACC_NEAR):
                active.append("disc50")
            if self._all("domain_acc", lambda a: a >= ACC_HIGH):
                active.append("disc100")
            if self._all("target_marginal_entropy", lambda h: h <= MARGINAL_LOW):
                active.append("target-collapse")
            if self._all("target_entropy", lambda h: h >= UNIFORM_HIGH):
                active.append("uniform")
        for flag in active:
            seen = self.seen.setdefault(flag, {"first": record["step"], "last": record["step"], "records": 0})
            seen["last"] = record["step"]
            seen["records"] += 1
        self.active = active
        return active

    def _all(self, key, test):
        return all(key in r for r in self.recent) and all(test(r[key]) for r in self.recent)

    def replay(self, records):
        for record in records:
            self.update(record)

    def summary(self):
        """For summary.json: whether any flag was raised, each flag's first and last
        step, and the flags still raised at the end."""
        return {"seen": bool(self.seen), "flags": {k: dict(v) for k, v in sorted(self.seen.items())},
                "at_end": list(self.active), "window_records": self.window}
