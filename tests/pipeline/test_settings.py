"""Settings beyond single-source unsupervised digits: --target-labeled K
(semi-supervised), several sources (multi-source DANN, K-way domain loss), feature
vectors (the shallow net). Data from tiny .npz files the tests write."""

import json
import os

import numpy as np
import pytest
import torch

from grl_cuda.pipeline import backbones, data
from grl_cuda.pipeline.cli import main as cli_main
from grl_cuda.pipeline.config import Config, UserError
from grl_cuda.pipeline.loop import fit
from grl_cuda.pipeline.methods import dann as dann_mod


def _images(path, n, seed, classes=4, bright=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 60, (n, 12, 12), dtype=np.uint8) + bright
    for i, c in enumerate(y):  # a learnable class pattern: a bright bar whose row is the class
        x[i, 2 + 2 * c, 2:10] = 250
    np.savez(path, x=x.astype(np.uint8), y=y)
    return str(path)


def _vectors(path, n, seed, width=8, classes=3, offset=0.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, width)).astype(np.float32) + offset
    x[np.arange(n), y] += 3.0
    np.savez(path, x=x, y=y)
    return str(path)


def _cfg(tmp_path, **kw):
    base = dict(method="dann", steps=12, batch_size=8, out=str(tmp_path / "run"), eval_every=6, log_every=3,
                ckpt_every=1000, plots=False, threads=1)
    base.update(kw)
    return Config(**base)


@pytest.fixture
def files(tmp_path):
    return {"a": _images(tmp_path / "a.npz", 40, 0), "b": _images(tmp_path / "b.npz", 30, 1, bright=80),
            "t": _images(tmp_path / "t.npz", 40, 2, bright=150), "tt": _images(tmp_path / "tt.npz", 20, 3, bright=150)}


# ---- semi-supervised ---------------------------------------------------------------------------

def _task(n_target=40, classes=4):
    rng = np.random.default_rng(0)
    src = data.Split(rng.integers(0, 255, (12, 4, 4, 3), dtype=np.uint8), np.arange(12) % classes)
    tgt = data.Split(rng.integers(0, 255, (n_target, 4, 4, 3), dtype=np.uint8), np.arange(n_target) % classes)
    test = data.Split(rng.integers(0, 255, (8, 4, 4, 3), dtype=np.uint8), np.arange(8) % classes)
    return data.Task("t", src, src, tgt, test, classes)


def test_target_labeled_takes_k_per_class_from_target_train_seeded():
    task = _task()
    chosen = data.select_target_labeled(task, 3, seed=0).target_labeled
    labels = task.target_train.y[chosen]
    assert np.bincount(labels).tolist() == [3, 3, 3, 3]  # K of every class
    assert len(set(chosen.tolist())) == 12 and chosen.max() < len(task.target_train)  # rows of target train
    np.testing.assert_array_equal(chosen, data.select_target_labeled(task, 3, seed=0).target_labeled)
    assert not np.array_equal(chosen, data.select_target_labeled(task, 3, seed=1).target_labeled)
    assert data.select_target_labeled(task, 0, seed=0).target_labeled is None


def test_target_labeled_larger_than_a_class_is_refused():
    with pytest.raises(UserError, match=r"--target-labeled 11 is larger than class 0's 10 target train samples"):
        data.select_target_labeled(_task(n_target=40), 11, seed=0)


def test_semi_supervised_method_gets_labeled_rows_apart(tmp_path, files, monkeypatch):
    seen = []
    original = dann_mod.DANN.train_step

    def spy(self, source, target, progress):
        seen.append(target)
        return original(self, source, target, progress)

    monkeypatch.setattr(dann_mod.DANN, "train_step", spy)
    cfg = _cfg(tmp_path, source=files["a"], target=files["t"], target_test=files["tt"], target_labeled=2)
    summary = fit(cfg, progress=False)
    assert isinstance(seen[0], data.SemiSupervisedTargetBatch)
    assert not hasattr(seen[0], "y")  # the unlabeled batch still has no labels
    assert seen[0].labeled.x.shape[0] == 8 and seen[0].labeled.y.shape == (8,)  # 2 per class x 4 classes
    rows = summary["target_labeled_rows"]
    assert len(rows) == 8 and summary["config"]["target_labeled"] == 2
    target_y = np.load(files["t"])["y"]
    assert np.bincount(target_y[rows]).tolist() == [2, 2, 2, 2]


