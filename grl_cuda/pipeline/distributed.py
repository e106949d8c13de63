"""Data-parallel training over ``torch.distributed``: the one place where a method's
networks are wrapped, its gradients averaged over ranks and its BatchNorm synchronised.

A method says how it is distributed with its class attribute ``distribute``:

``"ddp"``
    One backward per step: the method computes its loss in ``Method.losses`` and the
    base class's ``train_step`` does zero_grad / backward / step. ``wrap`` puts a
    ``DistributedDataParallel`` around ``Losses``, a module that owns the method's
    networks and whose forward is ``method.losses``: every submodule call inside
    (``model.features``, ``model.classifier``, the domain head) then runs inside DDP's
    forward, so its reducer expects the backward, all-reduces gradients in buckets
    while the backward still runs, and writes them as views of its buckets (no second
    copy). ``find_unused_parameters`` stays False unless the method sets
    ``find_unused_parameters = True`` (needed by a method whose loss skips some
    parameter in a step, e.g. a DANN subclass that leaves the domain head out): with
    False, a parameter without a gradient is DDP's error at the next step, never a
    silent skip. Source-only, target-only, SA, DANN and DANN-DSBN reach every
    parameter in every step (DSBN: every batch has source and target rows, so both
    BatchNorms of each layer are used).

``"explicit"``
    Steps DDP cannot express: CGDM's gradient discrepancy (``autograd.grad`` with
    ``create_graph=True``, then a backward through it: DDP's reducer only averages
    gradients accumulated into ``.grad`` by a first-order backward; pytorch issues
    #47562, wrong gradients with a gradient penalty, and #63812, create_graph under
    DDP) and MCD/CGDM's three optimiser steps on different parameter subsets per step.
    After each backward the method calls ``Method.sync_grads`` on the parameters that
    backward trained; ``reduce_gradients`` averages them with
    asynchronous all-reduces over buckets of at most ``BUCKET_BYTES``, all launched
    before the first is awaited.

BatchNorm without ``--sync-bn``: a training step normalises each rank's rows by that
rank's own batch statistics (``batch_size / world`` images per domain). Running
statistics: DDP broadcasts rank 0's buffers before each forward (its default), so
every rank holds rank 0's, estimated from rank 0's shards; on the explicit path each
rank keeps its own. Evaluation and checkpoints use rank 0's. With ``--sync-bn``
(``convert_sync_batchnorm``) batch statistics are the global batch's and the running
statistics the same on every rank.
"""

import torch
import torch.distributed as dist
from torch import nn

PATHS = ("ddp", "explicit")
BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb


def active():
    """Whether this process is one of several (torchrun with WORLD_SIZE > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Losses(nn.Module):
    """What DDP wraps for a "ddp" method: the method's networks as submodules, and a
    forward that is the method's ``losses`` (so their calls run inside DDP's forward)."""

    def __init__(self, method):
        super().__init__()
        self.nets = nn.ModuleDict(method.networks())
        self._method = (method,)  # a tuple: not registered as a submodule

    def forward(self, source, target, progress):
        return self._method[0].losses(source, target, progress)


def wrap(method, cfg, world):
    """Prepares ``method`` for ``world`` processes: --sync-bn, then DDP for "ddp"
    methods (unless --no-ddp). Called once by the loop after the networks are built;
    a no-op in a single process."""
    if method.distribute not in PATHS:
        raise ValueError(f"{type(method).__name__}.distribute must be one of {PATHS}, got {method.distribute!r}")
    if world <= 1:
        return method
    if cfg.sync_bn:
        for net in method.networks().values():
            convert_sync_batchnorm(net)
    if method.distribute == "ddp" and cfg.ddp:
        device_ids = [torch.cuda.current_device()] if cfg.device == "cuda" else None
        method.ddp = nn.parallel.DistributedDataParallel(
            Losses(method), device_ids=device_ids, find_unused_parameters=method.find_unused_parameters,
            gradient_as_bucket_view=True)
    return method


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of every rank's copy of the sum
    is the sum of the ranks' gradients (itself through this Function, so a double
    backward works too: CGDM's gradient discrepancy through synchronised BatchNorm)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad)


def all_reduce_sum(t):
    return _AllReduceSum.apply(t)


def mean_over_ranks(t):
    """The average of ``t`` over ranks, differentiable (its backward sums the
    gradients of every rank): for a loss term that is not a mean over samples (a
    function of a batch mean, of a gradient), so that each rank computes it on the
    global batch as one process would. ``t`` itself in one process."""
    if not active():
        return t
    return all_reduce_sum(t) / dist.get_world_size()


def reduce_gradients(params, bucket_bytes=None):
    """Averages the gradients of ``params`` over ranks in place (the explicit path):
    one asynchronous all-reduce per bucket of consecutive gradients, all in flight
    before the first wait. Parameters without a gradient are skipped (every rank must
    have the same ones: the same step code runs everywhere)."""
    if not active():
        return
    bucket_bytes = bucket_bytes or BUCKET_BYTES
    grads = [p.grad for p in params if p.grad is not None]
    buckets, current, size = [], [], 0
    for g in grads:
        if current and size + g.numel() * g.element_size() > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(g)
        size += g.numel() * g.element_size()
    if current:
        buckets.append(current)
    flats = [torch.cat([g.reshape(-1) for g in bucket]) for bucket in buckets]
    handles = [dist.all_reduce(flat, async_op=True) for flat in flats]
    world = dist.get_world_size()
    for bucket, flat, handle in zip(buckets, flats, handles):
        handle.wait()
        flat /= world
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


# ---- synchronised BatchNorm --------------------------------------------------------------------------

class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the whole data-parallel batch, for CPU tensors (gloo): PyTorch's
    nn.SyncBatchNorm only runs on GPUs. Training batch statistics are all-reduced
    (sum and count, then the sum of squared deviations from the global mean) through
    differentiable all-reduces, so gradients flow to every rank's inputs as in a
    single process on the concatenated batch; running statistics are updated from
    the global ones (unbiased variance), so all ranks hold the same. Out of training,
    or in one process, it is a plain BatchNorm."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x):
        if not (self.training and active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        sums = all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        if n == 0:  # no rank has rows (a source absent from every rank's batch: DomainBatchNorm2d)
            return x
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / (n - 1), factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module):
    """Replaces every BatchNorm{1,2,3}d inside ``module`` (also the two inside each
    models.DomainBatchNorm2d) by a synchronised one that keeps its parameters (the
    same Parameter objects: optimizers stay valid) and buffers: PyTorch's
    nn.SyncBatchNorm for CUDA modules, ``SyncBatchNorm`` above for CPU ones. Returns
    ``module`` (or its replacement, if ``module`` itself is a BatchNorm)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (nn.SyncBatchNorm, SyncBatchNorm)):
        on_cuda = any(t.is_cuda for t in module.parameters()) or any(t.is_cuda for t in module.buffers())
        if on_cuda:
            return nn.SyncBatchNorm.convert_sync_batchnorm(module)
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            module.add_module(name, converted)
    return module
