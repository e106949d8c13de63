"""runs.py: the checkpoint is written in one function and read in one; a checkpoint of
another version or another run is refused with the reason; finished runs reload."""

import json
import os

import pytest
import torch

from grl_cuda.pipeline import runs
from grl_cuda.pipeline.config import Config, UserError
from grl_cuda.pipeline.loop import fit

pytestmark = pytest.mark.slow

# The keys of a version-1 checkpoint, as grl_cuda/train.py wrote them at e443322: a
# checkpoint of today must stay readable by that reader, and one of then by this one.
FIRST_KEYS = {"version", "config", "step", "method", "average", "per_rank", "metrics_lines", "elapsed"}


def _cfg(tmp_path, data_dir, **kw):
    return Config(**{**dict(task="mnist-mnistm", method="dann", steps=6, out=str(tmp_path / "run"),
                            data_dir=data_dir, eval_every=1000, log_every=2, ckpt_every=1000, plots=False), **kw})


@pytest.fixture
def stopped(tmp_path, data_dir):
    """A run stopped after 3 of 6 steps, and its checkpoint."""
    assert fit(_cfg(tmp_path, data_dir, stop_after=3), progress=False)["interrupted"]
    return tmp_path / "run" / "checkpoint.pt"


def test_checkpoint_keeps_the_first_schema(stopped):
    ckpt = torch.load(stopped, weights_only=False)
    # one key added since, optional when read (--rollback's state; None without it)
    assert set(ckpt) == FIRST_KEYS | {"guard"} and ckpt["version"] == runs.CHECKPOINT_VERSION == 1
    assert ckpt["guard"] is None
    assert ckpt["step"] == 3 and len(ckpt["per_rank"]) == 1
    assert set(ckpt["per_rank"][0]) == {"source_sampler", "target_sampler", "rng"}
    assert set(ckpt["method"]) == {"networks", "optimizers", "extra"}


def test_checkpoint_of_a_config_without_newer_options_resumes(tmp_path, data_dir, stopped):
    ckpt = torch.load(stopped, weights_only=False)
    for newer in ("normalize", "shift", "ema"):  # the first checkpoints did not store these
        del ckpt["config"][newer]
    torch.save(ckpt, stopped)
    summary = fit(_cfg(tmp_path, data_dir, resume=True), progress=False)
    assert summary["steps"] == 6


def test_refusals_say_why(tmp_path, data_dir, stopped):
    ckpt = torch.load(stopped, weights_only=False)
    with pytest.raises(runs.CheckpointError, match=r"different run \(lambda_max: saved 1.0 vs now 0.5\)"):
        runs.read_checkpoint(str(stopped), _cfg(tmp_path, data_dir, lambda_max=0.5, arch="mnist"))
    torch.save({**ckpt, "version": 2}, stopped)
    with pytest.raises(runs.CheckpointError, match="not a grl_cuda checkpoint of version 1 .found 2"):
        runs.read_checkpoint(str(stopped), _cfg(tmp_path, data_dir, arch="mnist"))
    torch.save([1, 2], stopped)
    with pytest.raises(runs.CheckpointError, match="found 'list'"):
        runs.read_checkpoint(str(stopped), _cfg(tmp_path, data_dir, arch="mnist"))


def test_finished_runs_reload_and_refuse_resume_or_another_checkpoint(tmp_path, data_dir):
    fit(_cfg(tmp_path, data_dir), progress=False)
    with pytest.raises(runs.CheckpointError, match="finished run: nothing to resume"):
        fit(_cfg(tmp_path, data_dir, resume=True), progress=False)
    cfg, _, method = runs.load_run(str(tmp_path / "run"), data_dir)
    assert cfg.method == "dann" and not method.model.training
    summary_path = tmp_path / "run" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["config"]["seed"] = 7
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(runs.CheckpointError, match="different run .seed: saved 0 vs now 7"):
        runs.load_run(str(tmp_path / "run"), data_dir)
    with pytest.raises(UserError, match="not a finished run"):
        runs.load_run(str(tmp_path / "nothing"), data_dir)


def test_metrics_log_keeps_the_records_before_a_checkpoint(tmp_path):
    log = runs.MetricsLog(str(tmp_path), rank=0)
    for i in range(4):
        log.write({"step": i})
    assert log.lines() == 4
    log.keep_first(2)
    assert log.records() == [{"step": 0}, {"step": 1}]
    other = runs.MetricsLog(str(tmp_path), rank=1)  # only rank 0 writes
    other.write({"step": 9})
    other.keep_first(0)
    assert log.lines() == 2 and os.path.exists(log.path)


def test_metrics_log_without_a_record_reads_as_empty(tmp_path):
    # a run stopped before its first log step has no metrics.jsonl; resuming it replays nothing
    log = runs.MetricsLog(str(tmp_path), 0)
    assert log.records() == [] and log.lines() == 0
