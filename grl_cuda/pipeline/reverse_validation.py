"""Reverse validation (Zhong et al., ECML-PKDD 2010): how the DANN paper chose its
hyper-parameters without target labels. For each finished run (a model trained on
labeled source and unlabeled target):

1. label the target train images with the run's own predictions;
2. train a *reverse* model, same method and options, with those pseudo-labeled target
   images as its source and the source train images as its unlabeled target;
3. score the run by the reverse model's accuracy on the held-out, labeled source test
   images.

No target label is read anywhere. Higher is better; compare runs that differ only in
the option being chosen (say, --lambda-max):

    python -m grl_cuda.reverse_validation runs/lam0.3 runs/lam1

The reverse run is written to <run>/reverse/ and reused when it is already there.
"""

import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import torch

from .config import UserError, same_run
from .data import to_tensors
from .evaluate import predicted_classes
from .loop import fit
from .runs import finished_config, load_run


def reverse_validate(run, data_dir=None, steps=None, threads=None, progress=True):
    """The reverse-validation score of a finished run (see the module's doc)."""
    cfg, task, method = load_run(run, data_dir)
    if method.uses_target_labels:
        raise UserError(f"{run}: {cfg.method} trains on target labels; reverse validation is for methods that do not")
    if cfg.init_from:  # the reverse run retrains the run's procedure, and this one began in another run
        raise UserError(f"{run} started from the weights of {cfg.init_from} (--init-from): reverse validation "
                        "retrains a run's procedure from scratch, which that run is not; score the run it started "
                        "from, or train this configuration in one run")
    folder = os.path.join(os.path.normpath(run), "reverse")
    target_train = to_tensors(task, torch.device("cpu"), normalize=cfg.normalize)["target_train"][0]
    labels = predicted_classes(method, target_train, "target")
    files = {"source": (task.target_train.x, labels.numpy()),  # the run's target, labeled by the run
             "target": (task.source_train.x, task.source_train.y),  # its labels reach only logged diagnostics
             "target_test": (task.source_test.x, task.source_test.y)}
    # The reverse run reads these images at the run's own size (an ImageFolder run's, 224x224 by
    # default with --backbone), not at the 32x32 that .npz images default to.
    size = None if task.vectors else task.image_shape[0]
    reverse_cfg = dataclasses.replace(
        cfg, **{name: os.path.join(folder, f"{name}.npz") for name in files}, out=folder,
        image_size=cfg.image_size if size in (None, 32) else size,
        steps=steps or cfg.steps, threads=threads or cfg.threads, resume=False, plots=False, stop_after=None,
        target_labeled=0)  # the reverse target is the source: no labels of it are read
    summary_path = os.path.join(folder, "summary.json")
    summary = None
    done = finished_config(folder)
    if done is not None and same_run(done, reverse_cfg, before_fit=True):
        with open(summary_path) as f:
            summary = json.load(f)
        if summary.get("pseudo_labels") != labels.tolist():
            summary = None  # the run's model has changed since: another reverse run
    if summary is None:
        os.makedirs(folder, exist_ok=True)
        for name, (x, y) in files.items():
            np.savez(os.path.join(folder, f"{name}.npz"), x=x, y=y)
        summary = fit(reverse_cfg, progress=progress)
        if summary.get("interrupted"):
            raise UserError(f"interrupted; the reverse run of {run} did not finish")
        summary["pseudo_labels"] = labels.tolist()
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    return {"run": run, "method": cfg.method, "lambda_max": cfg.lambda_max, "steps": cfg.steps,
            "score": summary["target_test_acc"],
            "pseudo_label_classes": int(len(set(labels.tolist())))}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m grl_cuda.reverse_validation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run folders (--out of grl_cuda.train)")
    parser.add_argument("--steps", type=int, help="steps of each reverse run (default: the run's own)")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    rows = []
    try:
        for run in args.runs:
            rows.append(reverse_validate(run, args.data_dir, args.steps, args.threads, progress=not args.quiet))
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"grl_cuda.reverse_validation: error: {exc}", file=sys.stderr)
        return 2
    best = max(rows, key=lambda r: r["score"])
    print("| run | method | lambda_max | steps | reverse-validation score | classes among pseudo labels |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mark = " **(best)**" if r is best and len(rows) > 1 else ""
        print(f"| {r['run']} | {r['method']} | {r['lambda_max']} | {r['steps']} | {r['score']:.4f}{mark} | "
              f"{r['pseudo_label_classes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
