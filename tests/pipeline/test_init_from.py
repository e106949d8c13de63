"""--init-from: a run starts from the evaluated weights of a finished one (DIRT-T's
refinement of a DANN run, as the paper's authors ran it); what does not fit is refused
with the reason, and a run started this way resumes bit-exactly."""

import shutil

import pytest
import torch

from grl_cuda.pipeline import loop
from grl_cuda.pipeline.config import Config, UserError
from grl_cuda.pipeline.loop import fit
from grl_cuda.pipeline.reverse_validation import reverse_validate

pytestmark = pytest.mark.slow


def _cfg(out, data_dir, **kw):
    return Config(**{**dict(task="mnist-mnistm", method="dann", steps=6, out=str(out), data_dir=data_dir,
                            eval_every=1000, log_every=2, ckpt_every=1000, plots=False), **kw})


@pytest.fixture(scope="module")
def dann_run(tmp_path_factory, data_dir):
    """A finished 6-step DANN run with weight averaging: its evaluated weights are the average."""
    out = tmp_path_factory.mktemp("dann")
    fit(_cfg(out, data_dir, ema=0.9), progress=False)
    return out


def _evaluated(out):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    return ckpt["average"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_starts_from_the_averaged_weights_of_every_shared_network(tmp_path, data_dir, dann_run):
    saved = _evaluated(dann_run)
    own_start = loop.setup(_cfg(tmp_path / "fresh", data_dir, method="dirt-t", dirtt_start=0.0, ema=0.9))
    run = loop.setup(_cfg(tmp_path / "dirtt", data_dir, method="dirt-t", dirtt_start=0.0, ema=0.9,
                          init_from=str(dann_run)))
    nets = run.method.networks()
    assert _same(nets["model"].state_dict(), saved["model"])
    assert _same(nets["domain_head"].state_dict(), saved["domain_head"])
    # the raw last weights differ from the average: the average is what was loaded
    raw = torch.load(dann_run / "checkpoint.pt", weights_only=False)["method"]["networks"]["model"]
    assert not _same(raw, saved["model"])
    # a network the DANN run has not (the teacher) keeps this run's own initial weights
    assert _same(nets["teacher"].state_dict(), own_start.method.networks()["teacher"].state_dict())
    # this run's average starts from the loaded weights
    assert _same(run.average.shadow["model"], saved["model"])


def test_refinement_from_a_dann_run_trains_and_its_teacher_is_the_loaded_model(tmp_path, data_dir, dann_run):
    cfg = _cfg(tmp_path / "dirtt", data_dir, method="dirt-t", dirtt_start=0.0, steps=4, dirtt_refresh=100,
               init_from=str(dann_run), ema=0.9)
    summary = fit(cfg, progress=False)
    assert summary["config"]["init_from"] == str(dann_run)
    teacher = torch.load(tmp_path / "dirtt" / "checkpoint.pt", weights_only=False)["method"]["networks"]["teacher"]
    assert _same(teacher, _evaluated(dann_run)["model"])  # refreshed at step 0, not since (refresh 100)


def test_resumes_bit_exactly_from_its_own_checkpoint(tmp_path, data_dir, dann_run, assert_same_outputs):
    earlier = tmp_path / "earlier"
    shutil.copytree(dann_run, earlier)
    kw = dict(method="dann", init_from=str(earlier), ema=0.9)
    fit(_cfg(tmp_path / "whole", data_dir, **kw), progress=False)
    assert fit(_cfg(tmp_path / "split", data_dir, stop_after=3, **kw), progress=False)["interrupted"]
    shutil.rmtree(earlier)  # the resumed run reads its weights from its checkpoint, not from the earlier run
    fit(_cfg(tmp_path / "split", data_dir, resume=True, **kw), progress=False)
    assert_same_outputs(str(tmp_path / "whole"), str(tmp_path / "split"))


@pytest.mark.parametrize("options, message", [
    (dict(input_norm="instance"), r"preprocessed otherwise \(input_norm: saved 'none' vs now 'instance'\)"),
    (dict(arch="mnist-bn"), r"'model' network does not fit this run's \(arch 'mnist' vs 'mnist-bn'\): "
                            r"(Missing key|Unexpected key|size mismatch)"),
    (dict(disc_hidden="64"), r"'domain_head' network does not fit this run's \(method 'dann' vs 'dann', "
                             r"--disc-hidden '' vs '64'\): size mismatch for"),
    (dict(method="cgdm"), r"no network that 'cgdm' has \(it has model, domain_head; this run G, F1, F2\)"),
])
def test_what_does_not_fit_is_refused_with_the_reason(tmp_path, data_dir, dann_run, options, message):
    with pytest.raises(UserError, match=message):
        loop.setup(_cfg(tmp_path / "run", data_dir, init_from=str(dann_run), **options))


def test_a_folder_without_a_finished_run_is_refused(tmp_path, data_dir):
    with pytest.raises(UserError, match="not a finished run"):
        loop.setup(_cfg(tmp_path / "run", data_dir, init_from=str(tmp_path)))
    with pytest.raises(UserError, match="this run's own --out"):
        loop.setup(_cfg(tmp_path / "run", data_dir, init_from=str(tmp_path / "run")))


def test_reverse_validation_refuses_a_run_that_began_in_another(tmp_path, data_dir, dann_run):
    # it retrains the run's procedure from scratch: the earlier run's source-trained weights would inflate
    # the score, and DIRT-T's refinement alone never reads the pseudo-labels it is scored on
    out = tmp_path / "dirtt"
    fit(_cfg(out, data_dir, method="dirt-t", dirtt_start=0.0, steps=2, init_from=str(dann_run)), progress=False)
    with pytest.raises(UserError, match=r"started from the weights of .* \(--init-from\)"):
        reverse_validate(str(out), data_dir=data_dir, progress=False)
