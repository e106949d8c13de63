"""Formatting shared by the benchmark families: times, sizes, ratio tables and bar plots."""

import os


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




def ratio_report(res, out_dir, *, key_col, ours, title, col_name, plot_title, plot_name):
    """The usual report of a family whose rows are implementations timed per key."""
    rows = res["timing"]
    md = [ratio_table(rows, key_col, ours, title, col_name), ""]
    return md, [plot_bars(rows, key_col, plot_title, os.path.join(out_dir, plot_name))]
