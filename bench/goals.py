"""Issue 17's goals, checked against the figures of the run that just finished.

Each goal is one row of a table at the top of results.md: what was asked, what this run
measured, and a verdict. "Slower" needs the difference to be outside the run's own spread
(our 20th percentile above the other's 80th); a difference inside it is called noise.
A goal whose family did not run says so instead of passing.
"""

PURE_EAGER = ("best pure PyTorch", "pytorch-adapt", "fungtion/DANN", "tllib", "pytorch-revgrad",
              "torch-gradient-reversal", "skada")
KINDS = {"full": "forward+backward", "bwd": "backward", "fwd": "forward"}
PIPELINE_CASE = "pipeline DANN step (mnist net, --input-norm instance, 64 + 64)"


def compare(ours, other):
    """'faster', 'noise' or 'slower': ours against other, two {median, p20, p80} dicts."""
    if ours["median"] <= other["median"]:
        return "faster"
    return "slower" if ours["p20"] > other["p80"] else "noise"


def _size(n):
    return f"{n:.0e}".replace("e+0", "e") if n >= 1000 else str(n)


def reversal_never_slower(grl):
    """Every (dtype, size, forward/backward/both) cell: ours eager against the fastest pure
    PyTorch layer eager, and ours compiled against pure PyTorch compiled."""
    cells = {}
    for row in grl["timing"]:
        cells.setdefault((row["dtype"], row["n"]), {})[row["impl"]] = row
    labelled = []
    for (dtype, n), impls in sorted(cells.items()):
        for kind in KINDS:
            where = f"{dtype} {_size(n)} {KINDS[kind]}"
            if "grl_cuda" in impls and impls["grl_cuda"].get(kind):
                peers = [impls[p][kind] for p in PURE_EAGER if p in impls and impls[p].get(kind)]
                if peers:
                    labelled.append((f"{where} (eager)", impls["grl_cuda"][kind], min(peers, key=lambda t: t["median"])))
            compiled = impls.get("grl_cuda (torch.compile)", {}).get(kind)
            pure_compiled = impls.get("best pure PyTorch (torch.compile)", {}).get(kind)
            if compiled and pure_compiled:
                labelled.append((f"{where} (compiled)", compiled, pure_compiled))
    return sort_verdicts(labelled)


def bandwidth_at_1e7(grl):
    """{dtype: share of the out= ceiling's bandwidth that ours reaches in the backward's added time}."""
    shares = {}
    rows = [r for r in grl["timing"] if r["n"] == 10_000_000]
    for dtype in sorted({r["dtype"] for r in rows}):
        ours = next((r for r in rows if r["dtype"] == dtype and r["impl"] == "grl_cuda"), None)
        ceiling = next((r for r in rows if r["dtype"] == dtype and r["impl"] == "scale into preallocated (out=)"), None)
        if ours and ceiling and ours.get("bwd_added_s"):
            shares[dtype] = ceiling["ceiling"]["median"] / ours["bwd_added_s"] if ours["bwd_added_s"] > 0 else None
    return shares


def _loss_ratio(loss, n):
    by = {r["impl"]: r["full"] for r in loss["timing"] if r["n"] == n}
    ours, torch_ = by.get("grl_cuda.domain_bce_with_logits"), by.get("F.binary_cross_entropy_with_logits + labels")
    return None if not (ours and torch_) else torch_["median"] / ours["median"]


def sort_verdicts(labelled):
    """(how many compared, labels of the slower ones, labels of those within noise) for a list
    of (label, ours, other) timings."""
    slower, noise = [], []
    for label, ours, other in labelled:
        verdict = compare(ours, other)
        text = f"{label}: {ours['median'] * 1e6:.1f} vs {other['median'] * 1e6:.1f} us"
        if verdict == "slower":
            slower.append(text)
        elif verdict == "noise":
            noise.append(text)
    return len(labelled), slower, noise


