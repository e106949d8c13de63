"""grl_cuda benchmarks, one command:

    python -m bench [--device cpu|cuda] [--quick] [--out DIR] [--only grl,loss,cross_entropy,linear,e2e,gpu,scaling]

Writes DIR/results.json (machine, versions, every raw figure), DIR/results.md
(tables) and DIR/*.png (plots). All implementations of a table are timed
interleaved in one run; compare ratios, not absolute times across runs.

Each family is one module in FAMILIES with TITLE, run(device, quick) -> results
and report(results, out_dir) -> (markdown lines, plot paths): adding a benchmark
is one module and one entry. The static GPU checks (no timing) are a separate
command: python -m bench.static_gpu.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch
import torch._dynamo

from . import goals, harness
from . import cross_entropy, e2e, gpu, grl, linear, loss, scaling

FAMILIES = {"grl": grl, "loss": loss, "cross_entropy": cross_entropy, "linear": linear, "e2e": e2e, "gpu": gpu,
            "scaling": scaling}


def machine(device):
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
            "device": device}
    try:
        import grl_cuda

        info["grl_cuda"] = grl_cuda.__version__
        info["grl_cuda_build"] = grl_cuda.build_info()
        info["grl_cuda_cpu_loops"] = grl_cuda._C.cpu_loop_isa()
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


# ---- main --------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--only", default=",".join(FAMILIES), help=f"comma list of: {', '.join(FAMILIES)}")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU: time the calling thread's CPU time instead of wall time (needs --threads 1); "
                             "other processes' load then does not inflate the figures")
    args = parser.parse_args(argv)
    if args.cpu_time and (args.threads != 1 or args.device != "cpu"):
        print("python -m bench: error: --cpu-time needs --device cpu and --threads 1 (other threads' work would "
              "not be counted)", file=sys.stderr)
        return 2
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
    if args.cpu_time:
        harness.CPU_TIMER = time.thread_time
    os.makedirs(args.out, exist_ok=True)
    results = {"machine": machine(args.device), "quick": args.quick, "cpu_time": args.cpu_time}
    md = ["# grl_cuda benchmarks", "",
          f"Machine: {results['machine'].get('cpu')} ({results['machine']['threads']} threads), "
          f"{results['machine'].get('gpu', 'no GPU used')}; grl_cuda CPU loops "
          f"{results['machine'].get('grl_cuda_cpu_loops', '?')}; torch {torch.__version__}; "
          f"{results['machine']['date']}. Command: `python -m bench {' '.join(argv or sys.argv[1:])}`.", "",
          "Medians of interleaved repeats; this machine is noisy, so read ratios within one table."
          + (" Times are the calling thread's CPU time (--cpu-time), not wall time." if args.cpu_time else ""), ""]
    plots = []
    # a compiled case that ran out of dynamo's versions per code object would silently time eager
    # code under a "compiled" name: make that an error instead
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for name in only:
            family = FAMILIES[name]
            print(f"benchmark: {family.TITLE} ...", flush=True)
            results[name] = family.run(args.device, args.quick)
            lines, family_plots = family.report(results[name], args.out)
            md += [f"## {family.TITLE}", ""] + lines
            plots += family_plots
    header = 6  # the title, machine and timing lines: the goals table follows them
    md[header:header] = goals.report(results)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    print(f"\nwrote {args.out}/results.json, results.md, " + ", ".join(os.path.basename(p) for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
