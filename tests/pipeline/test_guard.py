"""--rollback (pipeline/guard.py): a run whose held-out source accuracy drops returns to
its last good weights and halves the reversal's lambda; resume keeps the guard's state."""

import itertools
import json

import pytest
import torch
from torch import nn

from grl_cuda.pipeline import guard, health
from grl_cuda.pipeline.config import Config, UserError, check
from grl_cuda.pipeline.evaluate import WeightAverage
from grl_cuda.pipeline.loop import fit as train
from grl_cuda.pipeline.methods.base import Method


class Linear(Method):
    """A method whose source accuracy the test sets by hand (through its weights)."""

    def __init__(self):
        super().__init__(cfg=None, model_factory=None, num_classes=2, device="cpu")
        self.net = nn.Linear(1, 2)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)

    def networks(self):
        return {"net": self.net}

    def optimizers(self):
        return {"opt": self.opt}

    def predict(self, x, domain="target"):
        return self.net(x)

    def set_accuracy_to(self, right):
        """Weights that classify the test split below all right (``right``) or all wrong."""
        with torch.no_grad():
            self.net.weight.copy_(torch.tensor([[-1.0], [1.0]]) * (1 if right else -1))
            self.net.bias.zero_()


def split():
    x = torch.tensor([[-1.0], [-2.0], [1.0], [2.0]])
    return {"source_test": (x, torch.tensor([0, 0, 1, 1]))}


def test_a_drop_restores_the_last_good_weights_and_halves_lambda():
    method, tensors = Linear(), split()
    average = WeightAverage(method.networks(), 0.5)
    rollback = guard.Rollback(0.05, method, average)
    method.set_accuracy_to(right=True)
    record = rollback.check(10, tensors)
    assert record["source_val_acc"] == 1.0 and "rollback_to" not in record
    good = {k: v.clone() for k, v in method.net.state_dict().items()}
    good_average = {k: v.clone() for k, v in average.state_dict()["net"].items()}
    # training moves on (optimizer state, average), then the weights go bad
    method.net(torch.ones(3, 1)).sum().backward()
    method.opt.step()
    average.update()
    method.set_accuracy_to(right=False)
    record = rollback.check(20, tensors)
    assert record["rollback_to"] == 10 and record["source_val_acc"] == 0.0
    for k, v in method.net.state_dict().items():
        assert torch.equal(v, good[k]), k
    for k, v in average.state_dict()["net"].items():
        assert torch.equal(v, good_average[k]), k
    assert method.opt.state_dict()["state"] == {}  # the optimizer as it was at step 10: no momentum yet
    assert method.lambda_scale == rollback.lambda_scale == 0.5
    # a second drop halves it again; the final check restores without changing lambda
    method.set_accuracy_to(right=False)
    rollback.check(30, tensors)
    assert method.lambda_scale == 0.25
    method.set_accuracy_to(right=False)
    rollback.check(40, tensors, final=True)
    assert method.lambda_scale == 0.25 and [e["final"] for e in rollback.rollbacks] == [False, False, True]


def test_averaged_weights_that_go_bad_roll_back_too():
    # --ema reports the averaged weights: the guard scores the lower of both accuracies
    method, tensors = Linear(), split()
    method.set_accuracy_to(right=True)
    average = WeightAverage(method.networks(), 0.5)
    rollback = guard.Rollback(0.05, method, average)
    rollback.check(10, tensors)
    average.state_dict()["net"]["weight"].neg_()  # the average alone goes bad
    record = rollback.check(20, tensors)
    assert record["current_source_val_acc"] == 1.0 and record["averaged_source_val_acc"] == 0.0
    assert record["source_val_acc"] == 0.0 and record["rollback_to"] == 10
    assert torch.equal(average.state_dict()["net"]["weight"], method.net.weight)  # the good average is back


def test_a_drop_within_the_margin_is_kept():
    method, tensors = Linear(), split()
    rollback = guard.Rollback(0.3, method, None)
    method.set_accuracy_to(right=True)
    rollback.check(10, tensors)
    with torch.no_grad():  # one of four wrong: 0.75, a drop of 0.25 < 0.3
        method.net.bias.copy_(torch.tensor([0.0, 3.0]))
    record = rollback.check(20, tensors)
    assert record["source_val_acc"] == 0.75 and "rollback_to" not in record and rollback.lambda_scale == 1.0
    assert rollback.best_step == 10


