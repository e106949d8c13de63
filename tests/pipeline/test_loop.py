"""The training pipeline: learning happens, resume is bit-exact, interruption is
safe, data-parallel runs, and the command line fails clearly on bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from grl_cuda import train as train_mod
from grl_cuda.train import Config, EpochSampler, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("grl_data_train"))


def cfg_for(tmp_path, data_dir, **kw):
    base = dict(task="mnist-mnistm", method="dann", steps=40, out=str(tmp_path / "run"), data_dir=data_dir,
                eval_every=20, log_every=10, ckpt_every=1000, plots=False)
    base.update(kw)
    return Config(**base)


def test_epoch_sampler_covers_each_epoch_and_restores():
    s = EpochSampler(10, 4, seed=0)
    first = torch.cat([s.next() for _ in range(5)])  # 20 draws = two epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    state = s.state_dict()
    a = [s.next() for _ in range(3)]
    s.load_state_dict(state)
    b = [s.next() for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(len(x) == 4 for x in a)


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


def _final_state(out):
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    return ckpt["method"]["networks"]


def _assert_same_run(out_a, out_b):
    a, b = _final_state(out_a), _final_state(out_b)
    for net in a:
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    strip = lambda rec: {k: v for k, v in rec.items() if k not in ("train_seconds",)}  # noqa: E731
    lines_a = [strip(json.loads(x)) for x in open(os.path.join(out_a, "metrics.jsonl"))]
    lines_b = [strip(json.loads(x)) for x in open(os.path.join(out_b, "metrics.jsonl"))]
    assert lines_a == lines_b
    sa, sb = json.load(open(os.path.join(out_a, "summary.json"))), json.load(open(os.path.join(out_b, "summary.json")))
    assert sa["target_test_acc"] == sb["target_test_acc"] and sa["source_test_acc"] == sb["source_test_acc"]


@pytest.mark.parametrize("method, options", [("dann", {}), ("dann-dsbn", {}), ("source-only", {}),
                                             ("dann-dsbn", {"ema": 0.9})])
def test_resume_is_bit_exact(tmp_path, data_dir, method, options):
    straight = cfg_for(tmp_path, data_dir, method=method, out=str(tmp_path / "straight"), **options)
    train(straight, progress=False)
    broken = cfg_for(tmp_path, data_dir, method=method, out=str(tmp_path / "broken"), stop_after=25, **options)
    assert train(broken, progress=False)["interrupted"]
    resumed = cfg_for(tmp_path, data_dir, method=method, out=str(tmp_path / "broken"), resume=True, **options)
    train(resumed, progress=False)
    _assert_same_run(str(tmp_path / "straight"), str(tmp_path / "broken"))


def test_resume_refuses_other_runs_and_corrupt_checkpoints(tmp_path, data_dir):
    cfg = cfg_for(tmp_path, data_dir, stop_after=10)
    train(cfg, progress=False)
    with pytest.raises(train_mod.CheckpointError, match="different run"):
        train(cfg_for(tmp_path, data_dir, resume=True, seed=1), progress=False)
    with open(tmp_path / "run" / "checkpoint.pt", "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(train_mod.CheckpointError, match="corrupt"):
        train(cfg_for(tmp_path, data_dir, resume=True), progress=False)
    with pytest.raises(train_mod.CheckpointError, match="no checkpoint"):
        train(cfg_for(tmp_path, data_dir, resume=True, out=str(tmp_path / "nothing")), progress=False)


def _cli(args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "grl_cuda.train", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, **kw)


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task"),
    (["--method", "nope"], "unknown method"),
    (["--source", "/no/such.npz", "--target", "/no/such.npz", "--target-test", "/no/such.npz"], "not found"),
    (["--source", "x.npz"], "go together"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--amp"], "cuda" if not torch.cuda.is_available() else "amp"),
])
def test_cli_errors_are_one_line(tmp_path, data_dir, args, message):
    result = _cli([*args, "--out", str(tmp_path / "o"), "--data-dir", data_dir, "--steps", "2"])
    assert result.returncode == 2
    assert message.lower() in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_cli_wrong_npz_keys(tmp_path, data_dir):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(4, int))
    bad = str(tmp_path / "bad.npz")
    result = _cli(["--source", bad, "--target", bad, "--target-test", bad, "--out", str(tmp_path / "o")])
    assert result.returncode == 2 and "must hold arrays 'x'" in result.stderr and "Traceback" not in result.stderr


def test_cli_help_explains_flags():
    result = _cli(["--help"])
    assert result.returncode == 0
    for flag in ("--task", "--method", "--steps", "--resume", "--device", "--amp", "--compile", "--source"):
        assert flag in result.stdout


def test_sigint_saves_a_checkpoint_and_resume_matches(tmp_path, data_dir):
    common = ["--task", "mnist-mnistm", "--method", "dann", "--steps", "150", "--log-every", "5", "--eval-every",
              "1000", "--ckpt-every", "1000", "--no-plots", "--data-dir", data_dir, "--threads", "1"]
    straight = _cli([*common, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "grl_cuda.train", *common, "--out", str(tmp_path / "int")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "int" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err and (tmp_path / "int" / "checkpoint.pt").exists()
    resumed = _cli([*common, "--out", str(tmp_path / "int"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(str(tmp_path / "straight"), str(tmp_path / "int"))


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


def test_dann_dsbn_evaluates_each_domain_with_its_own_statistics(tmp_path, data_dir):
    from grl_cuda.methods import get_method
    from grl_cuda.models import DomainBatchNorm2d, mnist_net

    cfg = cfg_for(tmp_path, data_dir, method="dann-dsbn")
    method = get_method("dann-dsbn")(cfg, lambda **o: mnist_net(10, **o), 10, torch.device("cpu"))
    torch.manual_seed(0)
    xs, xt = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32) * 3 + 2
    method.set_lr(0.01)
    method.train_step(xs, torch.arange(8) % 10, xt, None, 0.5)
    layer = next(m for m in method.model.modules() if isinstance(m, DomainBatchNorm2d))
    assert layer.n_source is None  # the routing is undone after the step
    assert layer.source.running_mean.abs().sum() > 0 and not torch.equal(layer.source.running_mean,
                                                                          layer.target.running_mean)
    method.train(False)
    with torch.no_grad():
        assert not torch.equal(method.predict(xt, "source"), method.predict(xt, "target"))
        assert torch.equal(method.embed(xt, "target"), method.model.embed(xt))  # target: the default


def test_weight_average_is_an_ema_and_swaps_back():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = train_mod.WeightAverage({"net": net}, decay=0.5)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    net(torch.randn(4, 3))  # moves the BatchNorm buffers and its counter
    average.update()
    torch.testing.assert_close(average.shadow["net"]["0.weight"], start + 1.0)  # halfway: decay 0.5
    assert average.shadow["net"]["1.num_batches_tracked"] == 1  # counters are copied, not averaged
    with average.swapped_in():
        torch.testing.assert_close(net[0].weight, start + 1.0)
    torch.testing.assert_close(net[0].weight, start + 2.0)


def test_ema_run_evaluates_and_reloads_the_averaged_weights(tmp_path, data_dir):
    cfg = cfg_for(tmp_path, data_dir, ema=0.99, steps=30)
    summary = train(cfg, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    raw, averaged = ckpt["method"]["networks"]["model"], ckpt["average"]["model"]
    assert not torch.equal(raw["classifier.weight"], averaged["classifier.weight"])
    _, _, method = train_mod.load_run(str(tmp_path / "run"), data_dir)
    assert torch.equal(method.model.classifier.weight, averaged["classifier.weight"])
    x, y = train_mod.to_tensors(train_mod.load_data(cfg), torch.device("cpu"))["target_test"]
    assert train_mod.accuracy(method, x, y, "target") == summary["target_test_acc"]
    with pytest.raises(train_mod.UserError, match="--ema"):
        train(cfg_for(tmp_path, data_dir, ema=1.0, out=str(tmp_path / "bad")), progress=False)


def test_compile_flag_runs(tmp_path, data_dir):
    summary = train(cfg_for(tmp_path, data_dir, steps=4, eval_every=1000, compile=True), progress=False)
    assert summary["steps"] == 4 and 0.0 <= summary["target_test_acc"] <= 1.0


def _tiny_task():
    from grl_cuda.data import Split, Task

    rng = np.random.default_rng(0)
    source = Split(rng.integers(0, 100, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10)
    target = Split(rng.integers(100, 250, (30, 32, 32, 3), dtype=np.uint8), np.arange(30) % 10)
    return Task("tiny", source, source, target, target, 10)


@pytest.mark.parametrize("normalize", ["domain", "mean"])
def test_to_tensors_normalizations(normalize):
    task = _tiny_task()
    t = train_mod.to_tensors(task, torch.device("cpu"), normalize=normalize)
    xs, xt = t["source_train"][0].double(), t["target_train"][0].double()
    per_channel = lambda x: (x.mean((0, 2, 3)), x.std((0, 2, 3), correction=0))  # noqa: E731
    if normalize == "domain":  # each domain standardised by its own statistics
        for x in (xs, xt):
            mean, std = per_channel(x)
            torch.testing.assert_close(mean, torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
            torch.testing.assert_close(std, torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    else:  # the paper: one pooled mean subtracted, scale kept (pixel / 255)
        torch.testing.assert_close(per_channel(torch.cat([xs, xt]))[0], torch.zeros(3, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        pixels = task.source_train.x.astype(np.int64)
        torch.testing.assert_close(xs[0, 0, 0, 1] - xs[0, 0, 0, 0],
                                   torch.tensor((pixels[0, 0, 1, 0] - pixels[0, 0, 0, 0]) / 255.0,
                                                dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(train_mod.UserError, match="unknown --normalize"):
        train_mod.to_tensors(task, torch.device("cpu"), normalize="nope")


def test_random_shift_translates_each_image_by_its_own_offset():
    x = torch.zeros(6, 3, 32, 32)
    x[:, :, 16, 16] = 1.0  # one bright pixel per image: its centre of mass shows the offset
    shifted = train_mod.random_shift(x, 3, torch.Generator().manual_seed(5))
    offsets = (torch.rand(6, 2, generator=torch.Generator().manual_seed(5)) * 2 - 1) * 3
    grid = torch.arange(32, dtype=torch.float32)
    mass = shifted[:, 0]
    cx = (mass.sum(1) * grid).sum(1) / mass.sum((1, 2))
    cy = (mass.sum(2) * grid).sum(1) / mass.sum((1, 2))
    # each output pixel samples the input at (x + dx, y + dy): the content moves by -offset
    torch.testing.assert_close(16 - cx, offsets[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(16 - cy, offsets[:, 1], atol=1e-4, rtol=0)
    assert not torch.allclose(offsets[0], offsets[1])  # per image, not one offset for the batch
    flat = torch.full((2, 3, 8, 8), 0.25)  # edges repeat: a flat image stays flat
    torch.testing.assert_close(train_mod.random_shift(flat, 2, torch.Generator().manual_seed(0)), flat)
    assert train_mod.random_shift(x, 0, torch.Generator()) is x


def test_cli_rejects_bad_preprocessing_flags(tmp_path, data_dir):
    for args, message in ((["--normalize", "nope"], "invalid choice"), (["--shift", "-1"], "--shift")):
        result = _cli([*args, "--out", str(tmp_path / "o"), "--data-dir", data_dir, "--steps", "2"])
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_results_grid_table_and_reuse(tmp_path, data_dir):
    from grl_cuda import results

    out = str(tmp_path / "grid")
    common = ["--tasks", "mnist-mnistm", "--seeds", "1", "--steps", "30", "--out", out, "--data-dir", data_dir,
              "--no-plots", "--quiet"]
    assert results.main([*common, "--methods", "source-only,sa,dann,target-only", "--lambda-max", "0.3"]) == 0
    table = open(os.path.join(out, "results.md")).read()
    for row in ("source-only", "sa", "dann", "target-only"):
        assert f"| {row} |" in table
    data = json.load(open(os.path.join(out, "results.json")))
    assert {r["method"] for r in data["runs"]} == {"source-only", "sa", "dann", "target-only"}
    dann_summary = os.path.join(out, "runs", "mnist-mnistm", "dann", "seed0", "summary.json")
    first = os.path.getmtime(dann_summary)
    assert results.main([*common, "--methods", "dann", "--lambda-max", "0.3"]) == 0
    assert os.path.getmtime(dann_summary) == first  # the same options: the finished run is reused
    assert results.main([*common, "--methods", "dann", "--lambda-max", "1.0"]) == 0
    assert json.load(open(dann_summary))["config"]["lambda_max"] == 1.0  # other options: run again
    source_summary = os.path.join(out, "runs", "mnist-mnistm", "source-only", "seed0", "summary.json")
    first = os.path.getmtime(source_summary)
    assert results.main([*common, "--methods", "source-only", "--lambda-max", "1.0"]) == 0
    assert os.path.getmtime(source_summary) == first  # source only never reads lambda: reused
    assert results.main([*common, "--methods", "source-only", "--shift", "0"]) == 0
    assert json.load(open(source_summary))["config"]["shift"] == 0  # but it does read --shift
    with_plots = [a for a in common if a != "--no-plots"]
    assert results.main([*with_plots, "--methods", "source-only,dann", "--shift", "0", "--lambda-max", "1.0"]) == 0
    assert os.path.getsize(os.path.join(out, "tsne_before_after.png")) > 10_000  # the Figure 4 panels
    assert results.main([*common, "--methods", "nope"]) == 2
