"""fit(), the training loop: learning happens, resume is bit-exact, a checkpoint of
another run is refused, data-parallel runs, --ema and --compile work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from grl_cuda.pipeline import data as data_mod
from grl_cuda.pipeline import evaluate, runs
from grl_cuda.pipeline.config import Config, UserError
from grl_cuda.pipeline.loop import fit as train

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cfg_for(tmp_path, data_dir, **kw):
    base = dict(task="mnist-mnistm", method="dann", steps=40, out=str(tmp_path / "run"), data_dir=data_dir,
                eval_every=20, log_every=10, ckpt_every=1000, plots=False)
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("method", ["dann", "dann-dsbn"])
def test_short_dann_run_beats_chance_and_writes_outputs(tmp_path, data_dir, method):
    summary = train(cfg_for(tmp_path, data_dir, method=method, steps=300, eval_every=100, plots=True),
                    progress=False)
    assert summary["source_test_acc"] > 0.4
    assert summary["target_test_acc"] > 0.15  # chance is 0.1
    out = tmp_path / "run"
    for name in ("metrics.jsonl", "summary.json", "checkpoint.pt", "curves.png", "tsne.png"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    train_records = [r for r in records if r["kind"] == "train"]
    assert train_records and {"label_loss", "domain_loss", "domain_acc", "lambda", "lr"} <= set(train_records[0])
    assert train_records[-1]["lambda"] > train_records[0]["lambda"]  # the schedule ramps up
    saved = json.load(open(out / "summary.json"))
    assert saved["config"]["method"] == method and "torch" in saved["versions"]


@pytest.mark.parametrize("method, options", [("dann", {}), ("dann-dsbn", {}), ("source-only", {}),
                                             ("dann-dsbn", {"ema": 0.9}),
                                             ("dann", {"arch": "mnist-bn", "passes": "separate", "optimizer": "adam",
                                                       "lr": 0.001, "input_norm": "instance", "invert": 0.5}),
                                             ("dann", {"compile": True, "channels_last": True})])
def test_resume_is_bit_exact(tmp_path, data_dir, assert_same_outputs, method, options):
    straight = cfg_for(tmp_path, data_dir, method=method, out=str(tmp_path / "straight"), **options)
    train(straight, progress=False)
    broken = cfg_for(tmp_path, data_dir, method=method, out=str(tmp_path / "broken"), stop_after=25, **options)
    assert train(broken, progress=False)["interrupted"]
    resumed = cfg_for(tmp_path, data_dir, method=method, out=str(tmp_path / "broken"), resume=True, **options)
    train(resumed, progress=False)
    assert_same_outputs(str(tmp_path / "straight"), str(tmp_path / "broken"))


@pytest.mark.parametrize("options", [{}, {"arch": "mnist-bn", "passes": "separate", "optimizer": "adam",
                                      "lr": 0.001, "input_norm": "instance", "ema": 0.9}])
def test_one_seed_is_bitwise_repeatable(tmp_path, data_dir, assert_same_outputs, options):
    # the same command twice on one machine: identical weights, metrics and accuracies
    for name in ("first", "second"):
        train(cfg_for(tmp_path, data_dir, out=str(tmp_path / name), **options), progress=False)
    assert_same_outputs(str(tmp_path / "first"), str(tmp_path / "second"))
    other_seed = cfg_for(tmp_path, data_dir, out=str(tmp_path / "seed1"), seed=1, **options)
    train(other_seed, progress=False)
    with pytest.raises(AssertionError):  # the comparison can fail: another seed differs
        assert_same_outputs(str(tmp_path / "first"), str(tmp_path / "seed1"))


def test_resume_refuses_other_runs_and_corrupt_checkpoints(tmp_path, data_dir):
    cfg = cfg_for(tmp_path, data_dir, stop_after=10)
    train(cfg, progress=False)
    with pytest.raises(runs.CheckpointError, match="different run"):
        train(cfg_for(tmp_path, data_dir, resume=True, seed=1), progress=False)
    with open(tmp_path / "run" / "checkpoint.pt", "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(runs.CheckpointError, match="corrupt"):
        train(cfg_for(tmp_path, data_dir, resume=True), progress=False)
    with pytest.raises(runs.CheckpointError, match="no checkpoint"):
        train(cfg_for(tmp_path, data_dir, resume=True, out=str(tmp_path / "nothing")), progress=False)


# cgdm: pseudo labels refreshed at steps 10 and 20 so that its double backward runs under DDP too
@pytest.mark.parametrize("method, extra, port", [("dann", [], 29517),
                                                 ("cgdm", ["--refresh-every", "10"], 29518)])
def test_distributed_two_processes(tmp_path, data_dir, method, extra, port):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "grl_cuda.train", "--task", "mnist-mnistm", "--method", method, "--steps", "30",
           "--eval-every", "1000", "--no-plots", "--data-dir", data_dir, "--out", str(tmp_path / "ddp"),
           *extra, "--stop-after", "15"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1 and "interrupted at step 15" in first.stderr, first.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert len(ckpt["per_rank"]) == 2 and ckpt["config"]["world_size"] == 2
    resumed = subprocess.run([c for c in cmd if c not in ("--stop-after", "15")] + ["--resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.load(open(tmp_path / "ddp" / "summary.json"))
    assert summary["config"]["world_size"] == 2 and summary["steps"] == 30
    if method == "cgdm":
        records = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
        assert [r["step"] for r in records if r["kind"] == "refresh"] == [10, 20]
        trained = [r for r in records if r["kind"] == "train" and r["step"] > 10]
        assert trained and all(r["gradient_discrepancy"] > 0 for r in trained)


def test_ema_run_evaluates_and_reloads_the_averaged_weights(tmp_path, data_dir):
    cfg = cfg_for(tmp_path, data_dir, ema=0.99, steps=30)
    summary = train(cfg, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    raw, averaged = ckpt["method"]["networks"]["model"], ckpt["average"]["model"]
    assert not torch.equal(raw["classifier.weight"], averaged["classifier.weight"])
    _, _, method = runs.load_run(str(tmp_path / "run"), data_dir)
    assert torch.equal(method.model.classifier.weight, averaged["classifier.weight"])
    x, y = data_mod.to_tensors(data_mod.task_for(cfg), torch.device("cpu"))["target_test"]
    assert evaluate.accuracy(method, x, y, "target") == summary["target_test_acc"]
    with pytest.raises(UserError, match="--ema"):
        train(cfg_for(tmp_path, data_dir, ema=1.0, out=str(tmp_path / "bad")), progress=False)


def test_compile_flag_runs(tmp_path, data_dir):
    summary = train(cfg_for(tmp_path, data_dir, steps=4, eval_every=1000, compile=True), progress=False)
    assert summary["steps"] == 4 and 0.0 <= summary["target_test_acc"] <= 1.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_compile_compiles_the_optimizer_step_once(tmp_path, data_dir, optimizer):
    # the annealed learning rate changes every step: held in a tensor, it is an input of the
    # compiled step, so 30 steps of new learning rates compile it twice at most (the first step,
    # before the optimizer has state, and every later one), not once per learning rate
    import inspect

    import torch._dynamo
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    torch._dynamo.reset()
    step = inspect.unwrap(getattr(torch.optim, "SGD" if optimizer == "sgd" else "Adam").step)
    assert not _debug_get_cache_entry_list(step.__code__)
    summary = train(cfg_for(tmp_path, data_dir, steps=30, eval_every=1000, log_every=10, compile=True,
                            optimizer=optimizer, lr=0.01 if optimizer == "sgd" else 0.001), progress=False)
    assert summary["steps"] == 30 and 1 <= len(_debug_get_cache_entry_list(step.__code__)) <= 2
    records = _train_records(str(tmp_path / "run"))
    assert records[0]["lr"] > records[-1]["lr"]  # and the learning rate did change


def _train_records(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl")) if '"train"' in x]


@pytest.mark.parametrize("options", [{"compile": True}, {"channels_last": True}])
def test_compiled_and_channels_last_steps_train_like_eager(tmp_path, data_dir, monkeypatch, options):
    # --compile must compile the step's convolutions: methods call model.features, not the
    # model's forward, so compiling each network alone left them in eager (seen: False only)
    from torch import nn

    torch._dynamo.reset()  # code compiled by earlier tests (same shapes) would be reused without tracing
    traced = []
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x, f=nn.Conv2d.forward:
                        traced.append(torch.compiler.is_compiling()) or f(self, x))
    kw = dict(steps=60, eval_every=1000, log_every=10)
    train(cfg_for(tmp_path, data_dir, out=str(tmp_path / "eager"), **kw), progress=False)
    traced.clear()
    train(cfg_for(tmp_path, data_dir, out=str(tmp_path / "other"), **kw, **options), progress=False)
    assert (True in traced) == bool(options.get("compile"))
    if options.get("channels_last"):
        ckpt = torch.load(tmp_path / "other" / "checkpoint.pt", weights_only=False)
        assert ckpt["method"]["networks"]["model"]["extractor.0.weight"].is_contiguous(
            memory_format=torch.channels_last)
    # the same training within float rounding (other kernels, other summation orders)
    eager, other = _train_records(str(tmp_path / "eager")), _train_records(str(tmp_path / "other"))
    assert [r["step"] for r in eager] == [r["step"] for r in other]
    for a, b in zip(eager, other):
        for key in ("label_loss", "domain_loss"):
            assert abs(a[key] - b[key]) <= 1e-3 + 1e-3 * abs(a[key]), (a["step"], key, a[key], b[key])


def test_amp_flag_trains_under_cpu_autocast(tmp_path, data_dir, monkeypatch):
    # --amp on the CPU: the step runs under bfloat16 autocast (the convolutions' outputs are bfloat16)
    from torch import nn

    seen = []
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x, f=nn.Conv2d.forward: seen.append(f(self, x).dtype)
                        or f(self, x))
    summary = train(cfg_for(tmp_path, data_dir, steps=6, eval_every=1000, amp=True), progress=False)
    assert torch.bfloat16 in seen
    records = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl") if '"train"' in x]
    assert all(np.isfinite(r["label_loss"]) for r in records) and 0.0 <= summary["target_test_acc"] <= 1.0


def test_compile_stays_compiled_over_many_runs_in_one_process(tmp_path, data_dir):
    # a grid (grl_cuda.results --compile) trains run after run in one process; every compiled
    # part is a version of one code object, and past dynamo's 8 versions later runs went eager
    import torch._dynamo

    torch._dynamo.reset()
    # config.patch, not monkeypatch: monkeypatch's undo deletes a dynamo config entry (torch 2.14)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # an eager fallback is an error
        for i, method in enumerate(["source-only", "dann", "mcd", "dann"]):
            summary = train(cfg_for(tmp_path, data_dir, method=method, steps=2, eval_every=1000, compile=True,
                                    out=str(tmp_path / f"run{i}")), progress=False)
            assert summary["steps"] == 2


@pytest.mark.parametrize("passes", ["joint", "separate"])
def test_compile_multi_source_dsbn_does_not_recompile_per_batch(tmp_path, data_dir, passes):
    # each batch splits its source rows by source in other proportions; compiled, every new
    # split recompiled the extractor (one version per step), so the split runs eager
    import torch._dynamo
    import torch._dynamo.external_utils
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    torch._dynamo.reset()
    summary = train(cfg_for(tmp_path, data_dir, task="mnist+syn-mnistm", method="dann-dsbn", steps=16,
                            eval_every=8, compile=True, passes=passes), progress=False)
    assert summary["steps"] == 16
    wrapper = torch._dynamo.external_utils.wrap_inline(lambda: None).__code__  # what every compiled part runs
    assert len(_debug_get_cache_entry_list(wrapper)) <= 6  # one version per part the step calls, not per step