def test_the_restored_state_is_a_copy():
    # training on after a rollback must not write into the kept good state
    method, tensors = Linear(), split()
    rollback = guard.Rollback(0.05, method, None)
    method.set_accuracy_to(right=True)
    rollback.check(10, tensors)
    method.set_accuracy_to(right=False)
    rollback.check(20, tensors)
    with torch.no_grad():
        method.net.weight.add_(100.0)
    assert rollback.good["method"]["networks"]["net"]["weight"].abs().max() == 1.0


class Monitor:
    """A collapse monitor with a window of one record, which the test writes by hand."""

    window = 1

    def __init__(self):
        self.recent = []

    def show(self, step, marginal, uniform=False):
        """The record logged at ``step``: target marginal entropy ``marginal`` (the target-collapse flag
        at or below health.MARGINAL_LOW), every prediction near uniform or not."""
        self.recent = [{"step": step, "target_marginal_entropy": marginal, "target_entropy": 0.99 if uniform else 0.1}]


def guarded(monitor):
    method, tensors = Linear(), split()
    method.set_accuracy_to(right=True)
    return method, tensors, guard.Rollback(0.05, method, None, monitor=monitor)


def test_a_target_collapse_rolls_back_whatever_the_source_accuracy():
    # VADA on UCI digits -> MNIST: every target image in one class, the source accuracy intact
    monitor = Monitor()
    method, tensors, rollback = guarded(monitor)
    monitor.show(10, 0.9)
    rollback.check(10, tensors)
    good = method.net.weight.clone()
    with torch.no_grad():
        method.net.weight.mul_(2.0)  # still all right on the source split
    monitor.show(20, 0.05)
    record = rollback.check(20, tensors)
    assert record["source_val_acc"] == 1.0 and record["collapse"] == "target-collapse"
    assert record["rollback_to"] == 10 and torch.equal(method.net.weight, good)
    assert rollback.rollbacks[0]["reason"] == "target-collapse" and method.lambda_scale == 0.5
    assert rollback.best_step == 10  # the collapsed state was not kept as good
    # predictions all near uniform fail a check too
    monitor.show(30, 0.9, uniform=True)
    assert rollback.check(30, tensors)["collapse"] == "uniform" and method.lambda_scale == 0.25


def test_a_gradual_collapse_returns_to_a_state_from_before_it():
    # the marginal entropy falls over several checks before the flag goes up (VADA: 0.58, 0.42, 0.23):
    # a state more than COLLAPSE_DROP below the peak is not kept, so the rollback goes back past it
    monitor = Monitor()
    method, tensors, rollback = guarded(monitor)
    for step, marginal in ((10, 0.9), (20, 0.7), (30, 0.6)):
        monitor.show(step, marginal)
        record = rollback.check(step, tensors)
        assert record["collapse"] is None and "rollback_to" not in record
    assert rollback.best_step == 20 and rollback.peak_marginal == 0.9  # step 30 had fallen: not kept
    monitor.show(40, 0.1)
    assert rollback.check(40, tensors)["rollback_to"] == 20


def test_a_target_with_few_classes_is_not_a_collapse():
    # the flag up from the start (a target whose classes really are few): no fall, so no rollback
    monitor = Monitor()
    method, tensors, rollback = guarded(monitor)
    for step, marginal in ((10, 0.45), (20, 0.3)):  # within COLLAPSE_DROP of the peak, 0.45
        monitor.show(step, marginal)
        record = rollback.check(step, tensors)
        assert record["collapse"] is None and "rollback_to" not in record and rollback.best_step == step
    monitor.show(30, 0.45 - guard.COLLAPSE_DROP - 0.01)  # a fall past it
    assert rollback.check(30, tensors)["rollback_to"] == 20


