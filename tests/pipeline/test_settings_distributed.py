"""Multi-source dann-dsbn in data-parallel training: 2 CPU processes (gloo, DDP,
--sync-bn) against one process on the same global batch, where one source is
missing from one rank's batch and another source from every batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grl_cuda.pipeline import distributed
from grl_cuda.pipeline.config import Config
from grl_cuda.pipeline.data import SourceBatch, TargetBatch
from grl_cuda.pipeline.methods import build_method

pytestmark = pytest.mark.slow

WORLD, PER_RANK, STEPS, SOURCES = 2, 8, 2, 3
# source ids of the global batch's source rows: rank 0 holds sources 0 and 1, rank 1 only
# source 0 (its source-1 BatchNorm sees no row), and no rank holds source 2
IDS = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1] + [0] * 8)


def train(rank=0, world=1):
    gen = torch.Generator().manual_seed(1)
    n = WORLD * PER_RANK
    xs, ys, xt = (torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen),
                  torch.randn(n, 3, 32, 32, generator=gen) * 2 + 1)
    cfg = Config(method="dann-dsbn", arch="mnist", batch_size=n, world_size=world, sync_bn=True,
                 source_domains=SOURCES)
    torch.manual_seed(0)
    method = build_method(cfg, 10, "cpu")
    distributed.wrap(method, cfg, world)
    rows = slice(rank * n // world, (rank + 1) * n // world)
    method.train(True)
    for step in range(STEPS):
        method.set_lr(cfg.lr)
        method.train_step(SourceBatch(xs[rows], ys[rows], IDS[rows]), TargetBatch(xt[rows]), step / STEPS)
    return {k: v.detach().clone() for k, v in method.model.state_dict().items()}


def _worker(rank, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.save(train(rank, WORLD), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_with_a_batchnorm_per_source(tmp_path):
    torch.set_num_threads(1)
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD, start_method="spawn")
    rank0, rank1 = (torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD))
    single = train()
    for k in single:
        assert torch.allclose(rank0[k].double(), single[k].double(), atol=2e-5, rtol=1e-4), k
        assert torch.allclose(rank1[k].double(), single[k].double(), atol=2e-5, rtol=1e-4), k
    layer = "extractor.1"  # the first DomainBatchNorm2d
    assert rank0[f"{layer}.more_sources.0.running_mean"].abs().sum() > 0  # source 1: rank 0's rows, on both ranks
    assert torch.equal(rank1[f"{layer}.more_sources.0.running_mean"], rank0[f"{layer}.more_sources.0.running_mean"])
    # source 2 is in no batch: its statistics are untouched (no NaN from a batch of no rows)
    assert torch.equal(rank0[f"{layer}.more_sources.1.running_mean"], torch.zeros(32))
    assert rank0[f"{layer}.more_sources.1.num_batches_tracked"] == 0
