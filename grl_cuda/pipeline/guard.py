"""Rollback: an adversarial run that damages its own classifier goes back to its
last good weights and continues with half the reversal's lambda (``--rollback``).

Adversarial training fails in two ways we have measured (issue 15,
docs/dann_probes_mnist_mnistm.md): the reversed gradient kills the extractor's
ReLUs and the network forgets everything (Syn -> MNIST, lambda 1: source accuracy
0.97 -> 0.33 within 250 steps), or the game turns unstable late and drags the
classifier with it (MNIST -> UCI digits: source accuracy 0.97 -> 0.89 over the
last 750 steps, target accuracy 0.705 -> 0.547). Both show in the one signal a
user always has: the accuracy on the held-out *source* split (labels the run
already owns; no target label is read). Every ``--rollback-every`` steps the guard
scores the run by it: the lower of the accuracies of the current weights (they show
a collapse at once) and, with ``--ema``, of the averaged weights that evaluation
reports (they can go bad on their own: on MNIST -> UCI digits the average of an
oscillating game scored 0.89 on the source split where the last weights scored 0.97).
With the score

- at or above its best so far: the weights (networks, optimizers, the ``--ema``
  average) are kept in memory as the last good state;
- more than ``--rollback`` below that best: the run returns to the last good state
  and the reversal's lambda is halved for the rest of the run (and halved again on
  the next rollback). The step counter, the data order and the random streams go
  on, so the run does not replay the steps that failed.

The source accuracy cannot see a collapse on the target alone: VADA on UCI digits
-> MNIST put every target image in one class from step 650 (target accuracy 0.10)
while the source accuracy stayed at 0.99 (docs/dann_probes_mnist_mnistm.md, session
9). So the guard also reads the collapse monitor (health.py; label-free, on by
default, ``--no-rollback-collapse`` turns it off): a check fails, whatever the
source accuracy, when the monitor's ``uniform`` flag is up (every target prediction
near uniform), or its ``target-collapse`` flag is up *and* the target predictions'
marginal entropy (the window's mean, in units of log K) has fallen more than
COLLAPSE_DROP below its peak, the highest it was at a kept state. The second
condition keeps a target whose classes really are few (low marginal entropy from
the start) from reading as a collapse. A state is kept as good only when its
check does not fail and its marginal entropy has not fallen that far: a collapse
comes gradually (VADA's marginal entropy read 0.58, 0.42, 0.23 at steps 250, 500,
750 before the flag went up), and the state to return to is one from before it.
After a rollback the monitor's records of the weights the run left are not read:
its flags count again once a whole window has been logged since. The final check, the
last chance to act, reads the last half window: on VADA's UCI digits -> MNIST the run
collapsed again after each rollback, the last one half a window before the end, and a
collapse that starts late in a run would otherwise be reported too.

At the end the same test decides whether the run reports its last weights or the
last good ones. The guard watches the steps ``method.guarded_steps()`` says: the whole
run, except DIRT-T's refinement (target data alone, where the source accuracy may fall
by design); that refinement starts from the weights the guard's last check kept. The
held-out source split is then a validation split: its accuracy in summary.json has
served for this choice.
"""

import copy
import math

import torch
import torch.distributed as dist

from . import health
from .evaluate import source_test_accuracy

# Each rollback multiplies the reversal's lambda by this.
LAMBDA_FACTOR = 0.5
# A target-collapse flag fails a check when the marginal entropy of the target predictions (in units
# of log K) is this much below its peak at a kept state: one class of ten is a fall of ~0.9 from a
# balanced start; a target with few classes starts low and does not fall.
COLLAPSE_DROP = 0.25


