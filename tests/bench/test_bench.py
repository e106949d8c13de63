"""The benchmark harness and command: a quick run writes its outputs (speed itself
is measured in bench/, never asserted here)."""

import json

import pytest

from bench import harness, peers
from bench.run import main


def test_percentiles():
    p = harness.percentiles([5.0, 1.0, 3.0, 2.0, 4.0])
    assert p["median"] == 3.0 and p["p20"] == 2.0 and p["p80"] == 4.0 and p["n"] == 5


def test_peer_layers_reverse_gradients():
    import torch

    for name, layer in peers.layers(0.5).items():
        x = torch.randn(4, requires_grad=True)
        layer(x).sum().backward()
        torch.testing.assert_close(x.grad, torch.full((4,), -0.5), msg=name)


def test_quick_run_writes_results(tmp_path):
    assert main(["--quick", "--only", "loss,linear", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["torch"] and results["loss"]["timing"] and results["linear"]["timing"]
    text = (tmp_path / "results.md").read_text()
    assert "Fused domain loss" in text and "GradientReversalLinear" in text
    assert (tmp_path / "loss.png").exists() and (tmp_path / "linear.png").exists()


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    assert main(["--only", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown families" in capsys.readouterr().err
    assert main(["--only", "gpu", "--cpu-time", "--out", str(tmp_path)]) == 2  # without --threads 1
    assert "--cpu-time needs" in capsys.readouterr().err


def test_cpu_time_clock(tmp_path):
    from bench import harness

    assert main(["--only", "gpu", "--quick", "--cpu-time", "--threads", "1", "--out", str(tmp_path)]) == 0
    try:
        assert harness.CPU_TIMER is __import__("time").thread_time
        assert "calling thread's CPU time" in (tmp_path / "results.md").read_text()
    finally:
        harness.CPU_TIMER = __import__("time").perf_counter


def test_every_family_is_registered_with_its_contract(tmp_path):
    # adding a benchmark is one module in FAMILIES: each has a title, run and report
    from bench.run import FAMILIES

    assert set(FAMILIES) >= {"grl", "loss", "cross_entropy", "linear", "e2e", "scaling"}
    for name, family in FAMILIES.items():
        assert family.TITLE and callable(family.run) and callable(family.report), name


def test_quick_kway_family_reports_both_implementations(tmp_path):
    assert main(["--quick", "--only", "cross_entropy", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    impls = {row["impl"] for row in results["cross_entropy"]["timing"]}
    assert impls == {"grl_cuda.domain_cross_entropy", "F.cross_entropy"}
    assert "K-way domain loss" in (tmp_path / "results.md").read_text() and (tmp_path / "cross_entropy.png").exists()


@pytest.mark.slow
def test_quick_run_of_every_family_writes_its_report(tmp_path):
    from bench.run import FAMILIES

    assert main(["--quick", "--only", ",".join(FAMILIES), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    text = (tmp_path / "results.md").read_text()
    for name, family in FAMILIES.items():
        assert results[name] and family.TITLE in text, name


def test_optional_peers_are_checked_before_timing(monkeypatch):
    import torch

    # identical numbers pass, a wrong scale or a non-identity forward is caught
    assert peers.same_numbers(peers.layers(0.7)["grl_cuda"], 0.7)
    assert not peers.same_numbers(peers.layers(0.5)["grl_cuda"], 0.7)
    assert not peers.same_numbers(lambda x: peers.Tllib.apply(x, 0.7) * 2, 0.7)
    # an absent package gets a note, one with other numbers is left out with a note
    monkeypatch.setattr(peers, "OPTIONAL", {
        "absent": ("no_such_module_grl", lambda mod, lam: None),
        "wrong": ("torch", lambda mod, lam: lambda x: peers.FungtionDANN.apply(x, 2 * lam)),
        "right": ("torch", lambda mod, lam: lambda x: peers.FungtionDANN.apply(x, lam)),
    })
    found, notes = peers.optional_layers(0.7)
    assert list(found) == ["right"]
    assert any(n.startswith("absent: not installed") for n in notes)
    assert any(n.startswith("wrong: skipped") for n in notes)
    x = torch.ones(3, requires_grad=True)
    found["right"](x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.7))


def test_compiled_grl_rows_stay_compiled_across_sizes():
    # the full run compiles x -> layer -> * w -> sum for every size and dtype; one lambda for all
    # of them ran out of dynamo's 8 versions and timed eager code as "(torch.compile)"
    import torch
    import torch._dynamo

    from bench import grl

    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for n in range(1, 7):  # 12 compiled graphs, as six sizes of the full run
            w = torch.randn(n)
            x = torch.randn(n, requires_grad=True)
            for graph in grl._compiled_graphs(w).values():
                x.grad = None
                graph(x).backward()
                torch.testing.assert_close(x.grad, -grl.LAMBDA * w)


def test_goals_table_calls_slower_only_outside_the_spread():
    from bench import goals

    def t(median, spread=0.05):
        return {"median": median, "p20": median * (1 - spread), "p80": median * (1 + spread)}

    assert goals.compare(t(1.0), t(1.2)) == "faster"
    assert goals.compare(t(1.05), t(1.0)) == "noise"  # 0.9975 <= 1.05: inside the spread
    assert goals.compare(t(1.3), t(1.0)) == "slower"
    grl = {"timing": [
        {"impl": "grl_cuda", "dtype": "float32", "n": 10_000_000, "full": t(2.0), "bwd": t(1.0), "fwd": t(1e-6),
         "bwd_added_s": 0.004},
        {"impl": "best pure PyTorch", "dtype": "float32", "n": 10_000_000, "full": t(3.0), "bwd": t(2.0),
         "fwd": t(0.5e-6)},
        {"impl": "scale into preallocated (out=)", "dtype": "float32", "n": 10_000_000, "ceiling": t(0.0035)},
    ]}
    loss = {"timing": [{"impl": "grl_cuda.domain_bce_with_logits", "n": n, "full": t(1.0)} for n in (10**6, 10**7)]
            + [{"impl": "F.binary_cross_entropy_with_logits + labels", "n": 10**6, "full": t(2.5)},
               {"impl": "F.binary_cross_entropy_with_logits + labels", "n": 10**7, "full": t(3.0)}]}
    text = "\n".join(goals.report({"grl": grl, "loss": loss}))
    assert "slower in 1 (float32 1e7 forward (eager): 1.0 vs 0.5 us)" in text
    assert "float32 88% | met" in text  # 0.0035 / 0.004
    assert "3.00x at 1e7, 2.50x at 1e6 | **missed**" in text  # 4x asked at 1e7
    assert "family `e2e` without --quick" in text  # a goal whose family did not run does not pass
