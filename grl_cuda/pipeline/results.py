"""Runs a grid of (task, method, seed) trainings and writes a table shaped like the
paper's Table 1: source only, SA, DANN (and CGDM, MCD), train on target, and the
gap each method covers: (method - source only) / (target only - source only).

    python -m grl_cuda.results --tasks mnist-mnistm --methods source-only,sa,dann,target-only --seeds 3 --out results/

Finished runs (their summary.json) are reused, so an interrupted grid continues
where it stopped; `--table-only` writes the table from the finished runs alone
(a cell with fewer seeds than asked says how many it has). `sa` is computed on the source-only run of the same seed.
`--target-labeled 0,1,5,10` adds the semi-supervised setting: each method that
supports it runs with K labeled target samples per class, and a second table has a
column per K.
Writes results.md, results.json and tsne_before_after.png (source-only vs DANN
features, seed 0) to --out.
"""

import argparse
import json
import os
import statistics
import sys

from . import data as data_mod
from . import speed
from .cli import add_option
from .config import RECOMMENDED, Config, UserError, same_run
from .loop import fit
from .methods import METHODS
from .runs import CHECKPOINT, finished_config

PAPER_ORDER = ["source-only", "sa", "dann", "dann-dsbn", "mcd", "cgdm", "recommended", "target-only"]
# Options every run of the grid gets from the command line (as grl_cuda.train has them).
PASSED_ON = ("lr", "lambda_max", "normalize", "shift", "ema", "input_norm", "arch", "optimizer", "rollback",
             "rollback_collapse", "invert", "mcc_weight")
# How the runs execute, not what they compute (not run-defining: a finished run is reused under any of them).
SPEED_OPTIONS = ("data_dir", "device", "threads", "compile", "channels_last")
# Published target accuracies (Ganin & Lempitsky, arXiv v1 Table 1) for the shifts we rebuild.
PAPER = {
    "mnist-mnistm": {"source-only": 0.5749, "sa": 0.6078, "dann": 0.8149, "target-only": 0.9891},
    "mnist-mnist_d": {"source-only": 0.9678, "sa": 0.9702, "dann": 0.9830, "target-only": 0.9878},
    "mnist-mnist_maxbg": {"source-only": 0.9173, "sa": 0.9197, "dann": 0.9476, "target-only": 0.9848},
}


def run_dir(out, task, method, seed, k=0):
    return os.path.join(out, "runs", task, f"{method}+k{k}" if k else method, f"seed{seed}")


def trained_method(row):
    """The method a row's run trains: SA rides on source only, "recommended" is RECOMMENDED's."""
    return {"sa": "source-only", "recommended": RECOMMENDED["method"]}.get(row, row)


