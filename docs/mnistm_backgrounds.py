"""Where DANN gains on the embedded MNIST -> MNIST-M: target test accuracy split by
the background's brightness (MNIST-M is |photo patch - digit|, so on a bright patch
the digit comes out dark: the polarity of the source digits is inverted).

    python docs/mnistm_backgrounds.py --runs results/runs/mnist-mnistm --seeds 3

`--runs` is the `runs/<task>` folder that `python -m grl_cuda.results` wrote.
"""

import argparse
import os

import numpy as np
import torch

from grl_cuda.pipeline import data
from grl_cuda.pipeline.data import to_tensors
from grl_cuda.pipeline.runs import load_run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="source-only,dann,target-only", help="comma list, e.g. add dann-dsbn")
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    task = data.load_task("mnist-mnistm", args.data_dir)
    pixels = task.target_test.x.astype(np.float64)
    border = np.concatenate([pixels[:, :3].reshape(len(pixels), -1), pixels[:, -3:].reshape(len(pixels), -1)], 1)
    bright = torch.from_numpy(border.mean(1) > 127)  # top and bottom 3 rows: background only
    print(f"target test images: {int((~bright).sum())} on a dark background, {int(bright.sum())} on a bright one")
    target_test = {}  # by normalisation: every run of a grid normally shares one
    for method in args.methods.split(","):
        accs = []
        for seed in range(args.seeds):
            cfg, _, m = load_run(os.path.join(args.runs, method, f"seed{seed}"), args.data_dir)
            if cfg.normalize not in target_test:
                target_test[cfg.normalize] = to_tensors(task, torch.device("cpu"), normalize=cfg.normalize)["target_test"]
            x, y = target_test[cfg.normalize]
            with torch.no_grad():
                correct = (m.predict(x, "target").argmax(1) == y).float()
            accs.append((correct[~bright].mean().item(), correct[bright].mean().item()))
        dark, light = np.array(accs).mean(0)
        print(f"{method:12s} dark background {dark:.3f}   bright background {light:.3f}   (mean of {args.seeds} seeds)")


if __name__ == "__main__":
    main()
