"""grl_cuda benchmarks, one command:

    python -m bench [--device cpu|cuda] [--quick] [--out DIR] [--only grl,loss,linear,e2e,static]

Writes DIR/results.json (machine, versions, every raw figure), DIR/results.md
(tables) and DIR/*.png (plots). All implementations of a table are timed
interleaved in one run; compare ratios, not absolute times across runs.
"""

import argparse
import datetime
import json
import os
import platform
import sys

import torch

FAMILIES = ("grl", "loss", "linear", "e2e", "static")


def fmt(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def size_label(n):
    return f"{n:.0e}".replace("e+0", "e") if n >= 1000 else str(n)


def machine(device):
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
            "device": device}
    try:
        import grl_cuda

        info["grl_cuda"] = grl_cuda.__version__
        info["grl_cuda_build"] = grl_cuda.build_info()
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ---- markdown ----------------------------------------------------------------------------------

def grl_tables(res):
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


def ratio_table(rows, key_col, ours, title, col_name):
    keys = list(dict.fromkeys(r[key_col] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    get = {(r["impl"], r[key_col]): r["full"]["median"] for r in rows}
    lines = [f"### {title}", "", f"| {col_name} | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for k in keys:
        base = get[(ours, k)]
        cells = [fmt(get[(i, k)]) + ("" if i == ours else f" ({get[(i, k)] / base:.2f}x)") for i in impls]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"(x) = that implementation's time divided by {ours}'s: above 1 means {ours} is faster.")
    return "\n".join(lines)


def e2e_table(rows):
    lines = ["### End to end", "", "| case | implementation | time per step | images/s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['impl']} | {fmt(r['full']['median'])} | {r['images_per_s']:.0f} |")
    return "\n".join(lines)


# ---- plots -------------------------------------------------------------------------------------

def plot_grl(res, out_dir):
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


def plot_bars(rows, key_col, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(dict.fromkeys(r[key_col] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    get = {(r["impl"], r[key_col]): r["full"]["median"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4.5))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        ax.bar(np.arange(len(keys)) + i * width, [get[(impl, k)] / get[(impls[0], k)] for k in keys], width,
               label=impl)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [str(k) for k in keys], fontsize=8)
    ax.set_ylabel(f"time relative to {impls[0]}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- main --------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--only", default=",".join(FAMILIES), help=f"comma list of: {', '.join(FAMILIES)}")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("python -m bench: error: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    only = [f.strip() for f in args.only.split(",")]
    bad = [f for f in only if f not in FAMILIES]
    if bad:
        print(f"python -m bench: error: unknown families {bad}; choose from {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    import grl_cuda  # noqa: F401  (fails with a clear message if the build is missing)

    from . import e2e, grl, linear, loss, static_gpu

    os.makedirs(args.out, exist_ok=True)
    results = {"machine": machine(args.device), "quick": args.quick}
    md = ["# grl_cuda benchmarks", "",
          f"Machine: {results['machine'].get('cpu')} ({results['machine']['threads']} threads), "
          f"{results['machine'].get('gpu', 'no GPU used')}; torch {torch.__version__}; "
          f"{results['machine']['date']}. Command: `python -m bench {' '.join(argv or sys.argv[1:])}`.", "",
          "Medians of interleaved repeats; this machine is noisy, so read ratios within one table.", ""]
    plots = []
    if "grl" in only:
        print("benchmark: gradient reversal layers ...", flush=True)
        results["grl"] = grl.run(args.device, args.quick)
        md += ["## 1-4. The reversal layer", ""] + [t + "\n" for t in grl_tables(results["grl"])]
        plots.append(plot_grl(results["grl"], args.out))
    if "loss" in only:
        print("benchmark: fused domain loss ...", flush=True)
        results["loss"] = loss.run(args.device, args.quick)
        md += ["## 5. Fused domain loss, forward+backward", "",
               ratio_table(results["loss"]["timing"], "n", "grl_cuda.domain_bce_with_logits",
                           "Domain BCE forward+backward (N logits, half source half target)", "N"), ""]
        plots.append(plot_bars(results["loss"]["timing"], "n", "domain loss forward+backward",
                               os.path.join(args.out, "loss.png")))
    if "linear" in only:
        print("benchmark: GradientReversalLinear ...", flush=True)
        results["linear"] = linear.run(args.device, args.quick)
        md += ["## 6. GradientReversalLinear", "",
               ratio_table(results["linear"]["timing"], "shape", "GradientReversalLinear",
                           "forward+backward of one head layer", "batch x in -> out"), ""]
        plots.append(plot_bars(results["linear"]["timing"], "shape", "reversal + linear forward+backward",
                               os.path.join(args.out, "linear.png")))
    if "e2e" in only:
        print("benchmark: end to end ...", flush=True)
        results["e2e"] = e2e.run(args.device, args.quick)
        md += ["## 7. End to end", "", e2e_table(results["e2e"]["timing"]), ""]
    if "static" in only:
        print("benchmark: static GPU checks ...", flush=True)
        try:
            records, have_sass = static_gpu.run(("80", "90"))
            results["static_gpu"] = records
            md += ["## 8. Static GPU checks (compiled here, no GPU needed)", "",
                   "`nvcc -Xptxas -v` registers and spills; `cuobjdump -sass` 128-bit global loads/stores.", "",
                   static_gpu.to_markdown(records), ""]
        except (FileNotFoundError, RuntimeError) as exc:
            md += ["## 8. Static GPU checks", "", f"Skipped: {exc}", ""]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    print(f"\nwrote {args.out}/results.json, results.md, " + ", ".join(os.path.basename(p) for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
