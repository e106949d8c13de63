"""Timing and memory measurement shared by every benchmark family.

Implementations are timed interleaved (each repeat runs every implementation
once, in rotating order) so that the host's drifting bandwidth hits them alike;
we report medians with the 20th and 80th percentiles. CPU: time.perf_counter
around synchronous calls (or, with `python -m bench --cpu-time --threads 1`, the
calling thread's CPU time, which other processes' load does not inflate: for a
shared machine); CUDA: CUDA events after an L2 flush.
"""

import gc
import statistics
import time

import torch

# The CPU clock; bench/run.py sets it to time.thread_time for --cpu-time (one torch
# thread: all the work then runs on, and is counted for, the calling thread).
CPU_TIMER = time.perf_counter


def percentiles(samples):
    s = sorted(samples)

    def q(p):
        return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]

    return {"median": statistics.median(s), "p20": q(0.2), "p80": q(0.8), "n": len(s)}


class Clock:
    """Seconds for one call of fn(), synchronised on CUDA."""

    def __init__(self, device):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self._flush = torch.empty(64 * 1024 * 1024, dtype=torch.int8, device=self.device)

    def time(self, fn, setup=None, inner=1):
        total = 0.0
        for _ in range(inner):
            state = setup() if setup is not None else None
            if self.device.type == "cuda":
                self._flush.zero_()  # evict L2 so each call reads from HBM
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(state) if setup is not None else fn()
                end.record()
                torch.cuda.synchronize()
                total += start.elapsed_time(end) / 1e3
            else:
                t0 = CPU_TIMER()
                fn(state) if setup is not None else fn()
                total += CPU_TIMER() - t0
            del state
        return total / inner


def interleaved(cases, clock, repeats, inner=1, warmup=2):
    """cases: {name: (fn, setup or None)} -> {name: percentiles of seconds per call}."""
    names = list(cases)
    for name in names:
        fn, setup = cases[name]
        for _ in range(warmup):
            clock.time(fn, setup, 1)
    samples = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, setup = cases[name]
            samples[name].append(clock.time(fn, setup, inner))
    return {n: percentiles(v) for n, v in samples.items()}


def _status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return None


def peak_extra_memory_mib(fn, device):
    """Peak memory above the level before fn() runs. CUDA: the caching allocator's
    peak; CPU (Linux): the resident set's high-water mark, reset through
    /proc/self/clear_refs."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status_mib("VmRSS")
    fn()
    return _status_mib("VmHWM") - base
