"""Family 9: GPU bandwidth. With --device cuda: the achieved GB/s of the reversal (in
place, as the backward runs it when it owns the gradient, and into a fresh output) and
of the fused losses' forward, against the device's published peak and against a
device-to-device copy measured in the same run. Beside them, for every case, the
roofline prediction for an H100 and an H200: these kernels do O(1) flops per byte, so
their time is the bytes they must move divided by the memory bandwidth. On a CPU only
the predictions are written (the measured columns say why they are empty)."""

import torch

import grl_cuda

from .harness import Clock, interleaved
from .report import fmt, size_label

TITLE = "9. GPU bandwidth and roofline"

# Published HBM bandwidth, GB/s (NVIDIA's data sheets). Longer names first: the
# first name found in torch.cuda.get_device_name() wins.
PEAK_GBPS = {"H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H200": 4800.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
             "A100-PCIE-40GB": 1555.0, "A100": 1555.0, "L40S": 864.0, "L4": 300.0}
ROOFLINE_DEVICES = ("H100", "H200")  # predictions written for these (H100: the SXM part)


def device_peak_gbps(name):
    """Published peak of the device named `name`, or None when it is not in PEAK_GBPS."""
    for key, gbps in PEAK_GBPS.items():
        if key.lower() in name.lower():
            return gbps
    return None


def bytes_moved(case, n, dtype, k=4):
    """The bytes a kernel must move at least (each input read once, each output written
    once; 0-dim outputs and per-block partials ignored). n: elements (rows for the K-way loss)."""
    size = torch.tensor([], dtype=dtype).element_size()
    if case in ("reversal in place", "reversal fresh", "copy ceiling"):
        return 2 * n * size                  # read x, write -lambda * x
    if case == "fused BCE forward":
        return 2 * n * size                  # read the logits, write the saved gradient
    if case == "fused BCE forward+backward":
        return 4 * n * size                  # + the backward's in-place scale of that gradient
    if case == "K-way loss forward":
        return 2 * n * k * size + 8 * n      # logits in, gradient out, int64 ids in
    raise ValueError(f"unknown case {case!r}")


def roofline_seconds(nbytes, gbps):
    return nbytes / (gbps * 1e9)


CASES = ("reversal in place", "reversal fresh", "fused BCE forward", "fused BCE forward+backward",
         "K-way loss forward", "copy ceiling")


def _sizes(quick):
    return (10**7,) if quick else (10**6, 10**7, 10**8)


def _dtypes(quick):
    return (torch.float32,) if quick else (torch.float32, torch.bfloat16, torch.float16)


def _callables(case, n, dtype, device):
    lam = torch.tensor(0.7, device=device)
    if case == "reversal in place":
        x = torch.randn(n, device=device, dtype=dtype)
        return lambda: torch.ops.grl_cuda.neg_scale_(x, lam)
    if case == "reversal fresh":
        x = torch.randn(n, device=device, dtype=dtype)
        return lambda: torch.ops.grl_cuda.neg_scale(x, lam)
    if case == "copy ceiling":
        x, y = torch.randn(n, device=device, dtype=dtype), torch.empty(n, device=device, dtype=dtype)
        return lambda: y.copy_(x)
    if case == "fused BCE forward":
        z = torch.randn(n, 1, device=device, dtype=dtype)
        return lambda: torch.ops.grl_cuda.domain_bce_with_logits(z, n // 2, 1.0, 1.0, "mean")
    if case == "fused BCE forward+backward":
        z = torch.randn(n, 1, device=device, dtype=dtype).requires_grad_()

        def step():
            z.grad = None
            grl_cuda.domain_bce_with_logits(z, n // 2).backward()
        return step
    if case == "K-way loss forward":
        z = torch.randn(n, 4, device=device, dtype=dtype)
        d = torch.randint(0, 4, (n,), device=device)
        return lambda: torch.ops.grl_cuda.domain_cross_entropy(z, d, "mean")
    raise ValueError(case)


def run(device, quick):
    rows = []
    measured = torch.device(device).type == "cuda"
    name = torch.cuda.get_device_name() if measured else None
    peak = device_peak_gbps(name) if measured else None
    clock = Clock(device) if measured else None
    for dtype in _dtypes(quick):
        for n in _sizes(quick):
            for case in CASES:
                rows_n = n // 4 if case == "K-way loss forward" else n  # same logit count as the BCE rows
                nbytes = bytes_moved(case, rows_n, dtype)
                row = {"case": case, "n": n, "dtype": str(dtype).replace("torch.", ""), "bytes": nbytes,
                       "roofline_s": {d: roofline_seconds(nbytes, PEAK_GBPS[d]) for d in ROOFLINE_DEVICES}}
                if measured:
                    t = interleaved({case: (_callables(case, rows_n, dtype, device), None)}, clock,
                                    5 if quick else 20)[case]
                    row["time"] = t
                    row["gbps"] = nbytes / t["median"] / 1e9
                rows.append(row)
            if measured:
                torch.cuda.empty_cache()
    # each measured case's share of the copy measured at the same size and dtype
    copies = {(r["n"], r["dtype"]): r.get("gbps") for r in rows if r["case"] == "copy ceiling"}
    for r in rows:
        if r.get("gbps") and copies.get((r["n"], r["dtype"])):
            r["pct_of_copy"] = 100 * r["gbps"] / copies[(r["n"], r["dtype"])]
        if r.get("gbps") and peak:
            r["pct_of_peak"] = 100 * r["gbps"] / peak
    note = None if measured else ("no CUDA device in this run (--device cpu): only the roofline predictions; "
                                  "`python -m bench --device cuda --only gpu` fills the measured columns")
    return {"rows": rows, "device": name, "peak_gbps": peak, "note": note}


def report(res, out_dir):
    peak = f"{res['peak_gbps']:.0f} GB/s published peak" if res["peak_gbps"] else "peak not in bench/gpu.py's table"
    head = f"Device: {res['device']} ({peak})." if res["device"] else f"Note: {res['note']}."
    lines = ["### Achieved bandwidth vs the device, and the roofline prediction", "", head, "",
             "Bytes = what the kernel must move at least (inputs read once, outputs written once); the prediction "
             "is bytes / published bandwidth (" + ", ".join(f"{d} {PEAK_GBPS[d]:.0f} GB/s" for d in ROOFLINE_DEVICES)
             + "). The K-way loss has N/4 rows of K = 4.", "",
             "| dtype | N | case | MB moved | time | GB/s | % of peak | % of copy | "
             + " | ".join(f"{d} prediction" for d in ROOFLINE_DEVICES) + " |",
             "|---" * (8 + len(ROOFLINE_DEVICES)) + "|"]
    for r in res["rows"]:
        t = fmt(r["time"]["median"]) if r.get("time") else "-"
        gb = f"{r['gbps']:.0f}" if r.get("gbps") else "-"
        pp = f"{r['pct_of_peak']:.0f}%" if r.get("pct_of_peak") else "-"
        pc = f"{r['pct_of_copy']:.0f}%" if r.get("pct_of_copy") else "-"
        pred = " | ".join(fmt(r["roofline_s"][d]) for d in ROOFLINE_DEVICES)
        lines.append(f"| {r['dtype']} | {size_label(r['n'])} | {r['case']} | {r['bytes'] / 1e6:.0f} | {t} | {gb} | "
                     f"{pp} | {pc} | {pred} |")
    return ["\n".join(lines), ""], []
