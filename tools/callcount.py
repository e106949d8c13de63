"""Instructions per forward+backward call of each reversal layer, counted by
valgrind's callgrind: repeatable on a loaded machine, where wall times are not.

    python tools/callcount.py                 # every layer, 200 calls, 1e3 elements
    python tools/callcount.py --layers grl_cuda pytorch-adapt --calls 400 --size 10

Each layer runs in its own process under callgrind: warm-up calls first, then
`calls` calls of the benchmark's graph (x -> layer -> * w -> sum -> backward,
bench/grl.py), bracketed by two os.getppid() calls. Callgrind dumps its counters
at each getppid (--dump-before), so the second dump holds exactly the timed loop:
no start-up and no import to subtract. One thread (torch.set_num_threads(1)).
Callgrind runs ~50x slower than native; a layer takes ~1 minute, mostly the import.
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAMBDA = 0.7
WARMUP = 20


def _layers():
    sys.path.insert(0, ROOT)
    from bench import peers

    import grl_cuda

    out = dict(peers.layers(LAMBDA))
    module = grl_cuda.GradientReversal(LAMBDA)  # a lambda buffer (tensor), as the pipeline's models use
    out["grl_cuda.GradientReversal"] = module
    out["grl_cuda.GradReverse (Python Function)"] = lambda x: grl_cuda.GradReverse.apply(x, LAMBDA)
    out["no layer (baseline)"] = lambda x: x
    return out


def _child(name, calls, size):
    import torch

    torch.set_num_threads(1)
    layer = _layers()[name]
    x = torch.randn(size).requires_grad_()
    w = torch.randn(size)

    def step():
        x.grad = None
        (layer(x) * w).sum().backward()

    for _ in range(WARMUP):
        step()
    os.getppid()  # marker: callgrind dumps the counters before this call...
    for _ in range(calls):
        step()
    os.getppid()  # ...and before this one: the second dump is the loop alone


def _count(name, calls, size, keep=None):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-before=getppid",
               "--dump-instr=no", "--dump-line=no", "--compress-strings=no", "--compress-pos=no", sys.executable, os.path.abspath(__file__),
               "--child", name, "--calls", str(calls), "--size", str(size)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        if len(dumps) < 2:
            raise RuntimeError(f"callgrind wrote {len(dumps)} dumps for {name}; expected the two getppid markers")
        with open(dumps[1]) as f:  # dump 1: from the first marker to the second
            text = f.read()
        if keep:  # for callgrind_annotate: where the instructions go
            os.makedirs(keep, exist_ok=True)
            with open(os.path.join(keep, re.sub(r"\W+", "_", name) + ".callgrind"), "w") as f:
                f.write(text)
        total = int(re.search(r"^summary:\s+(\d+)", text, re.M).group(1))
    return total / calls


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", nargs="*", help="names from bench/peers.py layers() (default: all, and no layer)")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--keep", metavar="DIR", help="keep each layer's loop profile in DIR (for callgrind_annotate)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args.child, args.calls, args.size)
    names = args.layers or list(_layers())
    counts = {name: _count(name, args.calls, args.size, args.keep) for name in names}
    base = counts.get("no layer (baseline)")
    print(f"instructions per forward+backward call ({args.calls} calls, {args.size} float32 elements, callgrind)")
    for name, n in counts.items():
        added = "" if base is None or name == "no layer (baseline)" else f"  (layer adds {n - base:,.0f})"
        print(f"{name:40s} {n:12,.0f}{added}")


if __name__ == "__main__":
    main()