def test_records_from_before_a_rollback_do_not_fail_the_next_checks():
    # until the monitor has logged a whole window after a rollback, its flags describe the weights the
    # run left: a check before then (--rollback-every below --log-every, or the final check) ignores them
    monitor = Monitor()
    method, tensors, rollback = guarded(monitor)
    monitor.show(10, 0.9)
    rollback.check(10, tensors)
    monitor.show(20, 0.05)
    assert rollback.check(20, tensors)["rollback_to"] == 10
    for step, final in ((25, False), (30, True)):  # no record logged since the rollback at 20
        record = rollback.check(step, tensors, final=final)
        assert record["collapse"] is None and record["target_marginal_entropy"] is None
        assert "rollback_to" not in record
    assert method.lambda_scale == 0.5 and len(rollback.rollbacks) == 1
    monitor.show(40, 0.05)  # logged after it: counts again
    assert rollback.check(40, tensors)["collapse"] == "target-collapse"


def test_the_final_check_reads_a_collapse_on_half_a_window():
    # VADA on UCI digits -> MNIST collapsed again after each rollback; the final check came 250 steps
    # after the last one, half a window: waiting for a whole one reported the collapsed weights
    monitor = Monitor()
    monitor.window = 4
    method, tensors, rollback = guarded(monitor)

    def logged(steps, marginal):
        return [{"step": s, "target_marginal_entropy": marginal, "target_entropy": 0.1} for s in steps]

    monitor.recent = logged((5, 10), 0.9)
    rollback.check(10, tensors)
    monitor.recent = logged((15, 20, 25, 30), 0.05)
    assert rollback.check(30, tensors)["rollback_to"] == 10
    monitor.recent = logged((25, 30, 35), 0.05)  # one record since the rollback at 30
    assert rollback.check(35, tensors, final=True)["collapse"] is None
    monitor.recent = logged((30, 35, 40), 0.05)  # two of four: half a window
    assert rollback.check(40, tensors)["collapse"] is None  # not yet, before the end
    record = rollback.check(40, tensors, final=True)
    assert record["collapse"] == "target-collapse" and record["rollback_to"] == 10


def test_the_final_check_sees_a_collapse_that_starts_late():
    # no rollback before; the last half window collapsed, the first half healthy
    monitor = Monitor()
    monitor.window = 4
    method, tensors, rollback = guarded(monitor)
    monitor.recent = [{"step": s, "target_marginal_entropy": 0.9, "target_entropy": 0.1} for s in (5, 10, 15, 20)]
    rollback.check(20, tensors)
    monitor.recent = monitor.recent[2:] + [{"step": s, "target_marginal_entropy": 0.05, "target_entropy": 0.1}
                                           for s in (25, 30)]
    assert rollback.check(30, tensors)["collapse"] is None  # the whole window: not every record is low
    assert rollback.check(30, tensors, final=True)["rollback_to"] == 20


def test_without_the_monitor_only_the_source_accuracy_counts():
    # --no-rollback-collapse: the guard is built without the monitor, so a collapse does not fail a check
    method, tensors, rollback = guarded(None)
    rollback.check(10, tensors)
    record = rollback.check(20, tensors)
    assert "collapse" not in record and "rollback_to" not in record and rollback.summary()["watches_collapse"] is False


def test_the_collapse_state_is_in_the_checkpoint():
    monitor = Monitor()
    method, tensors, rollback = guarded(monitor)
    monitor.show(10, 0.9)
    rollback.check(10, tensors)
    monitor.show(20, 0.05)
    rollback.check(20, tensors)
    resumed = guard.Rollback(0.05, method, None, monitor=monitor)
    rollback.flags_at_best = ["disc50"]
    resumed.load_state_dict(rollback.state_dict())
    assert resumed.peak_marginal == 0.9 and resumed.restored_at == 20 and resumed.flags_at_best == ["disc50"]
    old = {k: v for k, v in rollback.state_dict().items() if k not in ("peak_marginal", "restored_at", "flags_at_best")}
    resumed.load_state_dict(old)  # a checkpoint from before the collapse check
    assert resumed.peak_marginal != resumed.peak_marginal and resumed.restored_at == -1  # nan: no fall seen yet
    assert resumed.flags_at_best is None  # not known: summary.json says null, not "no flag"


