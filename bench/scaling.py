"""Family 8: data-parallel scaling. Training steps per second of the pipeline's DANN
step (grl_cuda.pipeline, the paper's nets, 64 source + 64 target images per step in
all, split over the processes as torchrun runs split them) in one process and in two
processes (gloo), with the gradients averaged by DistributedDataParallel (bucketed,
overlapped with the backward) and by the explicit path (one all-reduce per bucket
after the backward: --no-ddp). The two paths are timed interleaved in the same pair of
processes; each process uses one thread.

What this machine can show is the cost of the collectives beside the compute; what it
cannot show is DDP's overlap: gloo's all-reduce and the backward share the same two
CPU cores. On GPUs with nccl (torchrun --nproc_per_node=N --device cuda) the same
family would measure the overlap of the bucketed all-reduces with the backward, the
speed-up over one GPU at a fixed global batch, and the gap between the paths growing
with the gradient size (SVHN net and domain head: 33M parameters, 127 MiB of gradients a step)."""

import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .harness import percentiles

BATCH = 64  # images per domain per step over all processes (the paper's)
PATHS = {"DDP": True, "explicit all-reduce": False}  # name: Config.ddp


def _methods(arch, world, device):
    from grl_cuda.pipeline import distributed
    from grl_cuda.pipeline.config import Config
    from grl_cuda.pipeline.methods import build_method

    methods = {}
    for name, ddp in PATHS.items():
        cfg = Config(method="dann", arch=arch, batch_size=BATCH, ddp=ddp, world_size=world, device=device)
        torch.manual_seed(0)
        methods[name] = distributed.wrap(build_method(cfg, 10, device), cfg, world)
        methods[name].train(True)
    return methods


def _time(arch, world, device, steps, repeats, rank=0):
    """{path: [seconds per step, one per repeat]}, the paths interleaved."""
    from grl_cuda.pipeline.data import SourceBatch, TargetBatch

    n = BATCH // world
    gen = torch.Generator().manual_seed(rank)
    source = SourceBatch(torch.randn(n, 3, 32, 32, generator=gen).to(device),
                         torch.randint(0, 10, (n,), generator=gen).to(device))
    target = TargetBatch(torch.randn(n, 3, 32, 32, generator=gen).to(device), torch.arange(n))
    methods = _methods(arch, world, device)
    names = list(methods) if world > 1 else list(methods)[:1]  # one process: no communication, one path

    def block(method, count):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        for _ in range(count):
            method.set_lr(0.01)
            method.train_step(source, target, 0.5)
        if device == "cuda":
            torch.cuda.synchronize()
        if world > 1:
            dist.barrier()
        return (time.perf_counter() - t0) / count

    for name in names:
        block(methods[name], 2)  # warm-up (DDP builds its buckets in the first steps)
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(block(methods[name], steps))
    return samples


def _worker(rank, world, store, arch, device, steps, repeats, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        samples = _time(arch, world, device, steps, repeats, rank)
        if rank == 0:
            torch.save(samples, out)
    finally:
        dist.destroy_process_group()


def _two_processes(arch, device, steps, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "samples.pt")
        mp.start_processes(_worker, args=(2, os.path.join(tmp, "store"), arch, device, steps, repeats, out),
                           nprocs=2, start_method="spawn")
        return torch.load(out)


def run(device, quick):
    if device == "cuda":  # gloo here; the nccl run is torchrun's (see the module's doc)
        device = "cpu"
    rows, threads = [], torch.get_num_threads()
    for arch in (("mnist",) if quick else ("mnist", "svhn")):
        steps, repeats = (3, 2) if quick else ((10, 5) if arch == "mnist" else (2, 3))
        measured = []
        for t in (1, 2):
            torch.set_num_threads(t)
            try:
                samples = _time(arch, 1, device, steps, repeats)
            finally:
                torch.set_num_threads(threads)
            measured.append((f"1 process x {t} thread{'s' if t > 1 else ''}", "none (one process)",
                             samples["DDP"]))
        for name, s in _two_processes(arch, device, steps, repeats).items():
            measured.append(("2 processes x 1 thread", name, s))
        base = percentiles(measured[0][2])["median"]
        for setup, path, s in measured:
            p = percentiles(s)
            rows.append({"arch": arch, "setup": setup, "path": path, "seconds_per_step": p,
                         "steps_per_s": 1.0 / p["median"], "images_per_s": 2 * BATCH / p["median"],
                         "speedup": base / p["median"]})
    return {"timing": rows, "batch": BATCH, "backend": "gloo", "device": device}


TITLE = "8. Data-parallel scaling (DANN step, gloo)"


def report(res, out_dir):
    lines = [f"DANN training steps of the pipeline, {res['batch']} + {res['batch']} images per step in all, "
             "split over the processes; medians of interleaved repeats. Speed-up: over 1 process x 1 thread.", "",
             "| net | processes | gradient averaging | steps/s | images/s | speed-up |", "|---|---|---|---|---|---|"]
    for r in res["timing"]:
        lines.append(f"| {r['arch']} | {r['setup']} | {r['path']} | {r['steps_per_s']:.2f} | "
                     f"{r['images_per_s']:.0f} | {r['speedup']:.2f}x |")
    lines += ["", "On this machine the processes share two CPU cores with gloo's all-reduce, so DDP's "
              "overlap of communication with the backward cannot show; a GPU run with nccl measures it.", ""]
    return lines, []
