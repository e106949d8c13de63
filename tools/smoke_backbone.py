"""A smoke check of the ImageFolder + --backbone path, end to end through the CLI,
on tiny synthetic ImageFolders (not a result: random ResNet weights, a few dozen
images, a few dozen steps). What it shows: the runs finish, accuracies are
computed on the target test folder, and DANN's numbers come out beside source only.

    python tools/smoke_backbone.py [--out /tmp/smoke_backbone] [--steps 40] [--image-size 64]

Prints reverse validation's table of both runs (the reverse model trains on the runs' own
images, at --image-size) and a Markdown table of test accuracies per method.
"""

import argparse
import json
import os
import sys

import numpy as np


def image_folder(root, seed, classes=("bar", "cross", "ring"), per_class=20, brightness=0):
    """Grey-noise images with a class-dependent bright shape; ``brightness`` shifts the
    background, which is the domain shift between source and target."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(0, 90, (48, 48, 3), dtype=np.uint8) + brightness
            im = Image.fromarray(noise.astype(np.uint8))
            draw = ImageDraw.Draw(im)
            x, y = (int(v) for v in rng.integers(8, 20, 2))
            if c == 0:
                draw.rectangle([x, y, x + 20, y + 5], fill=(250, 250, 250))
            elif c == 1:
                draw.line([x, y, x + 18, y + 18], fill=(250, 250, 250), width=4)
                draw.line([x, y + 18, x + 18, y], fill=(250, 250, 250), width=4)
            else:
                draw.ellipse([x, y, x + 18, y + 18], outline=(250, 250, 250), width=4)
            im.save(os.path.join(root, name, f"{i}.png"))
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/smoke_backbone")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    import torchvision

    from grl_cuda.pipeline.cli import main as train

    data = os.path.join(args.out, "data")
    s = image_folder(os.path.join(data, "source"), 0)
    t = image_folder(os.path.join(data, "target"), 1, brightness=120)
    tt = image_folder(os.path.join(data, "target_test"), 2, brightness=120)
    weights = os.path.join(args.out, "resnet18_random.pt")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # torchvision's layout, random values
    rows = []
    for method in ("source-only", "dann"):
        out = os.path.join(args.out, "runs", method)
        code = train(["--source", s, "--target", t, "--target-test", tt, "--backbone", "resnet18",
                      "--weights", weights, "--image-size", str(args.image_size), "--method", method,
                      "--steps", str(args.steps), "--batch-size", "8", "--eval-every", str(args.steps),
                      "--threads", str(args.threads), "--no-plots", "--out", out])
        if code:
            return code
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        rows.append((method, summary["source_test_acc"], summary["target_test_acc"], summary.get("train_seconds")))
    # reverse validation of both runs: the reverse model trains on the runs' own images at --image-size
    from grl_cuda.pipeline.reverse_validation import main as reverse_validation

    code = reverse_validation([os.path.join(args.out, "runs", m) for m, *_ in rows] + ["--threads", str(args.threads),
                                                                                      "--quiet"])
    if code:
        return code
    print(f"\n| method (smoke check, resnet18 random weights, {args.steps} steps, {args.image_size}px) "
          "| source test acc | target test acc | train seconds |")
    print("|---|---|---|---|")
    for method, src, tgt, sec in rows:
        print(f"| {method} | {src:.3f} | {tgt:.3f} | {sec if sec is None else round(sec)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