class Rollback:
    """The guard of one run (module doc). Its state goes in the checkpoint."""

    def __init__(self, drop, method, average, rank=0, world=1, monitor=None):
        self.drop, self.method, self.average = drop, method, average
        self.rank, self.world = rank, world
        self.monitor = monitor  # health.CollapseMonitor whose flags fail a check (None: the source accuracy alone)
        self.best_acc = -1.0
        self.best_step = None
        self.good = None  # {"method": state, "average": state} at best_step, deep copies
        self.peak_marginal = math.nan  # the highest target marginal entropy at a kept state (window means)
        self.restored_at = -1  # the step of the last rollback: the monitor's records up to it are other weights'
        # the monitor's flags raised at best_step (rank 0; None: not known), summary.json's after a final rollback
        self.flags_at_best = None
        # [{"step", "reason", "source_val_acc", "best_acc", "best_step", "lambda_scale", "final"}]
        self.rollbacks = []
        method.lambda_scale = 1.0

    @property
    def lambda_scale(self):
        """The factor on the method's reversal lambda (halved at each rollback): the method holds it."""
        return self.method.lambda_scale

    def source_val_accs(self, tensors):
        """Rank 0's accuracies on the held-out source split of the current weights and of the
        averaged ones (the first again without --ema), on every rank."""
        accs = torch.zeros(2, dtype=torch.float64)
        if self.rank == 0:
            accs[0] = source_test_accuracy(self.method, tensors)
            accs[1] = accs[0]
            if self.average:
                with self.average.swapped_in():
                    accs[1] = source_test_accuracy(self.method, tensors)
        if self.world > 1:  # one decision for all ranks: they keep and restore the same states
            dist.broadcast(accs, 0)
        return accs.tolist()

    def target_signs(self, final):
        """Rank 0's monitor, on every rank: (uniform, target-collapse, the mean target marginal entropy),
        read from the records of its window logged after the last rollback (those before it describe the
        weights the run left). A flag, with the monitor's thresholds, must hold on all of them, and they
        must fill the window; the final check, the last chance to act, reads the last half window."""
        signs = torch.full((3,), math.nan, dtype=torch.float64)
        if self.rank == 0:
            fresh = [r for r in self.monitor.recent if r["step"] > self.restored_at and "target_entropy" in r]
            needed = math.ceil(self.monitor.window / 2) if final else self.monitor.window
            if len(fresh) >= needed:  # the flags, and the mean, over the records they need
                fresh = fresh[len(fresh) - needed:]
                signs[0] = float(all(r["target_entropy"] >= health.UNIFORM_HIGH for r in fresh))
                signs[1] = float(all(r["target_marginal_entropy"] <= health.MARGINAL_LOW for r in fresh))
            else:
                signs[0] = signs[1] = 0.0
            if fresh:
                signs[2] = sum(r["target_marginal_entropy"] for r in fresh) / len(fresh)
        if self.world > 1:
            dist.broadcast(signs, 0)
        uniform, low, marginal = signs.tolist()
        return bool(uniform), bool(low), marginal

    def collapse(self, final):
        """(the collapse that fails this check: "uniform", "target-collapse" or None (module doc), the
        target marginal entropy it read)."""
        if self.monitor is None:
            return None, math.nan
        uniform, low, marginal = self.target_signs(final)
        if uniform:
            return "uniform", marginal
        if low and self.fallen(marginal):
            return "target-collapse", marginal
        return None, marginal

    def fallen(self, marginal):
        """Whether the target marginal entropy is more than COLLAPSE_DROP below its peak (False while
        either is nan: no monitor records yet)."""
        return self.peak_marginal - marginal > COLLAPSE_DROP

    def check(self, step, tensors, final=False, active_flags=None):
        """Measures, then keeps or restores (module doc). Returns the metrics record.
        ``active_flags``: the collapse monitor's flags raised now (None: not known), kept with a good state."""
        current, averaged = self.source_val_accs(tensors)
        acc = min(current, averaged)
        collapse, marginal = self.collapse(final)
        record = {"kind": "guard", "step": step, "source_val_acc": acc, "lambda_scale": self.lambda_scale}
        if self.average:
            record.update(current_source_val_acc=current, averaged_source_val_acc=averaged)
        if self.monitor is not None:
            record.update(target_marginal_entropy=None if math.isnan(marginal) else marginal, collapse=collapse)
        if collapse is None and acc >= self.best_acc and not self.fallen(marginal):
            self.best_acc, self.best_step = acc, step
            self.flags_at_best = None if active_flags is None else list(active_flags)
            if not math.isnan(marginal):
                self.peak_marginal = marginal if math.isnan(self.peak_marginal) else max(self.peak_marginal, marginal)
            self.good = {"method": copy.deepcopy(self.method.state_dict()),
                         "average": copy.deepcopy(self.average.state_dict()) if self.average else None}
        elif (collapse or self.best_acc - acc > self.drop) and self.good is not None:
            self._restore()
            self.restored_at = step
            if not final:  # the run goes on from the good state, more gently
                self.method.lambda_scale *= LAMBDA_FACTOR
            event = {"step": step, "reason": collapse or "source accuracy", "source_val_acc": acc,
                     "best_acc": self.best_acc, "best_step": self.best_step, "lambda_scale": self.lambda_scale,
                     "final": final}
            self.rollbacks.append(event)
            record.update(rollback_to=self.best_step, lambda_scale=self.lambda_scale)
        record["best_acc"] = self.best_acc
        return record

    def _restore(self):
        self.method.load_state_dict(copy.deepcopy(self.good["method"]))
        if self.average:
            self.average.load_state_dict(self.good["average"])

    def ended_on_rollback(self, steps):
        """Whether the run's weights at step ``steps`` (its end) are the last good state's, restored
        by the final check there."""
        return bool(self.rollbacks) and self.rollbacks[-1]["final"] and self.rollbacks[-1]["step"] == steps

    def summary(self):
        return {"drop": self.drop, "watches_collapse": self.monitor is not None,
                "best_source_val_acc": self.best_acc, "best_step": self.best_step,
                "lambda_scale": self.lambda_scale, "rollbacks": list(self.rollbacks)}

    def state_dict(self):
        return {"best_acc": self.best_acc, "best_step": self.best_step, "good": self.good,
                "peak_marginal": self.peak_marginal, "restored_at": self.restored_at,
                "lambda_scale": self.lambda_scale, "flags_at_best": self.flags_at_best,
                "rollbacks": list(self.rollbacks)}

    def load_state_dict(self, state):
        self.best_acc, self.best_step, self.good = state["best_acc"], state["best_step"], state["good"]
        # checkpoints from before the collapse check have neither
        self.peak_marginal, self.restored_at = state.get("peak_marginal", math.nan), state.get("restored_at", -1)
        self.method.lambda_scale, self.rollbacks = state["lambda_scale"], list(state["rollbacks"])
        self.flags_at_best = state.get("flags_at_best")  # absent before it was kept: not known
