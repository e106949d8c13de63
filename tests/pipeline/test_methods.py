"""The Method interface: what the loop hands a method. Target labels reach no method
but the target-only bound: not in training batches, not in the refresh hook."""

import dataclasses
import inspect

import pytest
import torch

from grl_cuda.pipeline import methods
from grl_cuda.pipeline.config import Config
from grl_cuda.pipeline.data import LabeledTargetBatch, SourceBatch, TargetBatch
from grl_cuda.pipeline.loop import fit
from grl_cuda.pipeline.methods.base import Method
from grl_cuda.pipeline.methods.cgdm import CGDM
from grl_cuda.pipeline.methods.source_only import SourceOnly, TargetOnly


def test_target_batches_have_no_labels():
    assert "y" not in {f.name for f in dataclasses.fields(TargetBatch)}
    assert not hasattr(TargetBatch(torch.zeros(1)), "y")
    assert {f.name for f in dataclasses.fields(SourceBatch)} == {"x", "y", "domain"}  # domain: multi-source ids
    with pytest.raises(dataclasses.FrozenInstanceError):
        TargetBatch(torch.zeros(1)).y = torch.zeros(1)


def test_hooks_take_no_target_labels():
    assert list(inspect.signature(Method.train_step).parameters) == ["self", "source", "target", "progress"]
    assert list(inspect.signature(Method.refresh).parameters) == ["self", "step", "target_x"]
    assert list(inspect.signature(CGDM.refresh).parameters) == ["self", "step", "target_x"]
    assert not hasattr(Method, "final_metrics") and not hasattr(Method, "on_epoch")


def _spy(base):
    class Spy(base):
        seen = []

        def train_step(self, source, target, progress):
            Spy.seen.append(("step", type(source), type(target)))
            return super().train_step(source, target, progress)

        def refresh(self, step, target_x):
            Spy.seen.append(("refresh", type(target_x), None))
            return super().refresh(step, target_x)

    return Spy


@pytest.mark.slow
@pytest.mark.parametrize("name, base, handed", [("source-only", SourceOnly, TargetBatch),
                                                ("target-only", TargetOnly, LabeledTargetBatch)])
def test_the_loop_hands_labels_only_to_target_only(tmp_path, data_dir, monkeypatch, name, base, handed):
    spy = _spy(base)
    monkeypatch.setitem(methods.METHODS, name, spy)
    fit(Config(task="mnist-mnistm", method=name, steps=4, refresh_every=2, out=str(tmp_path / "run"),
               data_dir=data_dir, eval_every=1000, plots=False), progress=False)
    steps = [s for s in spy.seen if s[0] == "step"]
    assert len(steps) == 4 and all(s == ("step", SourceBatch, handed) for s in steps)
    # the refresh hook, before step 0 and at step 2, gets the target images only
    assert [s for s in spy.seen if s[0] == "refresh"] == [("refresh", torch.Tensor, None)] * 2


def test_dann_dsbn_evaluates_each_domain_with_its_own_statistics(tmp_path):
    from grl_cuda.pipeline.methods import get_method
    from grl_cuda.pipeline.models import DomainBatchNorm2d, mnist_net

    cfg = Config(method="dann-dsbn", out=str(tmp_path / "run"))
    method = get_method("dann-dsbn")(cfg, lambda **o: mnist_net(10, **o), 10, torch.device("cpu"))
    torch.manual_seed(0)
    xs, xt = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32) * 3 + 2
    method.set_lr(0.01)
    method.train_step(SourceBatch(xs, torch.arange(8) % 10), TargetBatch(xt), 0.5)
    layer = next(m for m in method.model.modules() if isinstance(m, DomainBatchNorm2d))
    assert layer.source_sizes is None  # the routing is undone after the step
    assert layer.source.running_mean.abs().sum() > 0 and not torch.equal(layer.source.running_mean,
                                                                          layer.target.running_mean)
    method.train(False)
    with torch.no_grad():
        assert not torch.equal(method.predict(xt, "source"), method.predict(xt, "target"))
        assert torch.equal(method.embed(xt, "target"), method.model.embed(xt))  # target: the default


def _dann(**options):
    from grl_cuda.pipeline.methods import build_method

    cfg = Config(method="dann", arch="mnist-bn", **options)
    return build_method(cfg, 10, "cpu")


def test_separate_passes_normalise_each_domain_by_its_own_batch():
    torch.manual_seed(0)
    xs, xt = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32) * 3 + 2
    joint, separate = _dann(passes="joint"), _dann(passes="separate")
    separate.model.load_state_dict(joint.model.state_dict())
    f_sep = separate.features_of_both(xs, xt)
    torch.testing.assert_close(f_sep, torch.cat([joint.model.features(xs), joint.model.features(xt)]))
    assert not torch.allclose(joint.features_of_both(xs, xt), f_sep, atol=1e-3)


def test_optimizer_option_and_domain_head_widths_reach_the_method():
    method = _dann(optimizer="adam", lr=0.002, disc_hidden="64,32")
    assert isinstance(method.opt, torch.optim.Adam) and method.opt.param_groups[0]["lr"] == 0.002
    assert isinstance(_dann().opt, torch.optim.SGD)
    assert [p.shape[0] for p in method.head.parameters() if p.dim() == 2] == [64, 32, 1]


@pytest.mark.parametrize("options, flag", [({"optimizer": "rmsprop"}, "--optimizer"),
                                           ({"passes": "both"}, "--passes"),
                                           ({"input_norm": "layer"}, "--input-norm"),
                                           ({"disc_hidden": "64,-1"}, "--disc-hidden"),
                                           ({"disc_hidden": "wide"}, "--disc-hidden")])
def test_bad_new_options_are_named(options, flag):
    from grl_cuda.pipeline import config

    with pytest.raises(config.UserError, match=flag):
        config.check(Config(**options))
