"""Data-parallel training (pipeline/distributed.py) gives what one process gives on the
same global batch: 2 CPU processes (gloo) against a single process, for DANN under
DistributedDataParallel and under the explicit all-reduce (--no-ddp), CGDM's explicit
path with its double backward, and --sync-bn's BatchNorm statistics (DANN-DSBN: the
domain-specific BatchNorms are converted too)."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from grl_cuda.pipeline import distributed, runs, speed
from grl_cuda.pipeline.config import Config
from grl_cuda.pipeline.data import SourceBatch, TargetBatch
from grl_cuda.pipeline.loop import fit
from grl_cuda.pipeline.methods import build_method
from grl_cuda.pipeline.methods.dann import DANN
from grl_cuda.pipeline.models import DomainBatchNorm2d, model_factory

pytestmark = pytest.mark.slow

WORLD, PER_RANK, STEPS = 2, 8, 3
BUCKET_BYTES = distributed.BUCKET_BYTES


class OwnStepDANN(DANN):
    """A DANN subclass with a step of its own written the pre-DDP way (network calls
    outside ``losses``, then ``sync_grads``): the DDP wrapper never sees its forward,
    so sync_grads must average the gradients itself."""

    def train_step(self, source, target, progress):
        loss, logs = self.losses(source, target, progress)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads(list(self.model.parameters()) + list(self.head.parameters()))
        self.opt.step()
        return logs

# name: (Config options, whether 2 processes must match 1, dtype)
CASES = {
    "dann-ddp": (dict(method="dann"), True, torch.float32),
    "dann-explicit": (dict(method="dann", ddp=False), True, torch.float32),
    # buckets of 4 KiB: many buckets in flight, and tensors larger than a bucket
    "dann-explicit-small-buckets": (dict(method="dann", ddp=False, bucket_bytes=4096), True, torch.float32),
    "dann-own-step": (dict(method="dann", cls=OwnStepDANN), True, torch.float32),
    "dsbn-sync-bn": (dict(method="dann-dsbn", sync_bn=True), True, torch.float32),
    "dsbn-per-rank-bn": (dict(method="dann-dsbn"), False, torch.float32),  # the control: per-rank statistics
    # float64: in float32 the rounding of the all-reduced sums (another order than one
    # process's) grows to ~1e-3 in 3 CGDM steps (8-row BatchNorm, entropy weights, cosines);
    # in float64 both agree to ~1e-14, so what differs in float32 is rounding, not the math.
    "cgdm-sync-bn": (dict(method="cgdm", sync_bn=True, num_k=2), True, torch.float64),
}
SLOW_CASES = {"dann-ddp-compile": (dict(method="dann", compile=True), True, torch.float32),
              "dann-ddp-amp": (dict(method="dann", amp=True, lr=0.03), True, torch.float32)}


def global_batch():
    gen = torch.Generator().manual_seed(1)
    n = WORLD * PER_RANK
    return (torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen),
            torch.randn(n, 3, 32, 32, generator=gen))


def train(options, dtype, rank=0, world=1):
    """STEPS steps of a method on rank's contiguous share of the global batch, in
    ``dtype``; returns its networks' state (weights and BatchNorm buffers)."""
    torch.set_default_dtype(dtype)
    try:
        return _train(options, rank, world)
    finally:
        torch.set_default_dtype(torch.float32)


