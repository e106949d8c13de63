"""CGDM and MCD: the clustering, the gradient discrepancy, a short run, resume."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grl_cuda.pipeline.methods.cgdm import (cluster_pseudo_labels, discrepancy, entropy_weights, gradient_discrepancy,
                                   information_maximisation)
from grl_cuda.pipeline.config import Config
from grl_cuda.pipeline.loop import fit as train


def test_clustering_recovers_well_separated_clusters():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=1) * 5
    labels = torch.arange(4).repeat_interleave(50)
    feats = centres[labels] + 0.3 * torch.randn(200, 16)
    # noisy classifier probabilities: right class favoured only 40% of the time
    noisy = torch.where(torch.rand(200) < 0.4, labels, torch.randint(0, 4, (200,)))
    probs = F.one_hot(noisy, 4).float() * 0.6 + 0.1
    found = cluster_pseudo_labels(feats, probs)
    assert (found == labels).float().mean() > 0.95
    assert (noisy == labels).float().mean() < 0.6  # the clustering did the work


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def test_gradient_discrepancy_is_zero_for_identical_batches():
    head = _tiny()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    params = list(head.parameters())
    loss = F.cross_entropy(head(x), y)
    gd = gradient_discrepancy(loss, 2.0 * F.cross_entropy(head(x), y), params)  # scaled: same direction
    assert abs(gd.item()) < 1e-10
    other = gradient_discrepancy(loss, F.cross_entropy(head(-x), 1 - y), params)
    assert other.item() > 1e-3


def test_gradient_discrepancy_gradcheck_through_double_backward():
    head = _tiny()
    ys = torch.tensor([0, 1, 1])
    yt = torch.tensor([1, 1, 0])
    params = list(head.parameters())

    def f(features):  # the generator's output feeds both losses
        ls = F.cross_entropy(head(features[:3]), ys)
        lt = F.cross_entropy(head(features[3:]), yt)
        return gradient_discrepancy(ls, lt, params)

    feats = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (feats,))


def test_losses_basic_properties():
    l = torch.randn(6, 5)
    assert discrepancy(l, l).item() == 0
    assert (entropy_weights(l) > 1).all() and (entropy_weights(l) <= 2).all()
    confident_diverse = torch.eye(5) * 50
    assert information_maximisation(confident_diverse) < information_maximisation(torch.zeros(5, 5)) - 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cgdm", "mcd"])
def test_short_run_beats_chance(tmp_path, data_dir, method):
    cfg = Config(task="mnist-mnistm", method=method, steps=40, out=str(tmp_path / method), data_dir=data_dir,
                 eval_every=1000, log_every=10, refresh_every=20, plots=False, num_k=1)
    summary = train(cfg, progress=False)
    assert summary["source_test_acc"] > 0.3 and summary["target_test_acc"] > 0.15  # chance: 0.1
    records = [json.loads(x) for x in open(tmp_path / method / "metrics.jsonl")]
    if method == "cgdm":
        refresh = [r for r in records if r["kind"] == "refresh"]
        # the first 20 steps are the MCD warm-up: the first refresh comes after them
        assert [r["step"] for r in refresh] == [20] and all(0 <= r["pseudo_label_acc"] <= 1 for r in refresh)
        assert any(r.get("gradient_discrepancy", 0) > 0 for r in records if r["kind"] == "train")


@pytest.mark.slow
def test_cgdm_resume_is_bit_exact(tmp_path, data_dir):
    common = dict(task="mnist-mnistm", method="cgdm", steps=16, data_dir=data_dir, eval_every=1000, log_every=4,
                  refresh_every=8, plots=False, num_k=1, ckpt_every=1000)
    train(Config(out=str(tmp_path / "a"), **common), progress=False)
    assert train(Config(out=str(tmp_path / "b"), stop_after=11, **common), progress=False)["interrupted"]
    train(Config(out=str(tmp_path / "b"), resume=True, **common), progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["method"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["method"]
    for net in a["networks"]:
        for k, v in a["networks"][net].items():
            assert torch.equal(v, b["networks"][net][k]), f"{net}.{k}"
    assert torch.equal(a["extra"]["pseudo_labels"], b["extra"]["pseudo_labels"])