def test_target_labels_change_training(tmp_path, files):
    """The labeled rows' loss is really added: the same run without them ends elsewhere."""
    common = dict(source=files["a"], target=files["t"], target_test=files["tt"], method="source-only")
    fit(_cfg(tmp_path, out=str(tmp_path / "k0"), **common), progress=False)
    fit(_cfg(tmp_path, out=str(tmp_path / "k2"), target_labeled=2, **common), progress=False)
    w = [torch.load(tmp_path / k / "checkpoint.pt", weights_only=False)["method"]["networks"]["model"]
         for k in ("k0", "k2")]
    assert not torch.equal(w[0]["classifier.weight"], w[1]["classifier.weight"])


@pytest.mark.parametrize("method", ["cgdm", "target-only"])
def test_target_labeled_refused_by_methods_that_ignore_it(tmp_path, files, method):
    cfg = _cfg(tmp_path, source=files["a"], target=files["t"], target_test=files["tt"], target_labeled=1,
               method=method)
    with pytest.raises(UserError, match=f"--method {method} does not use --target-labeled"):
        fit(cfg, progress=False)
    assert not os.path.exists(cfg.out)  # refused before any training


# ---- multi-source ------------------------------------------------------------------------------

def test_several_sources_get_domain_ids_and_their_own_held_out_rows(files):
    task = data.task_from_files(f"{files['a']},{files['b']}", files["t"], files["tt"])
    assert task.source_domains == 2
    assert np.bincount(task.source_train.domain).tolist() == [36, 27]  # 10% of each held out
    assert np.bincount(task.source_test.domain).tolist() == [4, 3]
    t = data.to_tensors(task, torch.device("cpu"))
    x, d = t["source_train"][0], t["source_domain"]
    for k in (0, 1):  # each source standardised by its own statistics
        torch.testing.assert_close(x[d == k].mean((0, 2, 3)).double(), torch.zeros(3, dtype=torch.float64),
                                   atol=1e-5, rtol=0)


def test_multi_source_dann_uses_the_k_way_loss(tmp_path, files, monkeypatch):
    calls = []
    original = dann_mod.domain_cross_entropy

    def spy(logits, ids, **kw):
        calls.append((logits.shape, ids.clone()))
        return original(logits, ids, **kw)

    monkeypatch.setattr(dann_mod, "domain_cross_entropy", spy)
    cfg = _cfg(tmp_path, source=f"{files['a']},{files['b']}", target=files["t"], target_test=files["tt"])
    summary = fit(cfg, progress=False)
    assert summary["config"]["source_domains"] == 2
    shape, ids = calls[0]
    assert shape == (16, 3)  # 8 source rows + 8 target rows, 2 sources + the target
    assert set(ids[:8].tolist()) <= {0, 1} and ids[8:].tolist() == [2] * 8


@pytest.mark.parametrize("make, message", [
    (lambda p: (_vectors(p / "v8.npz", 20, 0), _vectors(p / "v5.npz", 20, 0, width=5)), "vectors of different widths"),
    (lambda p: (_vectors(p / "v8.npz", 20, 0), _images(p / "im.npz", 20, 0)), "mix images and vectors"),
])
def test_incompatible_sources_are_refused(tmp_path, files, make, message):
    a, b = make(tmp_path)
    with pytest.raises(UserError, match=message):
        data.task_from_files(f"{a},{b}", b, b)
    with pytest.raises(UserError, match="names a file twice"):
        data.task_from_files(f"{a},{a}", b, b)


# ---- multi-source domain-specific BatchNorm ------------------------------------------------------

def _dsbn(num_sources=2, passes="joint"):
    from grl_cuda.pipeline.methods import get_method
    from grl_cuda.pipeline.models import mnist_net

    cfg = Config(method="dann-dsbn", arch="mnist", source_domains=num_sources, passes=passes)
    torch.manual_seed(0)
    return get_method("dann-dsbn")(cfg, lambda **o: mnist_net(10, **o), 10, torch.device("cpu"))


def _first_dsbn(method):
    from grl_cuda.pipeline.models import DomainBatchNorm2d

    return next(m for m in method.model.modules() if isinstance(m, DomainBatchNorm2d))


def _three_domains(n=12):
    """Source rows of two sources, interleaved (as the loop samples them), and target rows,
    each domain with statistics of its own."""
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1][:n])
    xs = torch.randn(n, 3, 32, 32, generator=g) + torch.where(ids == 0, -2.0, 3.0).view(-1, 1, 1, 1)
    xt = torch.randn(8, 3, 32, 32, generator=g) * 2 + 0.5
    return xs, torch.arange(n) % 10, ids, xt


