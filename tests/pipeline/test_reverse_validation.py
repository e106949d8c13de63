"""Reverse validation: scores a finished run without target labels, reuses its reverse
run, and refuses what it cannot score."""

import os

import pytest

from grl_cuda.pipeline import reverse_validation
from grl_cuda.pipeline.config import Config, UserError
from grl_cuda.pipeline.loop import fit as train

pytestmark = pytest.mark.slow


def _run(tmp_path, data_dir, method, name):
    out = str(tmp_path / name)
    train(Config(task="mnist-mnistm", method=method, steps=30, out=out, data_dir=data_dir, eval_every=1000,
                 plots=False, threads=1), progress=False)
    return out


def test_reverse_validation_scores_and_reuses(tmp_path, data_dir):
    run = _run(tmp_path, data_dir, "dann", "dann")
    row = reverse_validation.reverse_validate(run, data_dir, steps=20, progress=False)
    assert 0.0 <= row["score"] <= 1.0 and 1 <= row["pseudo_label_classes"] <= 10
    reverse = os.path.join(run, "reverse")
    for name in ("source.npz", "target.npz", "target_test.npz", "summary.json", "checkpoint.pt"):
        assert os.path.exists(os.path.join(reverse, name)), name
    first = os.path.getmtime(os.path.join(reverse, "summary.json"))
    assert reverse_validation.reverse_validate(run, data_dir, steps=20, progress=False)["score"] == row["score"]
    assert os.path.getmtime(os.path.join(reverse, "summary.json")) == first  # reused, not retrained


def test_reverse_validation_refuses_target_labels_and_unfinished_runs(tmp_path, data_dir, capsys):
    run = _run(tmp_path, data_dir, "target-only", "upper")
    with pytest.raises(UserError, match="target labels"):
        reverse_validation.reverse_validate(run, data_dir, steps=5, progress=False)
    assert reverse_validation.main([str(tmp_path / "nothing"), "--data-dir", data_dir, "--quiet"]) == 2
    assert "not a finished run" in capsys.readouterr().err
