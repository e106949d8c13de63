"""Family 5: the fused domain loss vs PyTorch's ways of computing the same loss,
forward+backward: F.binary_cross_entropy_with_logits with a label tensor built
each step (what a training loop does), and sigmoid + BCELoss (tllib's way)."""

import torch
import torch.nn.functional as F

import grl_cuda

from .harness import Clock, interleaved
from .report import ratio_report

TITLE = "5. Fused domain loss, forward+backward"


def run(device, quick):
    clock = Clock(device)
    sizes = (64, 4096, 1_000_000) if quick else (64, 512, 4096, 65536, 1_000_000, 10_000_000)
    rows = []
    for n in sizes:
        z = torch.randn(n, 1, device=device).requires_grad_()
        ns = n // 2

        def labels():
            return torch.cat([torch.zeros(ns, 1, device=device), torch.ones(n - ns, 1, device=device)])

        def ours():
            z.grad = None
            grl_cuda.domain_bce_with_logits(z, ns).backward()

        def torch_bce():
            z.grad = None
            F.binary_cross_entropy_with_logits(z, labels()).backward()

        def sigmoid_bce():
            z.grad = None
            F.binary_cross_entropy(torch.sigmoid(z), labels()).backward()

        cases = {"grl_cuda.domain_bce_with_logits": (ours, None),
                 "F.binary_cross_entropy_with_logits + labels": (torch_bce, None),
                 "sigmoid + BCELoss (tllib)": (sigmoid_bce, None)}
        if n <= 4096:
            reps, inner = (8, 20) if quick else (25, 50)
        elif n <= 1_000_000:
            reps, inner = (5, 2) if quick else (15, 3)
        else:
            reps, inner = (3, 1) if quick else (7, 1)
        t = interleaved(cases, clock, reps, inner)
        for name, v in t.items():
            rows.append({"impl": name, "n": n, "full": v})
    return {"timing": rows}


def report(res, out_dir):
    return ratio_report(res, out_dir, key_col="n", ours="grl_cuda.domain_bce_with_logits",
                        title="Domain BCE forward+backward (N logits, half source half target)", col_name="N",
                        plot_title="domain loss forward+backward", plot_name="loss.png")
