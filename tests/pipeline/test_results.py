"""python -m grl_cuda.results: the grid, its table, and reuse of finished runs."""

import json
import os

import pytest


@pytest.mark.slow
def test_results_grid_table_and_reuse(tmp_path, data_dir):
    from grl_cuda.pipeline import results

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


def test_recommended_row_trains_the_recommended_configuration(tmp_path, monkeypatch):
    from grl_cuda.pipeline import config, results

    seen = []
    monkeypatch.setattr(results, "fit", lambda cfg, progress: seen.append(cfg) or {"target_test_acc": 0.5})
    args = results.build_parser().parse_args(["--out", str(tmp_path), "--input-norm", "none", "--ema", "0"])
    results.run_one(args, "mnist-mnistm", "recommended", 2)
    results.run_one(args, "mnist-mnistm", "dann", 2)
    rec, dann = seen
    for name, value in config.RECOMMENDED.items():
        assert getattr(rec, name) == value  # the preset wins over the grid's options
    assert rec.seed == 2 and rec.out.endswith(os.path.join("mnist-mnistm", "recommended", "seed2"))
    assert dann.input_norm == "none" and dann.ema == 0 and dann.method == "dann"
    from grl_cuda.pipeline.cli import flag_of

    preset = [a for k, v in config.RECOMMENDED.items() if k != "method" for a in (flag_of(k), str(v))]
    same = results.build_parser().parse_args(["--out", str(tmp_path), *preset])  # the grid runs the preset
    results.run_one(same, "mnist-mnistm", "recommended", 0)
    assert seen[-1].out == results.run_dir(str(tmp_path), "mnist-mnistm", config.RECOMMENDED["method"], 0)
    with pytest.raises(config.UserError, match="recommended"):
        results.grid(results.build_parser().parse_args(["--methods", "dan"]))


def test_per_seed_gaps_show_a_seed_where_the_method_hurts():
    from grl_cuda.pipeline.results import per_seed_gaps

    runs = {"t": {"source-only": [0.5, 0.6, 0.5], "target-only": [0.9, 0.9, 0.7], "dann": [0.7, 0.55, 0.6]}}
    text = per_seed_gaps(runs, ["t"], ["source-only", "dann", "target-only"])
    # each seed against its own bounds: (0.7-0.5)/0.4, (0.55-0.6)/0.3, (0.6-0.5)/0.2
    assert "| dann | 50.0% / -16.7% / 50.0% (2/3 > 0) |" in text
    assert "source-only |" not in text and "target-only |" not in text


def test_table_only_trains_nothing_and_counts_the_seeds_it_has(tmp_path, monkeypatch):
    from grl_cuda.pipeline import config, results

    monkeypatch.setattr(results, "fit", lambda cfg, progress: pytest.fail("--table-only trained"))
    args = results.build_parser().parse_args(["--out", str(tmp_path), "--table-only", "--seeds", "3"])
    assert results.run_one(args, "mnist-mnistm", "dann", 0) is None  # nothing finished: no run, no table cell

    accuracy = {("source-only", 0): 0.5, ("source-only", 1): 0.6, ("source-only", 2): 0.4,
                ("target-only", 0): 0.9, ("target-only", 1): 1.0, ("target-only", 2): 0.8,
                ("dann", 0): 0.7, ("dann", 2): 0.6}  # dann's seed 1 not finished

    def finished(args, task, method, seed, k=0):
        acc = accuracy.get((method, seed))
        return None if acc is None else {"target_test_acc": acc, "source_test_acc": 0.99}

    monkeypatch.setattr(results, "run_one", finished)
    args = results.build_parser().parse_args(["--out", str(tmp_path), "--table-only", "--seeds", "3",
                                              "--methods", "target-only,dann,source-only,recommended,mcc"])
    tasks, methods = results.grid(args)
    assert methods == ["source-only", "dann", "mcc", "recommended", "target-only"]  # the bounds and our pick last
    res, records = results.run_grid(args, tasks, methods)
    assert res[0]["mnist-mnistm"]["dann"] == [0.7, None, 0.6]
    text = results.write_report(args, tasks, methods, res, records)
    # against the bounds of the same seeds 0 and 2: (0.65 - 0.45) / (0.85 - 0.45), as the per-seed row
    assert "| dann | 0.6500 ± 0.0707 (2 of 3 seeds) (50.0%) [paper" in text
    assert "| mcc | - |" in text
    # per seed, each against its own seed's bounds: seeds 0 and 2 (50.0%, 50.0%), seed 1 skipped, not shifted
    assert "| dann | 50.0% / 50.0% (2/2 > 0) |" in text
    with pytest.raises(config.UserError, match="--table-only"):
        results.grid(results.build_parser().parse_args(["--table-only", "--rerun"]))


def test_speed_options_reach_the_runs_and_do_not_redefine_them(tmp_path, monkeypatch):
    from grl_cuda.pipeline import results

    seen = []
    monkeypatch.setattr(results, "fit", lambda cfg, progress: seen.append(cfg) or {"target_test_acc": 0.5})
    args = results.build_parser().parse_args(["--out", str(tmp_path), "--compile", "--channels-last", "--threads", "1"])
    resets = []
    monkeypatch.setattr(results.speed, "reset_compiled", lambda: resets.append(1))
    results.run_one(args, "mnist-mnistm", "dann", 0)
    results.run_one(args, "mnist-mnistm", "dann", 1)
    assert seen[0].compile and seen[0].channels_last and seen[0].threads == 1
    assert len(resets) == 2  # each --compile run starts without the earlier runs' compiled versions
    from grl_cuda.pipeline.config import RUN_DEFINING

    assert not set(results.SPEED_OPTIONS) & set(RUN_DEFINING)  # a finished eager run is reused under --compile