def run_one(args, task, method, seed, k=0):
    """One cell's run: ``method``'s with K = ``k`` labeled target samples per class, or
    for the "recommended" row the pipeline's recommended configuration
    (config.RECOMMENDED over the grid's options)."""
    trained_as = trained_method(method)
    options = {name: getattr(args, name) for name in PASSED_ON}
    folder = run_dir(args.out, task, "recommended" if method == "recommended" else trained_as, seed, k)
    if method == "recommended":
        preset = {name: value for name, value in RECOMMENDED.items() if name != "method"}
        if all(options.get(name) == value for name, value in preset.items()):  # the grid's own options: its row's run
            folder = run_dir(args.out, task, trained_as, seed, k)
        options.update(preset)
    cfg = Config(task=task, method=trained_as, steps=args.steps, seed=seed, out=folder,
                 eval_every=max(args.steps // 4, 1), ckpt_every=max(args.steps // 4, 1), plots=not args.no_plots,
                 target_labeled=k, **{name: getattr(args, name) for name in SPEED_OPTIONS}, **options)
    done = finished_config(folder)
    if done is not None and not args.rerun and same_run(done, cfg, before_fit=True):
        with open(os.path.join(folder, "summary.json")) as f:
            return json.load(f)  # the same run (up to options this method never reads), finished earlier
    if args.table_only:
        return None
    if cfg.compile:
        speed.reset_compiled()  # the earlier runs' compiled networks are done with
    if os.path.exists(os.path.join(folder, CHECKPOINT)) and not args.rerun:
        cfg.resume = True
        try:
            return fit(cfg, progress=not args.quiet)
        except UserError:
            cfg.resume = False  # a checkpoint of other settings: start over
    return fit(cfg, progress=not args.quiet)


def accuracy_of(summary, method):
    return summary["sa"]["target_test_acc"] if method == "sa" else summary["target_test_acc"]


def mean_std(values):
    values = [v for v in values if v is not None]  # None: a seed not run (--table-only)
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def accuracy_cell(values, seeds):
    """"mean ± std" of a cell's accuracies (no spread from one seed), saying how many of the
    ``seeds`` it has when some did not run; "-" when none did."""
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    done = sum(v is not None for v in values)
    cell = f"{mean:.4f} ± {std:.4f}" if done > 1 else f"{mean:.4f}"
    return cell + (f" ({done} of {seeds} seeds)" if done < seeds else "")


def bounds_of_seeds(task_results, values):
    """(source only, target only) means over the seeds where ``values`` has a run (None: not
    run), so that a cell short of seeds is measured against the bounds of its own seeds."""
    def mean_at(name):
        bound = task_results.get(name, [])
        return mean_std([b for v, b in zip(values, bound) if v is not None])[0]
    return mean_at("source-only"), mean_at("target-only")


def table(results, tasks, methods, seeds):
    header = "| method | " + " | ".join(tasks) + " |"
    lines = [header, "|---" * (len(tasks) + 1) + "|"]
    for method in methods:
        cells = []
        for task in tasks:
            mean = mean_std(results[task].get(method, []))[0]
            if mean is None:
                cells.append("-")
                continue
            cell = accuracy_cell(results[task][method], seeds)
            so, to = bounds_of_seeds(results[task], results[task][method])
            if method not in ("source-only", "target-only") and so is not None and to is not None and to != so:
                cell += f" ({100 * (mean - so) / (to - so):.1f}%)"
            paper = PAPER.get(task, {}).get(method)
            if paper is not None:
                cell += f" [paper {paper:.4f}]"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_by_k(results_k, task, methods, ks, seeds):
    """Semi-supervised: a row per method, a column per K (labeled target samples per class)."""
    lines = ["| method | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method in methods:
        cells = []
        for k in ks:
            cells.append(accuracy_cell(results_k.get(k, {}).get(task, {}).get(method, []), seeds))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m grl_cuda.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mnist-mnistm", help=f"comma list or 'all' ({', '.join(data_mod.TASKS)})")
    parser.add_argument("--methods", default="source-only,sa,dann,target-only", help="comma list; \"recommended\" is the pipeline's recommended configuration (config.RECOMMENDED)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--target-labeled", default="0", help="comma list of K (labeled target samples per "
                        "class), e.g. 0,1,5,10; K > 0 runs the methods that support it")
    for name in PASSED_ON:  # passed on to every run, as grl_cuda.train has them
        add_option(parser, name)
    parser.add_argument("--out", default="results")
    for name in SPEED_OPTIONS:
        add_option(parser, name)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--rerun", action="store_true", help="ignore finished runs")
    parser.add_argument("--table-only", action="store_true", help="train nothing: the table of the runs finished "
                        "in --out (a cell with fewer seeds than --seeds says how many it has)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def per_seed_gaps(results, tasks, methods):
    """The gap each method covers on each seed, against that seed's own bounds: whether
    a method helps on *every* seed, which a gap of means can hide."""
    rows = [m for m in methods if m not in ("source-only", "target-only")]
    lines = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for method in rows:
        cells = []
        for task in tasks:
            accs, so, to = (results[task].get(m, []) for m in (method, "source-only", "target-only"))
            gaps = [100 * (a - s) / (t - s) for a, s, t in zip(accs, so, to) if None not in (a, s, t) and t != s]
            cells.append(" / ".join(f"{g:.1f}%" for g in gaps) + f" ({sum(g > 0 for g in gaps)}/{len(gaps)} > 0)"
                         if gaps else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid(args):
    """(tasks, methods in the paper's order) asked for; UserError names an unknown one."""
    tasks = list(data_mod.TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",")]
    try:
        args.ks = sorted({int(k) for k in args.target_labeled.split(",")})
    except ValueError:
        raise UserError(f"--target-labeled {args.target_labeled!r}: a comma list of integers, e.g. 0,1,5,10") from None
    if args.ks[0] < 0:
        raise UserError(f"--target-labeled {args.target_labeled!r}: K must be >= 0")
    if args.table_only and args.rerun:
        raise UserError("--table-only reads the finished runs and --rerun ignores them: give one of the two")
    methods = [m.strip() for m in args.methods.split(",")]
    for t in tasks:
        if t not in data_mod.TASKS:
            raise UserError(f"unknown task {t!r}; choose from {', '.join(data_mod.TASKS)}")
    for m in methods:
        if m not in METHODS and m != "recommended":
            raise UserError(f"unknown method {m!r}; choose from {', '.join(sorted(METHODS))} or recommended")
    last = ("recommended", "target-only")  # the bounds and our pick close the table, other methods before them
    ordered = [m for m in PAPER_ORDER if m in methods and m not in last] + [m for m in methods if m not in PAPER_ORDER]
    return tasks, ordered + [m for m in last if m in methods]


def run_grid(args, tasks, methods):
    """({K: {task: {method: [accuracy per seed]}}}, one record a run); None if interrupted."""
    results = {k: {t: {} for t in tasks} for k in args.ks}
    records = []
    for task in tasks:
        for seed in range(args.seeds):
            for k in args.ks:
                for method in methods:
                    if k and not METHODS[trained_method(method)].supports_target_labeled:
                        continue
                    summary = run_one(args, task, method, seed, k)
                    if summary is None:  # --table-only, and this run is not finished
                        results[k][task].setdefault(method, []).append(None)
                        continue
                    if summary.get("interrupted"):
                        return None, None
                    acc = accuracy_of(summary, method)
                    results[k][task].setdefault(method, []).append(acc)
                    records.append(_record(task, method, seed, k, acc, summary))
    return results, records


def _record(task, method, seed, k, acc, summary):
    return {"task": task, "method": method, "seed": seed, "target_labeled": k, "target_test_acc": acc,
            "source_test_acc": summary["source_test_acc"], "proxy_a_distance": summary.get("proxy_a_distance"),
            "sa_components": summary["sa"]["components"] if method == "sa" else None,
            "train_seconds": summary.get("train_seconds")}


def write_report(args, tasks, methods, results, records):
    """results.md and results.json in --out; returns the Markdown."""
    spread = f"mean ± std over {args.seeds} seeds" if args.seeds > 1 else "one seed"
    md = [f"# Target test accuracy, {spread}, {args.steps} steps",
          "", "In brackets: gap covered = (method - source only) / (target only - source only); "
          "[paper]: Ganin & Lempitsky, arXiv v1 Table 1, where the paper has that shift.", "",
          table(results[0] if 0 in results else {t: {} for t in tasks}, tasks, methods, args.seeds), ""]
    if args.seeds > 1 and 0 in results:
        md += ["Gap covered on each seed (seeds 0, 1, ...; each against the same seed's source only and train on "
               "target), and on how many seeds it is positive:", "", per_seed_gaps(results[0], tasks, methods), ""]
    if args.ks != [0]:
        for task in tasks:
            md += [f"## Semi-supervised, `{task}`: target test accuracy with K labeled target train samples per "
                   "class (the K rows of each seed: `target_labeled_rows` in the run's summary.json)", "",
                   table_by_k(results, task, methods, args.ks, args.seeds), ""]
    sizes = {t: data_mod.TASKS[t][1] for t in tasks}
    options = {name: getattr(args, name) for name in PASSED_ON}
    md += ["Data: " + "; ".join(f"`{t}`: {d}" for t, d in sizes.items()), "",
           "Options: " + ", ".join(f"{k} = {v}" for k, v in options.items()) + " (other options: the defaults; "
           f"the recommended row: {', '.join(f'{k} = {v}' for k, v in RECOMMENDED.items())} over these)", ""]
    text = "\n".join(md)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"steps": args.steps, "seeds": args.seeds, "target_labeled": args.ks, "options": options,
                   "speed_options": {name: getattr(args, name) for name in ("compile", "channels_last", "threads")},
                   "runs": records}, f, indent=2)
    return text


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        tasks, methods = grid(args)
    except UserError as exc:
        print(f"grl_cuda.results: error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    results, records = run_grid(args, tasks, methods)
    if results is None:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    text = write_report(args, tasks, methods, results, records)
    adapted = [m for m in ("dann", "dann-dsbn") if m in methods]
    if not args.no_plots and "source-only" in methods and adapted and 0 in args.ks:
        tsne_before_after(args, tasks[0], ["source-only", *adapted])
    print(text)
    return 0


def tsne_before_after(args, task, methods):
    """The paper's Figure 4: features of the source-only model vs the DANN model(s), seed 0."""
    import torch

    from . import diagnostics
    from .data import to_tensors
    from .runs import load_run

    panels = []
    for method in methods:
        cfg, t, m = load_run(run_dir(args.out, task, method, 0), args.data_dir)
        tensors = to_tensors(t, torch.device("cpu"), normalize=cfg.normalize)
        fs = diagnostics.embed_all(m, tensors["source_test"][0], data_mod.source_rows(tensors, "source_test"))
        ft = diagnostics.embed_all(m, tensors["target_test"][0], "target")
        panels.append((f"{method}: d_A = {diagnostics.proxy_a_distance(fs, ft):.2f}", fs, ft))
    diagnostics.plot_tsne(panels, os.path.join(args.out, "tsne_before_after.png"))


if __name__ == "__main__":
    sys.exit(main())
