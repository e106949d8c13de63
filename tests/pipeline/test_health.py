"""Collapse detection (pipeline/health.py): a pinned series is flagged, a healthy one
is not; the flags reach metrics.jsonl, the bar and summary.json; a resumed run
rebuilds the monitor from its records."""

import json

import numpy as np
import pytest
import torch

from grl_cuda.pipeline import health
from grl_cuda.pipeline.config import Config
from grl_cuda.pipeline.loop import fit


def _feed(monitor, accs=None, marginals=None, n=None):
    n = n or len(accs if accs is not None else marginals)
    out = []
    for i in range(n):
        record = {"kind": "train", "step": 10 * (i + 1)}
        if accs is not None:
            record["domain_acc"] = float(accs[i])
        if marginals is not None:
            record["target_marginal_entropy"] = float(marginals[i])
        out.append(monitor.update(record))
    return out


def test_accuracy_pinned_at_half_is_flagged_a_healthy_equilibrium_is_not():
    rng = np.random.default_rng(0)
    healthy = rng.binomial(128, 0.5, size=2000) / 128  # a discriminator at chance on 64 + 64 images
    m = health.CollapseMonitor(10)
    assert not any(_feed(m, healthy))
    assert not m.summary()["seen"]
    m = health.CollapseMonitor(10)
    flags = _feed(m, [0.8] * 5 + [0.5] * 12)
    assert flags[-1] == ["disc50"] and flags[13] == [] and flags[14] == ["disc50"]  # the 10th 0.5 in a row
    s = m.summary()
    assert s["seen"] and s["flags"]["disc50"] == {"first": 150, "last": 170, "records": 3} and s["at_end"] == ["disc50"]


def test_accuracy_pinned_at_one_is_flagged_and_the_flag_clears():
    m = health.CollapseMonitor(4)
    flags = _feed(m, [1.0] * 6 + [0.9] + [0.995] * 2)
    assert flags[3:6] == [["disc100"]] * 3 and flags[6:] == [[], [], []]
    assert m.summary()["flags"]["disc100"]["last"] == 60 and m.summary()["at_end"] == []
    m = health.CollapseMonitor(4)
    assert not any(_feed(m, [0.97, 0.99, 0.98, 0.96] * 5))  # a strong but not pinned discriminator


def test_target_prediction_collapse():
    m = health.CollapseMonitor(3)
    assert _feed(m, marginals=[0.9, 0.4, 0.3, 0.2])[-1] == ["target-collapse"]
    m = health.CollapseMonitor(3)
    assert not any(_feed(m, marginals=[0.95, 0.9, 0.97, 0.6, 0.99]))
    m = health.CollapseMonitor(2)  # records without the key (e.g. source-only's domain_acc) raise nothing
    assert _feed(m, marginals=[0.1, 0.1]) == [[], ["target-collapse"]]


def test_uniform_predictions_are_flagged_a_learning_network_is_not():
    # the target entropies logged by the DANN run that died on Syn -> MNIST (lambda 1,
    # issue 15): learning, then every prediction uniform from the step the features died
    dead = [0.9, 0.6, 0.46, 0.3, 0.16] + [0.999] * 12
    m = health.CollapseMonitor(10)
    flags = [m.update({"kind": "train", "step": 50 * (i + 1), "target_entropy": h}) for i, h in enumerate(dead)]
    assert flags[13] == [] and flags[14] == ["uniform"] and m.summary()["at_end"] == ["uniform"]
    m = health.CollapseMonitor(10)
    early = [1.0, 0.99, 0.97, 0.9] + list(np.linspace(0.8, 0.1, 30))  # an untrained net's first records
    assert not any(m.update({"kind": "train", "step": i, "target_entropy": h}) for i, h in enumerate(early))


def test_target_prediction_stats_of_a_collapsed_and_a_diverse_predictor():
    class Fixed:
        def __init__(self, logits):
            self.logits, self.modes = logits, []

        def train(self, mode=True):
            self.modes.append(mode)

        def predict(self, x, domain="target"):
            assert domain == "target"
            return self.logits

    one_class = Fixed(torch.tensor([[20.0, 0, 0, 0]] * 8))
    stats = health.target_prediction_stats(one_class, torch.zeros(8))
    assert stats["target_entropy"] < 1e-3 and stats["target_marginal_entropy"] < 1e-3
    assert one_class.modes == [False, True]  # measured in eval mode, then back to training
    diverse = Fixed(torch.eye(4).repeat(2, 1) * 20)
    stats = health.target_prediction_stats(diverse, torch.zeros(8))
    assert stats["target_entropy"] < 1e-3 and stats["target_marginal_entropy"] == pytest.approx(1.0, abs=1e-3)


def test_replay_gives_the_state_of_an_uninterrupted_monitor():
    accs = [0.6, 1.0, 1.0, 1.0, 1.0, 0.7, 1.0, 1.0, 1.0]
    records = [{"kind": "train", "step": i, "domain_acc": a} for i, a in enumerate(accs)]
    straight = health.CollapseMonitor(3)
    for r in records:
        straight.update(r)
    resumed = health.CollapseMonitor(3)
    resumed.replay(records[:5])
    for r in records[5:]:
        resumed.update(r)
    assert resumed.summary() == straight.summary()
    assert health.window_records(500, 50) == 10 and health.window_records(10, 50) == 2


@pytest.mark.slow
def test_the_loop_writes_warnings_and_the_summary(tmp_path, data_dir):
    # a frozen domain head's constant output is the disc50 signature: exactly 50% on every batch
    out = tmp_path / "run"
    cfg = Config(task="mnist-mnistm", method="dann", steps=12, out=str(out), data_dir=data_dir, eval_every=1000,
                 log_every=2, collapse_window=4, plots=False, lambda_max=0.0)
    from grl_cuda.pipeline import methods

    class Frozen(methods.METHODS["dann"]):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            last = self.head[-1]
            torch.nn.init.zeros_(last.weight)
            last.bias.data.fill_(-1.0)  # every row "source"
            last.requires_grad_(False)
            self.head[0].requires_grad_(False)

    mp = pytest.MonkeyPatch()
    mp.setitem(methods.METHODS, "dann", Frozen)
    try:
        summary = fit(cfg, progress=False)
    finally:
        mp.undo()
    train = [json.loads(x) for x in open(out / "metrics.jsonl") if '"train"' in x]
    assert all(r["domain_acc"] == 0.5 for r in train)
    # the frozen net's first steps also predict near-uniformly on target: "uniform" may ride along
    warnings = [r.get("warning") for r in train]
    assert warnings[0] is None and all("disc50" in w.split(",") for w in warnings[1:])
    assert {"target_entropy", "target_marginal_entropy"} <= set(train[0])
    assert summary["collapse"]["flags"]["disc50"] == {"first": 4, "last": 12, "records": 5}
    assert json.load(open(out / "summary.json"))["collapse"]["seen"]
