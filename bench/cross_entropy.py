"""Family 8: the fused K-way domain loss (multi-source DANN) vs PyTorch's
F.cross_entropy on the same (N, K) logits and int64 domain ids, forward+backward."""

import torch
import torch.nn.functional as F

import grl_cuda

from .harness import Clock, interleaved
from .report import ratio_report

TITLE = "8. Fused K-way domain loss, forward+backward"


def run(device, quick):
    clock = Clock(device)
    shapes = ((256, 4), (65536, 4)) if quick else ((256, 3), (4096, 3), (65536, 4), (1_000_000, 4), (262144, 16))
    rows = []
    for n, k in shapes:
        z = torch.randn(n, k, device=device).requires_grad_()
        domains = torch.randint(0, k, (n,), device=device)

        def ours():
            z.grad = None
            grl_cuda.domain_cross_entropy(z, domains).backward()

        def torch_cross_entropy():
            z.grad = None
            F.cross_entropy(z, domains).backward()

        cases = {"grl_cuda.domain_cross_entropy": (ours, None), "F.cross_entropy": (torch_cross_entropy, None)}
        if n * k <= 1e5:
            reps, inner = (8, 20) if quick else (25, 30)
        else:
            reps, inner = (4, 1) if quick else (9, 2)
        for name, v in interleaved(cases, clock, reps, inner).items():
            rows.append({"impl": name, "shape": f"{n} x {k}", "full": v})
    return {"timing": rows}


def report(res, out_dir):
    return ratio_report(res, out_dir, key_col="shape", ours="grl_cuda.domain_cross_entropy",
                        title="K-way domain cross-entropy forward+backward (N rows x K domains)", col_name="N x K",
                        plot_title="K-way domain loss forward+backward", plot_name="cross_entropy.png")
