"""Families 1-4: the reversal layer itself.

1. forward+backward, backward alone, forward alone, for our layer and each peer's,
   float32 1e3..3e7 elements, bfloat16/float16 at 1e6 and 1e7;
2. the machine's ceiling measured in the same run: one scale into a fresh output
   (what any backward must at least do) and into a preallocated one (raw
   bandwidth), and each layer's effective GB/s and % of both;
3. per-call overhead on 1..1e3 elements;
4. peak extra memory of a forward+backward at 3e7 elements.

The graph is x (leaf) -> layer -> * w -> sum. "Backward alone" times
out.backward(); the layer's own share is that minus the same graph without a
layer ("added"), so autograd hands the layer a real, exclusive gradient.
"""

import torch

from . import peers
from .harness import Clock, interleaved, peak_extra_memory_mib

LAMBDA = 0.7


def _layers(device, w_for_compile=None):
    out = dict(peers.layers(LAMBDA))
    out["no layer (baseline)"] = lambda x: x
    return out


def _repeats(n, quick):
    if n <= 1e5:
        return (8, 10) if quick else (25, 20)
    if n <= 1e6:
        return (6, 2) if quick else (15, 3)
    return (4, 1) if quick else (9, 1)


def time_sizes(device, dtype, sizes, quick):
    clock = Clock(device)
    rows = []
    for n in sizes:
        n = int(n)
        x = torch.randn(n, device=device, dtype=dtype).requires_grad_()
        w = torch.randn(n, device=device, dtype=dtype)
        layers = _layers(device)
        compiled_graphs = {}
        if not quick:
            for name, fn in (("best pure PyTorch (torch.compile)", peers.layers(LAMBDA)["best pure PyTorch"]),
                             ("grl_cuda (torch.compile)", peers.layers(LAMBDA)["grl_cuda"])):
                compiled_graphs[name] = torch.compile(lambda t, fn=fn: (fn(t) * w).sum(), dynamic=False)
        full, bwd, fwd = {}, {}, {}
        for name, layer in layers.items():
            def run_full(layer=layer):
                x.grad = None
                (layer(x) * w).sum().backward()

            def setup(layer=layer):
                x.grad = None
                return (layer(x) * w).sum()

            full[name] = (run_full, None)
            bwd[name] = (lambda out: out.backward(), setup)
            fwd[name] = (lambda layer=layer: layer(x), None)
        for name, graph in compiled_graphs.items():
            def run_full(graph=graph):
                x.grad = None
                graph(x).backward()

            def setup(graph=graph):
                x.grad = None
                return graph(x)

            full[name] = (run_full, None)
            bwd[name] = (lambda out: out.backward(), setup)
        g = torch.randn(n, device=device, dtype=dtype)
        buf = torch.empty_like(g)
        ceilings = {"scale into fresh output (torch.mul)": (lambda: torch.mul(g, -LAMBDA), None),
                    "scale into preallocated (out=)": (lambda: torch.mul(g, -LAMBDA, out=buf), None)}
        repeats, inner = _repeats(n, quick)
        t_full = interleaved(full, clock, repeats, inner)
        t_bwd = interleaved(bwd, clock, repeats, inner)
        t_fwd = interleaved(fwd, clock, repeats, inner)
        t_ceil = interleaved(ceilings, clock, repeats, inner)
        bytes_min = 2 * n * g.element_size()  # a backward reads the gradient once and writes it once
        base_bwd = t_bwd["no layer (baseline)"]["median"]
        for name in full:
            added = t_bwd[name]["median"] - base_bwd
            rows.append({
                "impl": name, "n": n, "dtype": str(dtype).replace("torch.", ""),
                "full": t_full[name], "bwd": t_bwd[name], "fwd": t_fwd.get(name),
                "bwd_added_s": added,
                "bwd_added_gbps": bytes_min / added / 1e9 if added > 0 else None,
            })
        for name, t in t_ceil.items():
            rows.append({"impl": name, "n": n, "dtype": str(dtype).replace("torch.", ""), "ceiling": t,
                         "gbps": bytes_min / t["median"] / 1e9})
        del x, w, g, buf
    return rows


def overhead(device, quick):
    clock = Clock(device)
    rows = []
    for n in (1, 10, 100, 1000):
        x = torch.randn(n, device=device).requires_grad_()
        layers = peers.layers(LAMBDA)
        cases = {
            "grl_cuda": layers["grl_cuda"],
            "Python autograd.Function (best pure)": layers["best pure PyTorch"],
            "bare aten op (x.mul(-lambda))": lambda t: t.mul(-LAMBDA),
        }
        full = {}
        for name, layer in cases.items():
            def run(layer=layer):
                x.grad = None
                layer(x).sum().backward()

            full[name] = (run, None)
        fwd = {name: (lambda layer=layer: layer(x), None) for name, layer in cases.items()}
        reps, inner = (10, 50) if quick else (30, 200)
        t_full = interleaved(full, clock, reps, inner)
        t_fwd = interleaved(fwd, clock, reps, inner)
        for name in cases:
            rows.append({"impl": name, "n": n, "full": t_full[name], "fwd": t_fwd[name]})
    return rows


def memory(device, quick):
    n = int(1e6 if quick else 3e7)
    rows = []
    for name, layer in _layers(device).items():
        x = torch.randn(n, device=device).requires_grad_()
        w = torch.randn(n, device=device)

        def run(layer=layer):
            (layer(x) * w).sum().backward()

        run()  # warm up allocator and code paths
        x.grad = None
        rows.append({"impl": name, "n": n, "peak_extra_mib": peak_extra_memory_mib(run, device)})
        del x, w
    base = next(r["peak_extra_mib"] for r in rows if r["impl"] == "no layer (baseline)")
    for r in rows:
        r["extra_vs_baseline_mib"] = None if r["peak_extra_mib"] is None or base is None else r["peak_extra_mib"] - base
    return rows


def run(device, quick):
    sizes32 = (1e3, 1e5, 1e6) if quick else (1e3, 1e4, 1e5, 1e6, 1e7, 3e7)
    half_sizes = (1e6,) if quick else (1e6, 1e7)
    rows = time_sizes(device, torch.float32, sizes32, quick)
    for dtype in (torch.bfloat16, torch.float16):
        rows += time_sizes(device, dtype, half_sizes, quick)
    return {"timing": rows, "overhead": overhead(device, quick), "memory": memory(device, quick)}