def test_runs_saved_before_the_collapse_check_are_not_reused_when_it_matters():
    from grl_cuda.pipeline.config import same_run
    saved = {k: v for k, v in vars(Config(rollback=0.05)).items() if k != "rollback_collapse"}
    assert not same_run(saved, Config(rollback=0.05))  # they ran without it
    assert same_run(saved, Config(rollback=0.05, rollback_collapse=False))
    saved_unguarded = {k: v for k, v in vars(Config()).items() if k != "rollback_collapse"}
    assert same_run(saved_unguarded, Config())  # no --rollback: the option is read by neither
    saved_source_only = {k: v for k, v in vars(Config(method="source-only", rollback=0.05)).items()
                         if k != "rollback_collapse"}
    assert same_run(saved_source_only, Config(method="source-only", rollback=0.05))  # no guard: not read either


def test_bad_values_are_refused():
    with pytest.raises(UserError, match="--rollback must be in"):
        check(Config(rollback=1.5))
    with pytest.raises(UserError, match="--rollback-every must be positive"):
        check(Config(rollback=0.05, rollback_every=0))


def script_scores(monkeypatch, scores):
    """The guard's checks score {step: accuracy} from ``scores`` (read when the check runs, so a test
    may change them between runs) instead of the CPU-dependent real accuracies."""
    check = guard.Rollback.check

    def scripted_check(self, step, tensors, final=False, active_flags=None):
        self.scripted_step = step
        return check(self, step, tensors, final, active_flags)

    monkeypatch.setattr(guard.Rollback, "check", scripted_check)
    monkeypatch.setattr(guard.Rollback, "source_val_accs", lambda self, tensors: [scores[self.scripted_step]] * 2)


def cfg_for(tmp_path, data_dir, **kw):
    base = dict(task="mnist-mnistm", method="dann", steps=40, out=str(tmp_path / "run"), data_dir=data_dir,
                eval_every=20, log_every=10, ckpt_every=1000, plots=False, rollback=1e-9, rollback_every=10)
    base.update(kw)
    return Config(**base)


@pytest.mark.slow
def test_runs_log_the_checks_and_resume_bit_exact(tmp_path, data_dir, assert_same_outputs, monkeypatch):
    # scripted scores (the real ones depend on the CPU's rounding): kept at 10 and 20, a rollback
    # at 30 to the state of 20, which the interrupted run (stopped at 25) has only through its
    # checkpoint, and a new best at the final check
    scores = {10: 0.5, 20: 0.6, 30: 0.4, 40: 0.7}
    script_scores(monkeypatch, scores)
    straight = cfg_for(tmp_path, data_dir, out=str(tmp_path / "straight"), ema=0.9)
    summary = train(straight, progress=False)
    checks = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
    checks = [r for r in checks if r["kind"] == "guard"]
    assert [r["step"] for r in checks] == [10, 20, 30, 40]  # the last one is the final check
    assert [(e["step"], e["best_step"], e["final"]) for e in summary["rollback"]["rollbacks"]] == [(30, 20, False)]
    assert [r["lambda_scale"] for r in checks] == [1.0, 1.0, 0.5, 0.5]
    assert summary["rollback"]["best_step"] == 40
    broken = cfg_for(tmp_path, data_dir, out=str(tmp_path / "broken"), ema=0.9, stop_after=25)
    assert train(broken, progress=False)["interrupted"]
    train(cfg_for(tmp_path, data_dir, out=str(tmp_path / "broken"), ema=0.9, resume=True), progress=False)
    assert_same_outputs(str(tmp_path / "straight"), str(tmp_path / "broken"))
    # the comparison can fail: the same run without the rollback ends elsewhere
    scores[30] = 0.65
    train(cfg_for(tmp_path, data_dir, out=str(tmp_path / "kept"), ema=0.9), progress=False)
    with pytest.raises(AssertionError):
        assert_same_outputs(str(tmp_path / "straight"), str(tmp_path / "kept"))


def script_target_marginals(monkeypatch, marginals):
    """The collapse monitor is fed ``marginals`` (one per logged record, in order, over and over: a run
    and then an interrupted run with its resume read the same values) as the target predictions'
    marginal entropy."""
    fed = itertools.cycle(marginals)
    monkeypatch.setattr(health, "target_prediction_stats",
                        lambda method, x: {"target_entropy": 0.1, "target_marginal_entropy": next(fed)})