def _never_slower_row(goal, rows, key, ours_name, other_name, unit):
    """A goals-table row: ``ours_name`` against ``other_name`` at every ``key`` of a family's rows."""
    by = {}
    for r in rows:
        by.setdefault(r[key], {})[r["impl"]] = r["full"]
    checked, slower, noise = sort_verdicts([(str(where), impls[ours_name], impls[other_name])
                                            for where, impls in by.items()
                                            if ours_name in impls and other_name in impls])
    return (f"| {goal} | {checked} {unit}: slower in {len(slower)} ({'; '.join(slower) or 'none'}); "
            f"within noise in {len(noise)} | {_verdict(not slower, checked)} |")


def _verdict(ok, checked=1):
    """met / **missed**, or "-" when nothing was compared (a --quick run skips sizes and cases)."""
    if not checked:
        return "-"
    return "met" if ok else "**missed**"


def report(results):
    """Markdown lines: the goals table of this run."""
    lines = ["## Goals (issue 17), checked on this run", "",
             "Slower = our 20th percentile above the other's 80th percentile; inside that, noise.", "",
             "| goal | this run | verdict |", "|---|---|---|"]
    grl = results.get("grl")
    if grl:
        checked, slower, noise = reversal_never_slower(grl)
        found = "; ".join(slower) if slower else "none"
        lines.append(f"| reversal never slower than the fastest pure PyTorch layer (eager vs eager, compiled vs "
                     f"compiled; every dtype, size, forward/backward) | {checked} cells: slower in {len(slower)} "
                     f"({found}); within noise in {len(noise)} | {_verdict(not slower, checked)} |")
        shares = bandwidth_at_1e7(grl)
        cells = ", ".join(f"{d} {s:.0%}" if s else f"{d} -" for d, s in shares.items())
        lines.append(f"| >= 70% of `out=` bandwidth at 1e7, every dtype (backward's added time) | {cells or '-'} | "
                     f"{_verdict(all(s and s >= 0.7 for s in shares.values()), len(shares))} |")
    else:
        lines.append("| reversal goals | family `grl` not run | - |")
    loss = results.get("loss")
    if loss:
        r7, r6 = _loss_ratio(loss, 10_000_000), _loss_ratio(loss, 1_000_000)
        text = f"{r7:.2f}x at 1e7, {r6:.2f}x at 1e6" if r7 and r6 else "sizes not in this run (--quick?)"
        verdict = _verdict(r7 >= 4 and r6 >= 2) if r7 and r6 else "-"
        lines.append(f"| fused BCE >= 4x torch at 1e7, >= 2x at 1e6 | {text} | {verdict} |")
        lines.append(_never_slower_row("fused BCE never slower than torch", loss["timing"], "n",
                                       "grl_cuda.domain_bce_with_logits",
                                       "F.binary_cross_entropy_with_logits + labels", "sizes"))
    if results.get("cross_entropy"):
        lines.append(_never_slower_row("K-way loss never slower than `F.cross_entropy`",
                                       results["cross_entropy"]["timing"], "shape",
                                       "grl_cuda.domain_cross_entropy", "F.cross_entropy", "shapes"))
    if results.get("linear"):
        lines.append(_never_slower_row("`GradientReversalLinear` never slower than `GradientReversal` + `nn.Linear`",
                                       results["linear"]["timing"], "shape", "GradientReversalLinear",
                                       "GradientReversal + nn.Linear", "shapes"))
    e2e = results.get("e2e")
    steps = {r["impl"]: r["full"] for r in e2e["timing"] if r["case"] == PIPELINE_CASE} if e2e else {}
    if "eager" in steps and any("--compile" in k for k in steps):
        speedups = {k: steps["eager"]["median"] / v["median"] for k, v in steps.items() if "--compile" in k}
        best = max(speedups.values())
        lines.append("| compiled training step >= 1.3x eager steps/s (pipeline DANN step, MNIST net) | "
                     + ", ".join(f"`{k}` {v:.2f}x" for k, v in speedups.items()) + f" | {_verdict(best >= 1.3)} |")
    else:
        lines.append("| compiled training step >= 1.3x eager | the compiled pipeline cases did not run "
                     "(family `e2e` without --quick) | - |")
    return lines + [""]