@pytest.mark.parametrize("passes", ["joint", "separate"])
def test_each_source_goes_through_its_own_batchnorm(passes):
    method = _dsbn(passes=passes)
    layer = _first_dsbn(method)
    assert layer.num_sources == 2
    seen = {}
    for name, bn in (("source 0", layer.source), ("source 1", layer.more_sources[0]), ("target", layer.target)):
        bn.register_forward_hook(lambda m, inp, out, name=name: seen.setdefault(name, []).append(inp[0].detach()))
    xs, ys, ids, xt = _three_domains()
    conv = method.model.extractor[0]  # the first DSBN layer reads conv1's output
    with torch.no_grad():
        expected = {"source 0": conv(xs[ids == 0]), "source 1": conv(xs[ids == 1]), "target": conv(xt)}
    method.set_lr(0.01)
    method.train_step(data.SourceBatch(xs, ys, ids), data.TargetBatch(xt), 0.5)
    for name, rows in expected.items():
        assert len(seen[name]) == 1, name
        torch.testing.assert_close(seen[name][0], rows)  # exactly that domain's rows, each once
        bn = {"source 0": layer.source, "source 1": layer.more_sources[0], "target": layer.target}[name]
        # its running statistics: one momentum step from zero towards that domain's batch mean
        torch.testing.assert_close(bn.running_mean, 0.1 * rows.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    means = [layer.source.running_mean, layer.more_sources[0].running_mean, layer.target.running_mean]
    assert all(not torch.allclose(a, b, atol=1e-3) for i, a in enumerate(means) for b in means[i + 1:])
    assert layer.source_sizes is None  # routing undone after the step


def test_multi_source_dsbn_predicts_target_with_the_target_statistics_and_sources_by_their_own():
    from grl_cuda.pipeline.evaluate import predicted_classes
    from grl_cuda.pipeline.models import route_domains

    method = _dsbn()
    xs, ys, ids, xt = _three_domains()
    method.set_lr(0.01)
    for _ in range(3):
        method.train_step(data.SourceBatch(xs, ys, ids), data.TargetBatch(xt), 0.5)
    method.train(False)
    layer = _first_dsbn(method)
    used = []
    for name, bn in (("source 0", layer.source), ("source 1", layer.more_sources[0]), ("target", layer.target)):
        bn.register_forward_hook(lambda m, inp, out, name=name: used.append(name))
    with torch.no_grad():
        on_target = method.predict(xt, "target")
        assert used == ["target"]
        with route_domains(method.model, domain=0):
            as_source0 = method.model(xt)
        assert not torch.allclose(on_target, as_source0, atol=1e-4)  # the statistics differ: so do the logits
        # source rows, interleaved, each by its own source's statistics, back in their own order
        used.clear()
        routed = method.predict(xs, ids)
        assert sorted(set(used)) == ["source 0", "source 1"]
        for d in (0, 1):
            with route_domains(method.model, domain=d):
                torch.testing.assert_close(routed[ids == d], method.model(xs[ids == d]))
        # evaluation in batches slices the ids with the rows
        torch.testing.assert_close(predicted_classes(method, xs, ids, batch=5), routed.argmax(1))
        with pytest.raises(ValueError, match="route source rows by their source index"):
            method.predict(xs, "source")  # which source's statistics: refused, not guessed


def test_single_source_dsbn_is_unchanged():
    """One source: the layers and their state_dict keys of before multi-source DSBN
    (old checkpoints load), and the routed pass is the old formula to the bit."""
    from grl_cuda.pipeline.models import DomainBatchNorm2d, mnist_net, route_domains

    method = _dsbn(num_sources=1)
    keys = set(method.model.state_dict())
    assert not any("more_sources" in k for k in keys)
    assert {"extractor.1.source.running_mean", "extractor.1.target.weight"} <= keys
    assert keys == set(mnist_net(10, domain_bn=True).state_dict())
    torch.manual_seed(0)
    a, b = DomainBatchNorm2d(3), DomainBatchNorm2d(3)
    x = torch.randn(10, 3, 4, 4)
    with route_domains(a, n_source=6):
        out = a(x)
    reference = torch.cat([b.source(x[:6]), b.target(x[6:])])  # what the layer computed before
    assert torch.equal(out, reference)
    assert torch.equal(a.source.running_var, b.source.running_var)
    assert torch.equal(a.target.running_mean, b.target.running_mean)


def test_a_source_missing_from_a_batch_leaves_its_batchnorm_alone():
    from grl_cuda.pipeline.models import DomainBatchNorm2d, route_domains

    bn = DomainBatchNorm2d(2, num_sources=3)
    x = torch.randn(7, 2, 3, 3)
    with route_domains(bn, source_sizes=[3, 0, 2]):  # no row of source 1
        out = bn(x)
    assert out.shape == x.shape
    assert bn.more_sources[0].num_batches_tracked == 0 and bn.more_sources[1].num_batches_tracked == 1
    with pytest.raises(ValueError, match="2 entries for a DomainBatchNorm2d of 3 source domains"):
        with route_domains(bn, source_sizes=[3, 4]):
            pass


def test_multi_source_dsbn_run_reports_per_source_batchnorm(tmp_path, files):
    cfg = _cfg(tmp_path, source=f"{files['a']},{files['b']}", target=files["t"], target_test=files["tt"],
               method="dann-dsbn")
    summary = fit(cfg, progress=False)
    assert summary["config"]["source_domains"] == 2 and 0 <= summary["source_test_acc"] <= 1
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["method"]["networks"]["model"]
    assert "extractor.1.more_sources.0.running_mean" in state
    stats = [state[f"extractor.1.{k}.running_mean"] for k in ("source", "more_sources.0", "target")]
    assert not torch.allclose(stats[0], stats[1]) and not torch.allclose(stats[1], stats[2])


# ---- vectors -----------------------------------------------------------------------------------

def test_vectors_train_the_shallow_net(tmp_path):
    src, tgt = _vectors(tmp_path / "s.npz", 90, 0), _vectors(tmp_path / "t.npz", 60, 1, offset=0.5)
    test = _vectors(tmp_path / "tt.npz", 30, 2, offset=0.5)
    summary = fit(_cfg(tmp_path, source=src, target=tgt, target_test=test, steps=150, lr=0.1, eval_every=50),
                  progress=False)
    assert summary["config"]["arch"] == "shallow"
    assert summary["target_test_acc"] > 0.6  # chance: 1/3
    with pytest.raises(UserError, match="--arch mnist does not read vectors"):
        fit(_cfg(tmp_path, source=src, target=tgt, target_test=test, arch="mnist", out=str(tmp_path / "x")),
            progress=False)


def test_shallow_net_is_the_papers():
    net = backbones.shallow_net(3, (8,), hidden=50)
    assert [type(m).__name__ for m in net.extractor] == ["Linear", "Sigmoid"] and net.feature_dim == 50
    head = backbones.MultiDomainDiscriminator(50, (), 3)
    assert head(torch.zeros(2, 50)).shape == (2, 3) and head.grl is head[0]


# ---- every setting resumes bit-exactly and runs from the command line ---------------------------

@pytest.mark.parametrize("setting", ["semi", "multi", "vectors"])
def test_resume_is_bit_exact(tmp_path, files, assert_same_outputs, setting):
    if setting == "vectors":
        kw = dict(source=_vectors(tmp_path / "s.npz", 60, 0), target=_vectors(tmp_path / "t.npz", 40, 1),
                  target_test=_vectors(tmp_path / "tt.npz", 20, 2), target_labeled=1)
    else:
        kw = dict(source=f"{files['a']},{files['b']}" if setting == "multi" else files["a"], target=files["t"],
                  target_test=files["tt"], target_labeled=1 if setting == "semi" else 0, method="dann-dsbn")
    fit(_cfg(tmp_path, out=str(tmp_path / "straight"), **kw), progress=False)
    assert fit(_cfg(tmp_path, out=str(tmp_path / "broken"), stop_after=7, **kw), progress=False)["interrupted"]
    fit(_cfg(tmp_path, out=str(tmp_path / "broken"), resume=True, **kw), progress=False)
    assert_same_outputs(str(tmp_path / "straight"), str(tmp_path / "broken"))


def test_cli_runs_multi_source_semi_supervised(tmp_path, files, capsys):
    out = tmp_path / "cli"
    code = cli_main(["--source", f"{files['a']},{files['b']}", "--target", files["t"], "--target-test", files["tt"],
                     "--target-labeled", "1", "--steps", "6", "--batch-size", "8", "--no-plots", "--out", str(out)])
    assert code == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["config"]["source_domains"] == 2 and len(summary["target_labeled_rows"]) == 4
    code = cli_main(["--source", files["a"], "--target", files["t"], "--target-test", files["tt"],
                     "--target-labeled", "50", "--out", str(tmp_path / "bad")])
    assert code == 2 and "larger than class" in capsys.readouterr().err


# ---- ImageFolder + a torchvision backbone ------------------------------------------------------

def _image_folder(root, classes=("cat", "dog"), per_class=6, seed=0, shift=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            im = rng.integers(0, 80, (20, 24, 3), dtype=np.uint8) + shift
            im[:, 4 + 8 * c:8 + 8 * c] = 250  # a class-dependent stripe
            Image.fromarray(im.astype(np.uint8)).save(root / name / f"{i}.png")
    return str(root)


@pytest.fixture
def folders(tmp_path):
    return {"s": _image_folder(tmp_path / "s"), "t": _image_folder(tmp_path / "t", seed=1, shift=100),
            "tt": _image_folder(tmp_path / "tt", seed=2, shift=100)}


def test_backbone_on_image_folders_end_to_end(tmp_path, folders):
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # random weights in torchvision's layout
    out = tmp_path / "office"
    code = cli_main(["--source", folders["s"], "--target", folders["t"], "--target-test", folders["tt"],
                     "--backbone", "resnet18", "--weights", str(weights), "--image-size", "32", "--steps", "4",
                     "--batch-size", "4", "--eval-every", "2", "--no-plots", "--out", str(out), "--threads", "1"])
    assert code == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["config"]["arch"] == "resnet18" and summary["sizes"]["target_test"] == 12
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    trained = ckpt["method"]["networks"]["model"]
    assert trained["extractor.1.weight"].shape == (256, 512)  # the bottleneck after the trunk
    groups = ckpt["method"]["optimizers"]["opt"]["param_groups"]
    assert sorted(g.get("lr_mult", 1.0) for g in groups) == [0.1, 1.0]  # the pretrained trunk learns 10x slower
    first_conv = torch.load(weights)["conv1.weight"]
    assert trained["extractor.0.conv1.weight"].shape == first_conv.shape


def test_backbone_weights_are_loaded(folders):
    import torchvision

    from grl_cuda.pipeline import models

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"].fill_(0.5)
    path = os.path.join(os.path.dirname(folders["s"]), "w.pt")
    torch.save(state, path)
    net = models.model_factory("resnet18", 2, (32, 32, 3), path)()
    assert torch.equal(net.extractor[0].conv1.weight, state["conv1.weight"])
    torch.save({"not": "weights"}, path)
    with pytest.raises(UserError, match="holds no state_dict"):
        models.model_factory("resnet18", 2, (32, 32, 3), path)()
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(UserError, match="does not fit resnet18"):
        models.model_factory("resnet18", 2, (32, 32, 3), path)()


@pytest.mark.parametrize("change, message", [
    (lambda p, f: dict(target=_image_folder(p / "other", classes=("cat", "cow"))), "class names differ"),
    (lambda p, f: dict(target=str(p / "missing")), "not found"),
    (lambda p, f: dict(target=_images(p / "t.npz", 10, 0)), "mix ImageFolder directories and .npz"),
    (lambda p, f: dict(weights=str(p / "none.pt")), "no such file"),
    (lambda p, f: dict(backbone=None, weights=str(p / "none.pt")), "--weights needs --backbone"),
    (lambda p, f: dict(target_labeled=7), "larger than class"),
    (lambda p, f: dict(target_test=f["t"], target_labeled=1), "the labeled rows would be test rows"),
])
def test_image_folder_bad_input_is_refused_before_training(tmp_path, folders, change, message):
    kw = dict(source=folders["s"], target=folders["t"], target_test=folders["tt"], backbone="resnet18",
              image_size=32, batch_size=4)
    kw.update(change(tmp_path, folders))
    cfg = _cfg(tmp_path, **kw)
    with pytest.raises((UserError, FileNotFoundError), match=message):
        fit(cfg, progress=False)
    assert not os.path.exists(os.path.join(cfg.out, "checkpoint.pt"))


@pytest.mark.slow
def test_results_table_has_a_column_per_k(tmp_path, data_dir):
    from grl_cuda.pipeline import results

    out = str(tmp_path / "grid")
    assert results.main(["--tasks", "mnist-mnistm", "--seeds", "1", "--steps", "10", "--out", out, "--data-dir",
                         data_dir, "--no-plots", "--quiet", "--methods", "source-only,dann,target-only",
                         "--target-labeled", "0,2"]) == 0
    text = open(os.path.join(out, "results.md")).read()
    assert "| method | K = 0 | K = 2 |" in text
    main_table, k_table = text.split("## Semi-supervised")
    assert "| target-only |" in main_table and "| - |" not in main_table
    row = next(line for line in k_table.splitlines() if line.startswith("| target-only |"))
    assert row.endswith("| - |")  # target-only reads every target label: no run with K = 2
    assert os.path.exists(os.path.join(out, "runs", "mnist-mnistm", "dann+k2", "seed0", "summary.json"))


def test_image_size_resizes_npz_images_and_is_refused_where_there_are_none(tmp_path, files):
    task = data.task_for(_cfg(tmp_path, source=files["a"], target=files["t"], target_test=files["tt"], image_size=20))
    assert task.image_shape == (20, 20, 3) and task.target_test.x.shape[1:] == (20, 20, 3)
    assert data.task_for(_cfg(tmp_path, source=files["a"], target=files["t"],
                              target_test=files["tt"])).image_shape == (32, 32, 3)  # the .npz default
    with pytest.raises(UserError, match="embedded tasks are 32x32"):
        fit(_cfg(tmp_path, task="mnist-mnistm", image_size=64), progress=False)
    vec = [_vectors(tmp_path / f"{n}.npz", 20, i) for i, n in enumerate(("vs", "vt", "vtt"))]
    with pytest.raises(UserError, match="hold feature vectors"):
        fit(_cfg(tmp_path, source=vec[0], target=vec[1], target_test=vec[2], image_size=64), progress=False)


@pytest.mark.parametrize("image_size, seen", [(40, 40), (None, 224)])
def test_reverse_validation_of_an_image_folder_run_sees_the_runs_image_size(tmp_path, folders, monkeypatch,
                                                                          image_size, seen):
    """The reverse model trains on the run's images at the run's size (ImageFolder with a
    backbone: --image-size, or 224 by default), not on 32x32 copies."""
    from grl_cuda.pipeline import reverse_validation

    kw = dict(source=folders["s"], target=folders["t"], target_test=folders["tt"], backbone="resnet18",
              image_size=image_size, steps=2, batch_size=4, eval_every=2)
    fit(_cfg(tmp_path, **kw), progress=False)
    shapes = []
    original = dann_mod.DANN.train_step

    def spy(self, source, target, progress):
        shapes.append((tuple(source.x.shape[1:]), tuple(target.x.shape[1:])))
        return original(self, source, target, progress)

    monkeypatch.setattr(dann_mod.DANN, "train_step", spy)
    row = reverse_validation.reverse_validate(str(tmp_path / "run"), progress=False)
    assert shapes == [((3, seen, seen), (3, seen, seen))] * 2  # both reverse steps, source and target
    assert 0.0 <= row["score"] <= 1.0
    reverse = json.load(open(tmp_path / "run" / "reverse" / "summary.json"))
    assert reverse["config"]["arch"] == "resnet18"


def test_a_checkpoint_of_another_model_layout_is_refused_with_a_clear_error():
    # multi-source dann-dsbn checkpoints of 0.2.0 had one BatchNorm for every source
    old, new = _dsbn(num_sources=1), _dsbn(num_sources=2)
    with pytest.raises(UserError, match="'model' network does not fit 'dann-dsbn'.*another version"):
        new.load_state_dict(old.state_dict())
    new.load_state_dict(_dsbn(num_sources=2).state_dict())  # the same layout loads


def test_rollback_scores_each_source_test_row_by_its_own_source():
    # the guard's held-out source accuracy, like the evaluation's, routes multi-source rows by
    # their source id (it used to ask for plain "source", refused with several sources)
    from grl_cuda.pipeline.evaluate import source_test_accuracy
    from grl_cuda.pipeline.guard import Rollback

    method = _dsbn(num_sources=2)
    method.train(False)
    g = torch.Generator().manual_seed(0)
    tensors = {"source_test": (torch.randn(6, 3, 32, 32, generator=g), torch.arange(6) % 10),
               "source_test_domain": torch.tensor([0, 1, 1, 0, 1, 0])}
    record = Rollback(0.05, method, None).check(0, tensors)
    assert record["source_val_acc"] == source_test_accuracy(method, tensors)