@pytest.mark.slow
@pytest.mark.parametrize("watch", [True, False])
def test_a_run_rolls_back_when_its_target_predictions_collapse(tmp_path, data_dir, monkeypatch, watch,
                                                              assert_same_outputs):
    # the source accuracy stays put (scripted), the target marginal entropy falls from 0.9 to 0.05 after
    # step 20; with a window of two records the flag is up from step 40
    script_scores(monkeypatch, {step: 0.5 for step in range(10, 70, 10)})
    script_target_marginals(monkeypatch, [0.9, 0.9] + [0.05] * 4)
    cfg = dict(steps=60, collapse_window=20, rollback_collapse=watch, ema=0.9)
    summary = train(cfg_for(tmp_path, data_dir, **cfg), progress=False)
    assert "target-collapse" in summary["collapse"]["flags"]
    events = [(e["step"], e["best_step"], e["reason"], e["final"]) for e in summary["rollback"]["rollbacks"]]
    if not watch:
        assert events == [] and summary["rollback"]["best_step"] == 60
        assert "target-collapse" in summary["collapse"]["at_end"] and "at_end_of_step" not in summary["collapse"]
        return
    # step 30's window (0.9, 0.05) has fallen from the peak: not kept, so the rollback goes to step 20;
    # at step 50 one record has been logged since it (too few to count), at 60 a whole window
    assert events == [(40, 20, "target-collapse", False), (60, 20, "target-collapse", True)]
    assert summary["rollback"]["lambda_scale"] == 0.5
    # the weights reported are step 20's, from before the collapse: the flags at the end are theirs
    assert "target-collapse" not in summary["collapse"]["at_end"] and summary["collapse"]["at_end_of_step"] == 20
    # interrupted after the rollback and resumed: the same run, bit for bit
    assert train(cfg_for(tmp_path, data_dir, out=str(tmp_path / "broken"), stop_after=45, **cfg),
                 progress=False)["interrupted"]
    train(cfg_for(tmp_path, data_dir, out=str(tmp_path / "broken"), resume=True, **cfg), progress=False)
    assert_same_outputs(str(tmp_path / "run"), str(tmp_path / "broken"))


@pytest.mark.slow
def test_a_guarded_run_saved_before_the_collapse_check_reloads_as_it_ran(tmp_path, data_dir):
    # its summary.json and checkpoint lack rollback_collapse: both read as False (the guard of then)
    from grl_cuda.pipeline import runs
    train(cfg_for(tmp_path, data_dir, steps=20), progress=False)
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    del summary["config"]["rollback_collapse"]
    (out / "summary.json").write_text(json.dumps(summary))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    del ckpt["config"]["rollback_collapse"]
    torch.save(ckpt, out / "checkpoint.pt")
    cfg, _, _ = runs.load_run(str(out), data_dir)
    assert cfg.rollback and cfg.rollback_collapse is False


@pytest.mark.slow
def test_methods_without_a_reversal_ignore_it(tmp_path, data_dir):
    summary = train(cfg_for(tmp_path, data_dir, method="source-only", steps=20), progress=False)
    assert summary["rollback"] is None


def test_dirt_t_is_guarded_through_its_vada_phase_only():
    from grl_cuda.pipeline.methods import build_method
    cfg = Config(method="dirt-t", arch="mnist", steps=40, dirtt_start=0.5)
    assert build_method(cfg, 10, "cpu").guarded_steps() == 20
    assert build_method(Config(method="vada", arch="mnist", steps=40), 10, "cpu").guarded_steps() == 40


@pytest.mark.slow
def test_dirt_t_refinement_is_not_rolled_back(tmp_path, data_dir, monkeypatch):
    # the refinement (steps 20-40) trains on the target alone; the source accuracy may fall there by
    # design, so the guard's last check is at its start: a final one (lambda unchanged) that keeps the
    # VADA phase's last good weights. A check during the refinement would find no scripted score.
    scores = {10: 0.5, 20: 0.4}
    script_scores(monkeypatch, scores)
    summary = train(cfg_for(tmp_path, data_dir, method="dirt-t", dirtt_start=0.5), progress=False)
    checks = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in checks if r["kind"] == "guard"] == [10, 20]
    assert [(e["step"], e["best_step"], e["final"]) for e in summary["rollback"]["rollbacks"]] == [(20, 10, True)]
    assert summary["rollback"]["lambda_scale"] == 1.0
