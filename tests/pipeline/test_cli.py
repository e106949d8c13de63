"""python -m grl_cuda.train: fails clearly on bad input (one line, no traceback),
explains its flags, and turns SIGINT into a checkpoint that resumes exactly."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow  # each test starts python


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
    pytest.param(["--device", "cuda"], "cuda", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                        reason="a CUDA machine runs --device cuda")),
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


def test_sigint_saves_a_checkpoint_and_resume_matches(tmp_path, data_dir, assert_same_outputs):
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
    assert_same_outputs(str(tmp_path / "straight"), str(tmp_path / "int"))




def test_cli_rejects_bad_preprocessing_flags(tmp_path, data_dir):
    for args, message in ((["--normalize", "nope"], "invalid choice"), (["--shift", "-1"], "--shift"),
                          (["--invert", "1.5"], "--invert must be a probability"),
                          (["--rollback", "-0.1"], "--rollback must be in")):
        result = _cli([*args, "--out", str(tmp_path / "o"), "--data-dir", data_dir, "--steps", "2"])
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