def _train(options, rank, world):
    options = dict(options)
    cls = options.pop("cls", None)
    distributed.BUCKET_BYTES = options.pop("bucket_bytes", BUCKET_BYTES)
    cfg = Config(arch="mnist", batch_size=WORLD * PER_RANK, world_size=world, **options)
    torch.manual_seed(0)
    method = build_method(cfg, 10, "cpu") if cls is None else cls(cfg, model_factory("mnist", 10), 10,
                                                                      torch.device("cpu"))
    for net in method.networks().values():
        for m in net.modules():
            if isinstance(m, nn.Dropout):  # dropout masks cannot agree between 1 and 2 processes
                m.p = 0.0
    speed.prepare_networks(method, cfg)  # --compile, as the loop does
    distributed.wrap(method, cfg, world)
    assert (method.ddp is not None) == (world > 1 and cfg.ddp and method.distribute == "ddp")
    xs, ys, xt = global_batch()
    rows = slice(rank * len(ys) // world, (rank + 1) * len(ys) // world)
    index = torch.arange(len(ys))[rows]
    if cfg.method == "cgdm":  # pseudo labels on: step C's gradient discrepancy (double backward) runs
        method.pseudo_labels = torch.arange(len(ys)) % 10
    method.train(True)
    for step in range(STEPS):
        method.set_lr(cfg.lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp):  # as loop.step does
            method.train_step(SourceBatch(xs[rows], ys[rows]), TargetBatch(xt[rows], index), step / STEPS)
    return {name: {k: v.detach().clone() for k, v in net.state_dict().items()}
            for name, net in method.networks().items()}


def _worker(rank, store, cases, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        results = {name: train(options, dtype, rank, WORLD) for name, (options, _, dtype) in cases.items()}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def run_two_processes(tmp_path, cases):
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(str(tmp_path / "store"), cases, out), nprocs=WORLD, start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(WORLD)]


def differences(a, b, atol=2e-5, rtol=1e-4):
    """The tensors of state ``a`` that differ from ``b`` beyond float tolerance."""
    return [f"{net}.{k}" for net in a for k in a[net]
            if not torch.allclose(a[net][k].double(), b[net][k].double(), atol=atol, rtol=rtol)]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    torch.set_num_threads(1)
    return run_two_processes(tmp_path_factory.mktemp("dist"), CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_on_the_same_global_batch(two_processes, case):
    options, should_match, dtype = CASES[case]
    single = train(options, dtype)
    rank0, rank1 = two_processes[0][case], two_processes[1][case]
    def weights(state):
        return {n: {k: v for k, v in s.items() if "running" not in k and "num_batches" not in k}
                for n, s in state.items()}

    # the weights are the same on every rank (averaged gradients) ...
    assert not differences(weights(rank0), weights(rank1))
    # ... and, with --sync-bn or without BatchNorm, they and the statistics are one process's
    found = differences(rank0, single)
    if should_match:
        assert not found, found
    else:
        assert found, "per-rank BatchNorm statistics matched one process: the test cannot tell them apart"


def test_sync_bn_reaches_the_domain_specific_batchnorm():
    method = build_method(Config(method="dann-dsbn", arch="mnist"), 10, "cpu")
    before = [(m.source.weight, m.target.running_mean) for m in method.model.modules()
              if isinstance(m, DomainBatchNorm2d)]
    distributed.convert_sync_batchnorm(method.model)
    layers = [m for m in method.model.modules() if isinstance(m, DomainBatchNorm2d)]
    assert layers and all(isinstance(m.source, distributed.SyncBatchNorm) and
                          isinstance(m.target, distributed.SyncBatchNorm) for m in layers)
    # the same Parameter and buffer objects: the optimizer built before still trains them
    assert [(m.source.weight, m.target.running_mean) for m in layers] == before
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in method.model.modules())


def test_sync_batchnorm_is_plain_batchnorm_in_one_process():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(4)
    sync = distributed.convert_sync_batchnorm(nn.BatchNorm2d(4))
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_unknown_distribute_path_is_refused():
    method = build_method(Config(method="dann", arch="mnist"), 10, "cpu")
    method.distribute = "magic"
    with pytest.raises(ValueError, match="distribute"):
        distributed.wrap(method, Config(), 2)


@pytest.fixture(scope="module")
def two_processes_slow(tmp_path_factory):
    torch.set_num_threads(1)
    return run_two_processes(tmp_path_factory.mktemp("dist_slow"), SLOW_CASES)


def test_ddp_with_compile_matches_one_process(two_processes_slow):
    options, _, dtype = SLOW_CASES["dann-ddp-compile"]
    found = differences(two_processes_slow[0]["dann-ddp-compile"], train(dict(options, compile=False), dtype))
    assert not found, found


def test_ddp_with_amp_matches_one_process(two_processes_slow):
    # bfloat16 autocast (--amp, here on the CPU): each rank's half of the batch in bfloat16, the
    # gradients averaged in float32, against one process with the whole batch under autocast.
    # bfloat16 GEMMs reduce over other row splits, so the tolerance is bfloat16's, and the
    # weights must have moved by more than it (else the comparison could not fail).
    options, _, dtype = SLOW_CASES["dann-ddp-amp"]
    one = train(options, dtype)
    atol = 1e-3
    found = differences(two_processes_slow[0]["dann-ddp-amp"], one, atol=atol, rtol=0)
    assert not found, found
    assert differences(two_processes_slow[1]["dann-ddp-amp"], two_processes_slow[0]["dann-ddp-amp"], 0, 0) == []
    torch.manual_seed(0)
    start = build_method(Config(arch="mnist", method="dann"), 10, "cpu").model.state_dict()
    moved = max((one["model"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 10 * atol, moved


def test_torchrun_ddp_sync_bn_resume_is_bit_exact_and_other_world_sizes_are_refused(tmp_path, data_dir,
                                                                                    assert_same_outputs):
    """fit() under 2-process torchrun with DDP and --sync-bn (DSBN: BatchNorm buffers in
    the checkpoint) and --rollback (rank 0's check broadcast; any decrease rolls back):
    interrupted and resumed gives what an uninterrupted run gives; a 1-process resume of
    the 2-process checkpoint is refused."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")

    def torchrun(out, *extra):
        with socket.socket() as s:  # a free port: other test runs on this machine may hold a fixed one
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "grl_cuda.train", "--task", "mnist-mnistm", "--method", "dann-dsbn", "--sync-bn", "--steps",
               "20", "--log-every", "5", "--eval-every", "10", "--rollback", "1e-9", "--rollback-every", "5", "--no-plots", "--data-dir", data_dir, "--out",
               str(tmp_path / out), *extra]
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)

    straight = torchrun("straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    broken = torchrun("broken", "--stop-after", "10")
    assert broken.returncode == 1 and "interrupted at step 10" in broken.stderr, broken.stderr[-3000:]
    cfg = Config(task="mnist-mnistm", method="dann-dsbn", sync_bn=True, steps=20, log_every=5, eval_every=10,
                 rollback=1e-9, rollback_every=5, plots=False, data_dir=data_dir, out=str(tmp_path / "broken"), resume=True)
    with pytest.raises(runs.CheckpointError, match="written by 2 process"):
        fit(cfg, progress=False)
    resumed = torchrun("broken", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_outputs(str(tmp_path / "straight"), str(tmp_path / "broken"))
