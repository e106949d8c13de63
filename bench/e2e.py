"""Family 7: end to end. Images/s of a whole DANN training step (forward, backward,
SGD step) on the paper's MNIST and SVHN nets, batch 128 (64 source + 64 target),
with our layers (reversal fused into the domain head's first GEMM, fused loss) vs
each peer's reversal (+ nn.Linear head, BCE-with-logits on built labels), and the
same model with no domain branch (the cost of adaptation).

The pipeline's own step (grl_cuda.pipeline: DANN as the main job runs it, MNIST net,
instance-normalised inputs, 64 + 64 images) eager, with --channels-last, with --compile
and with both: steps/s side by side (compiled cases only in the full run: compiling
takes minutes on a small CPU).

And a pixel-level case where the layer's cost shows: a segmentation-style
per-pixel discriminator (1x1 convs 256 -> 64 -> 1) on a batch of 8 x 256 x 64 x 64
feature maps (8.4M elements through the reversal, 32k logits)."""

import torch
import torch.nn.functional as F
from torch import nn

import grl_cuda
from grl_cuda.pipeline import models

from . import peers
from .harness import Clock, interleaved
from .report import fmt


def _peer_layer(name):
    return peers.layers(1.0)[name]


def dann_step_cases(arch, device):
    torch.manual_seed(0)
    net = models.ARCHITECTURES[arch]().to(device)
    hidden = (100,) if arch == "mnist" else (1024, 1024)
    ours_head = grl_cuda.DomainDiscriminator(net.feature_dim, hidden=hidden, fused_grl=True).to(device)
    plain_head = grl_cuda.DomainDiscriminator(net.feature_dim, hidden=hidden).to(device)
    xs = torch.randn(64, 3, 32, 32, device=device)
    xt = torch.randn(64, 3, 32, 32, device=device)
    ys = torch.randint(0, 10, (64,), device=device)
    opt = torch.optim.SGD(list(net.parameters()) + list(ours_head.parameters()) + list(plain_head.parameters()),
                          lr=1e-4, momentum=0.9)

    def ours():
        f = net.features(torch.cat([xs, xt]))
        loss = F.cross_entropy(net.classifier(net.label_hidden(f[:64])), ys) + \
            grl_cuda.domain_bce_with_logits(ours_head(f), 64)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def peer(layer):
        def step():
            f = net.features(torch.cat([xs, xt]))
            labels = torch.cat([torch.zeros(64, 1, device=device), torch.ones(64, 1, device=device)])
            loss = F.cross_entropy(net.classifier(net.label_hidden(f[:64])), ys) + \
                F.binary_cross_entropy_with_logits(plain_head(layer(f)), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def no_domain_branch():
        f = net.features(xs)
        loss = F.cross_entropy(net.classifier(net.label_hidden(f)), ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cases = {"grl_cuda (fused head + fused loss)": (ours, None)}
    for name in ("fungtion/DANN", "tllib", "pytorch-revgrad", "best pure PyTorch"):
        cases[name] = (peer(_peer_layer(name)), None)
    cases["no domain branch (source only)"] = (no_domain_branch, None)
    return cases


PIPELINE_VARIANTS = {"eager": {}, "--channels-last": {"channels_last": True}, "--compile": {"compile": True},
                     "--compile --channels-last": {"compile": True, "channels_last": True}}


def pipeline_step_cases(device, quick):
    """{variant: (step, None)}: one training step of the pipeline's DANN (loop.step's
    train_step on a fixed batch) per --channels-last/--compile variant, each on its own
    networks built from the same seed, warmed up (compiled) here."""
    from grl_cuda.pipeline.config import Config
    from grl_cuda.pipeline.data import SourceBatch, TargetBatch
    from grl_cuda.pipeline.speed import prepare_networks
    from grl_cuda.pipeline.methods import build_method

    gen = torch.Generator().manual_seed(1)
    xs, xt = (torch.randn(64, 3, 32, 32, generator=gen).to(device) for _ in range(2))
    source = SourceBatch(xs, torch.randint(0, 10, (64,), generator=gen).to(device))
    target = TargetBatch(xt, torch.arange(64, device=device))
    cases = {}
    for name, options in PIPELINE_VARIANTS.items():
        if quick and options.get("compile"):
            continue
        cfg = Config(arch="mnist", method="dann", input_norm="instance", device=str(device), **options)
        torch.manual_seed(0)
        method = build_method(cfg, 10, device, (3, 32, 32))
        prepare_networks(method, cfg)
        method.train(True)

        def step(method=method):
            method.set_lr(0.01)
            method.train_step(source, target, 0.5)
        for _ in range(2):  # compiles the forward and the backward
            step()
        cases[name] = (step, None)
    return cases


def pixel_cases(device, quick):
    torch.manual_seed(0)
    b, c, h, w = (2, 256, 32, 32) if quick else (8, 256, 64, 64)
    feats = torch.randn(b, c, h, w, device=device).requires_grad_()
    disc = nn.Sequential(nn.Conv2d(c, 64, 1), nn.ReLU(), nn.Conv2d(64, 1, 1)).to(device)
    ns = b // 2

    def ours():
        feats.grad = None
        disc.zero_grad(set_to_none=True)
        grl_cuda.domain_bce_with_logits(disc(grl_cuda.grad_reverse(feats, 1.0)), ns).backward()

    def peer(layer):
        def step():
            feats.grad = None
            disc.zero_grad(set_to_none=True)
            logits = disc(layer(feats))
            labels = torch.cat([torch.zeros(ns, 1, h, w, device=device), torch.ones(b - ns, 1, h, w, device=device)])
            F.binary_cross_entropy_with_logits(logits, labels).backward()
        return step

    cases = {"grl_cuda (reversal + fused loss)": (ours, None)}
    for name in ("fungtion/DANN", "tllib", "pytorch-revgrad", "best pure PyTorch"):
        cases[name] = (peer(_peer_layer(name)), None)
    return cases, (b, c, h, w)


def run(device, quick):
    clock = Clock(device)
    rows = []
    for arch in (("mnist",) if quick else ("mnist", "svhn")):
        reps = 4 if quick else (15 if arch == "mnist" else 5)
        t = interleaved(dann_step_cases(arch, device), clock, reps, 1, warmup=1)
        for name, v in t.items():
            images = 64 if name.startswith("no domain") else 128
            rows.append({"case": f"DANN step, paper {arch} net, batch 128", "impl": name, "full": v,
                         "images_per_s": images / v["median"]})
    t = interleaved(pipeline_step_cases(device, quick), clock, 4 if quick else 21, 1, warmup=1)
    for name, v in t.items():
        rows.append({"case": "pipeline DANN step (mnist net, --input-norm instance, 64 + 64)", "impl": name, "full": v,
                     "images_per_s": 128 / v["median"], "steps_per_s": 1.0 / v["median"],
                     "vs_eager": t["eager"]["median"] / v["median"]})
    cases, shape = pixel_cases(device, quick)
    t = interleaved(cases, clock, 3 if quick else 9, 1, warmup=1)
    for name, v in t.items():
        rows.append({"case": f"per-pixel discriminator, features {'x'.join(map(str, shape))}", "impl": name,
                     "full": v, "images_per_s": shape[0] / v["median"]})
    return {"timing": rows}


def _table(rows):
    lines = ["### End to end", "", "| case | implementation | time per step | images/s |", "|---|---|---|---|"]
    for r in rows:
        if "steps_per_s" not in r:
            lines.append(f"| {r['case']} | {r['impl']} | {fmt(r['full']['median'])} | {r['images_per_s']:.0f} |")
    steps = [r for r in rows if "steps_per_s" in r]
    if steps:
        lines += ["", f"### {steps[0]['case']}", "", "| variant | time per step | steps/s | vs eager |",
                  "|---|---|---|---|"]
        for r in steps:
            lines.append(f"| {r['impl']} | {fmt(r['full']['median'])} | {r['steps_per_s']:.2f} | "
                         f"{r['vs_eager']:.2f}x |")
    return "\n".join(lines)


# ---- plots -------------------------------------------------------------------------------------


TITLE = "7. End to end"


def report(res, out_dir):
    return [_table(res["timing"]), ""], []
