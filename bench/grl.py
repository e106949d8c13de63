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

import os

import torch
import torch._dynamo

from . import peers
from .harness import Clock, interleaved, peak_extra_memory_mib
from .report import fmt, size_label

TITLE = "1-4. The reversal layer"

LAMBDA = 0.7
FORWARD_INNER = 20  # calls per sample of the forward alone, at every size (see time_sizes)


def _layers(device, w_for_compile=None):
    out = dict(peers.layers(LAMBDA))
    out.update(peers.optional_layers(LAMBDA)[0])
    out["no layer (baseline)"] = lambda x: x
    return out


def _repeats(n, quick):
    if n <= 1e5:
        return (8, 10) if quick else (25, 20)
    if n <= 1e6:
        return (6, 2) if quick else (15, 3)
    return (4, 1) if quick else (9, 1)


def _compiled_graphs(w):
    """The graph x -> layer -> * w -> sum compiled whole, with the best pure layer and with ours.
    Dynamo keeps compiled code per code object and falls back to eager after 8 versions of one
    (its recompile_limit): one lambda compiled for every size, dtype and layer went eager from
    the ninth on, so those "compiled" rows timed eager code. Now each graph is its own function
    and the caches are cleared for each size, so each holds one version."""
    torch._dynamo.reset()
    layers = peers.layers(LAMBDA)
    pure, ours = layers["best pure PyTorch"], layers["grl_cuda"]

    def pure_graph(t):
        return (pure(t) * w).sum()

    def ours_graph(t):
        return (ours(t) * w).sum()

    return {"best pure PyTorch (torch.compile)": torch.compile(pure_graph, dynamic=False),
            "grl_cuda (torch.compile)": torch.compile(ours_graph, dynamic=False)}


def time_sizes(device, dtype, sizes, quick):
    clock = Clock(device)
    rows = []
    for n in sizes:
        n = int(n)
        x = torch.randn(n, device=device, dtype=dtype).requires_grad_()
        w = torch.randn(n, device=device, dtype=dtype)
        layers = _layers(device)
        compiled_graphs = {} if quick else _compiled_graphs(w)
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
        # A view forward takes ~2 us at any size: timed once per sample (the large sizes' inner
        # of 1), it measured the cold caches the previous case left (10-30 us at 1e7, any layer).
        t_fwd = interleaved(fwd, clock, repeats, max(inner, FORWARD_INNER))
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
            "pytorch-adapt": layers["pytorch-adapt"],
            **peers.optional_layers(LAMBDA)[0],
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
    return {"timing": rows, "overhead": overhead(device, quick), "memory": memory(device, quick),
            "peer_notes": peers.optional_layers(LAMBDA)[1]}


# ---- report ------------------------------------------------------------------------------------

