"""Family 6: GradientReversalLinear (the reversal folded into the input-gradient
GEMM) vs GradientReversal + nn.Linear, and vs a plain nn.Linear (no reversal),
forward+backward at the paper's head sizes."""

import torch
from torch import nn

import grl_cuda

from .harness import Clock, interleaved
from .report import ratio_report

TITLE = "6. GradientReversalLinear"

SHAPES = [  # (batch, in, out, where)
    (128, 1200, 100, "MNIST domain head, first layer"),
    (128, 1152, 1024, "SVHN head (issue's reference size)"),
    (128, 6272, 1024, "SVHN domain head, first layer"),
    (256, 256, 1024, "Office head (256-d bottleneck)"),
]


def run(device, quick):
    clock = Clock(device)
    rows = []
    for batch, d_in, d_out, where in (SHAPES[:2] if quick else SHAPES):
        torch.manual_seed(0)
        fused = grl_cuda.GradientReversalLinear(d_in, d_out, lambda_=0.7).to(device)
        unfused = nn.Sequential(grl_cuda.GradientReversal(0.7), nn.Linear(d_in, d_out)).to(device)
        plain = nn.Linear(d_in, d_out).to(device)
        x = torch.randn(batch, d_in, device=device).requires_grad_()
        g = torch.randn(batch, d_out, device=device)

        def step(module):
            def run():
                x.grad = None
                for p in module.parameters():
                    p.grad = None
                module(x).backward(g)
            return run

        cases = {"GradientReversalLinear": (step(fused), None),
                 "GradientReversal + nn.Linear": (step(unfused), None),
                 "nn.Linear (no reversal)": (step(plain), None)}
        reps, inner = (6, 10) if quick else (25, 20)
        t = interleaved(cases, clock, reps, inner)
        for name, v in t.items():
            rows.append({"impl": name, "shape": f"{batch}x{d_in}->{d_out}", "where": where, "full": v})
    return {"timing": rows}


def report(res, out_dir):
    return ratio_report(res, out_dir, key_col="shape", ours="GradientReversalLinear",
                        title="forward+backward of one head layer", col_name="batch x in -> out",
                        plot_title="reversal + linear forward+backward", plot_name="linear.png")