def _tables(res):
    rows = res["timing"]
    out = []
    f32 = [r for r in rows if r["dtype"] == "float32" and "full" in r]
    sizes = sorted({r["n"] for r in f32})
    impls = list(dict.fromkeys(r["impl"] for r in f32))
    get = {(r["impl"], r["n"]): r for r in f32}

    def table(title, key):
        lines = [f"### {title}", "", "| implementation | " + " | ".join(size_label(n) for n in sizes) + " |",
                 "|---" * (len(sizes) + 1) + "|"]
        for impl in impls:
            cells = []
            for n in sizes:
                r = get.get((impl, n))
                v = r and r.get(key)
                cells.append(fmt(v["median"]) if v else "-")
            lines.append(f"| {impl} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    notes = res.get("peer_notes") or []
    if notes:
        out.append("Published peers not in these tables: " + "; ".join(notes) + ".")
    out.append(table("GRL forward+backward, float32 (median; graph x -> layer -> * w -> sum)", "full"))
    out.append(table("Backward alone, float32 (out.backward() of the same graph)", "bwd"))
    out.append(table("Forward alone, float32", "fwd"))

    ceil = {(r["impl"], r["n"], r["dtype"]): r for r in rows if "ceiling" in r}
    lines = ["### The layer's share of the backward, and the machine's ceiling",
             "", "Added = backward with the layer minus backward without it; GB/s counts the bytes a reversal must "
             "move (read and write the gradient once); % of the two ceilings measured in the same run.", "",
             "| dtype | n | implementation | added backward | GB/s | % of fresh-output scale | % of out= bandwidth |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "full" not in r or r["impl"] == "no layer (baseline)" or r["n"] < 1e5:
            continue
        fresh = ceil.get(("scale into fresh output (torch.mul)", r["n"], r["dtype"]))
        raw = ceil.get(("scale into preallocated (out=)", r["n"], r["dtype"]))
        gb = r["bwd_added_gbps"]
        pf = f"{100 * gb / fresh['gbps']:.0f}%" if gb and fresh else "-"
        pr = f"{100 * gb / raw['gbps']:.0f}%" if gb and raw else "-"
        lines.append(f"| {r['dtype']} | {size_label(r['n'])} | {r['impl']} | {fmt(r['bwd_added_s'])} | "
                     f"{gb:.1f} | {pf} | {pr} |" if gb else
                     f"| {r['dtype']} | {size_label(r['n'])} | {r['impl']} | {fmt(r['bwd_added_s'])} | - | - | - |")
    lines += ["", "| dtype | n | ceiling | time | GB/s |", "|---|---|---|---|---|"]
    for (impl, n, dtype), r in ceil.items():
        lines.append(f"| {dtype} | {size_label(n)} | {impl} | {fmt(r['ceiling']['median'])} | {r['gbps']:.1f} |")
    out.append("\n".join(lines))

    ov = res["overhead"]
    lines = ["### Per-call overhead (forward+backward / forward alone)", "",
             "| implementation | " + " | ".join(str(n) for n in sorted({r['n'] for r in ov})) + " |",
             "|---" * (1 + len({r['n'] for r in ov})) + "|"]
    for impl in dict.fromkeys(r["impl"] for r in ov):
        cells = [f"{fmt(r['full']['median'])} / {fmt(r['fwd']['median'])}" for r in ov if r["impl"] == impl]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))

    mem = res["memory"]
    lines = [f"### Peak extra memory, forward+backward at {size_label(mem[0]['n'])} float32 elements "
             f"({mem[0]['n'] * 4 / 2**20:.0f} MiB tensor)", "",
             "| implementation | peak above start | vs no layer |", "|---|---|---|"]
    for r in mem:
        pk = "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f} MiB"
        ex = "-" if r["extra_vs_baseline_mib"] is None else f"{r['extra_vs_baseline_mib']:+.0f} MiB"
        lines.append(f"| {r['impl']} | {pk} | {ex} |")
    out.append("\n".join(lines))
    return out


def _plot(res, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["timing"] if r["dtype"] == "float32"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for impl in dict.fromkeys(r["impl"] for r in rows if "full" in r):
        pts = sorted((r["n"], r["full"]["median"]) for r in rows if r["impl"] == impl and "full" in r)
        axes[0].plot(*zip(*pts), marker="o", label=impl, lw=2.5 if impl == "grl_cuda" else 1.2)
        gb = sorted((r["n"], r["bwd_added_gbps"]) for r in rows if r["impl"] == impl and r.get("bwd_added_gbps"))
        if gb and impl != "no layer (baseline)":
            axes[1].plot(*zip(*gb), marker="o", label=impl, lw=2.5 if impl == "grl_cuda" else 1.2)
    for impl, style in (("scale into fresh output (torch.mul)", ":"), ("scale into preallocated (out=)", "--")):
        pts = sorted((r["n"], r["gbps"]) for r in rows if r["impl"] == impl)
        axes[1].plot(*zip(*pts), ls=style, color="black", label=f"ceiling: {impl}")
    axes[0].set(xscale="log", yscale="log", xlabel="elements", ylabel="seconds (median)",
                title="GRL forward+backward, float32")
    axes[1].set(xscale="log", xlabel="elements", ylabel="GB/s", title="the layer's backward: effective bandwidth")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "grl.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def report(res, out_dir):
    return [t + "\n" for t in _tables(res)], [_plot(res, out_dir)]
