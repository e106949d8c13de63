"""The reference training pipeline: one loop shared by every method.

    python -m grl_cuda.train --task mnist-mnistm --method dann --steps 3000 --seed 0 --out runs/m2mm
    python -m grl_cuda.train --source src.npz --target tgt.npz --target-test tgt_test.npz --method dann --out runs/custom
    torchrun --nproc_per_node=2 -m grl_cuda.train --task mnist-mnistm --method dann --out runs/ddp

Writes to --out: metrics.jsonl (one record per log step and evaluation),
summary.json (final numbers, config, versions), checkpoint.pt (everything needed
to resume bit-exactly; written atomically every --ckpt-every steps and on
SIGINT/SIGTERM), curves.png and tsne.png.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from . import data as data_mod
from . import diagnostics, models
from .methods import METHODS, get_method
from .schedules import annealed_lr

CHECKPOINT_VERSION = 1
# Options that change what is computed: a checkpoint only resumes a run that agrees on all of them.
RUN_DEFINING = ("task", "source", "target", "target_test", "method", "arch", "steps", "batch_size", "lr",
                "weight_decay", "gamma", "lambda_max", "lr_anneal", "seed", "alpha", "beta", "num_k",
                "im_weight", "refresh_every", "world_size", "normalize", "shift", "ema")
NORMALIZATIONS = ("domain", "mean")


class UserError(Exception):
    """An error in what the user asked for: reported as one line, no traceback."""


class CheckpointError(UserError):
    pass


@dataclasses.dataclass
class Config:
    task: str = "mnist-mnistm"
    source: str = None
    target: str = None
    target_test: str = None
    method: str = "dann"
    arch: str = None
    steps: int = 3000
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.0
    gamma: float = 10.0
    lambda_max: float = 1.0
    lr_anneal: bool = True
    normalize: str = "domain"
    shift: int = 3
    ema: float = 0.0
    seed: int = 0
    out: str = "runs/run"
    device: str = "cpu"
    amp: bool = False
    compile: bool = False
    eval_every: int = 500
    log_every: int = 50
    ckpt_every: int = 500
    resume: bool = False
    data_dir: str = None
    plots: bool = True
    threads: int = None
    stop_after: int = None
    # CGDM / MCD
    alpha: float = 0.1
    beta: float = 0.01
    num_k: int = 4
    im_weight: float = 0.1
    refresh_every: int = 500
    world_size: int = 1

    def run_defining(self):
        return {k: getattr(self, k) for k in RUN_DEFINING}

    @staticmethod
    def saved_value(saved, key):
        """An option as a saved run recorded it; runs from before the option existed
        ran with its default."""
        return saved.get(key, getattr(Config, key))


# ---- data ----------------------------------------------------------------------------------------

def load_data(cfg):
    if cfg.source or cfg.target or cfg.target_test:
        if not (cfg.source and cfg.target and cfg.target_test):
            raise UserError("--source, --target and --target-test go together (three .npz files)")
        task = data_mod.task_from_npz(cfg.source, cfg.target, cfg.target_test)
    else:
        task = data_mod.load_task(cfg.task, cfg.data_dir)
    return task


def to_tensors(task, device, rank=0, world=1, normalize="domain"):
    """uint8 NHWC -> float NCHW in [0, 1], then per channel:

    - ``domain``: each domain standardised by its own training split's mean and std
      (the target's from its unlabeled train images). On the small embedded tasks this
      lifts every method, and it removes the brightness/contrast part of the shift
      before the adversary sees it.
    - ``mean``: minus the mean of both training splits together (the paper's only
      preprocessing).

    Training splits are sharded over ranks."""
    if normalize not in NORMALIZATIONS:
        raise UserError(f"unknown --normalize {normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")

    def channel_stats(*splits):
        pixels = np.concatenate([s.x.reshape(-1, 3) for s in splits]).astype(np.float64) / 255.0
        std = pixels.std(0) if normalize == "domain" else np.ones(3)
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)  # noqa: E731
        return as_tensor(pixels.mean(0)), as_tensor(np.maximum(std, 1e-6))

    if normalize == "domain":
        stats = {"source": channel_stats(task.source_train), "target": channel_stats(task.target_train)}
    else:
        both = channel_stats(task.source_train, task.target_train)
        stats = {"source": both, "target": both}
    out = {}
    for name in ("source_train", "source_test", "target_train", "target_test"):
        split = getattr(task, name)
        x, y = split.x, split.y
        if world > 1 and name.endswith("_train"):
            x, y = x[rank::world], y[rank::world]
        mean, std = stats[name.split("_")[0]]
        xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
        out[name] = (xt.sub_(mean).div_(std).contiguous().to(device), torch.from_numpy(y).long().to(device))
    return out


def random_shift(x, max_shift, generator):
    """Translates each image by its own random offset of up to ``max_shift`` pixels
    (bilinear, edges repeated): light augmentation that keeps a tiny training set from
    being memorised by the label and domain classifiers alike."""
    if max_shift <= 0 or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    offsets = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = offsets[:, 0] * 2 / w  # affine_grid works in [-1, 1] coordinates
    theta[:, 1, 2] = offsets[:, 1] * 2 / h
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False).to(x.device, x.dtype)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


class WeightAverage:
    """An exponential moving average of every network's parameters and floating
    buffers (Polyak averaging), which evaluation uses when ``--ema`` > 0: adversarial
    training oscillates, and an average of recent weights is steadier than the last
    ones. ``decay`` 0.999 averages over roughly the last thousand steps."""

    def __init__(self, networks, decay):
        self.networks, self.decay = networks, decay
        self.shadow = {name: {k: v.detach().clone() for k, v in net.state_dict().items()}
                       for name, net in networks.items()}

    @torch.no_grad()
    def update(self):
        for name, net in self.networks.items():
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    self.shadow[name][k].lerp_(v, 1.0 - self.decay)
                else:
                    self.shadow[name][k].copy_(v)  # counters such as BatchNorm's num_batches_tracked

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the networks hold the averaged weights; then their own again."""
        own = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in self.networks.items()}
        for name, net in self.networks.items():
            net.load_state_dict(self.shadow[name])
        try:
            yield
        finally:
            for name, net in self.networks.items():
                net.load_state_dict(own[name])

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state):
        for name in self.shadow:
            for k, v in state[name].items():
                self.shadow[name][k].copy_(v)


class EpochSampler:
    """Shuffled epochs of batch indices from a seeded generator; its state goes in the checkpoint."""

    def __init__(self, n, batch_size, seed):
        if n == 0:
            raise UserError("a training split is empty")
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self):
        parts, count = [], 0
        while count < self.batch_size:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.gen)
                self.pos = 0
            take = min(self.batch_size - count, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            count += take
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state_dict(self):
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])
        self.perm = s["perm"].clone()
        self.pos = s["pos"]


# ---- checkpoints ---------------------------------------------------------------------------------

def rng_state():
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path):
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def load_checkpoint(path, cfg):
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}). "
                              "Delete it to start over.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a grl_cuda checkpoint of version {CHECKPOINT_VERSION}")
    saved = ckpt["config"]
    diff = {k: (Config.saved_value(saved, k), v) for k, v in cfg.run_defining().items()
            if Config.saved_value(saved, k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {path} belongs to a different run ({detail}). "
                              "Use the same options, or another --out.")
    return ckpt


# ---- the loop ------------------------------------------------------------------------------------

def versions():
    import grl_cuda

    return {"python": platform.python_version(), "torch": torch.__version__, "grl_cuda": grl_cuda.__version__,
            "numpy": np.__version__, "machine": platform.machine(), "processor": platform.processor(),
            "threads": torch.get_num_threads()}


@torch.no_grad()
def predicted_classes(method, x, domain, batch=512):
    """``method``'s predicted class of every image of ``x`` (images of ``domain``), in batches."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat([method.predict(x[i:i + batch], domain).argmax(1) for i in range(0, len(x), batch)])


def accuracy(method, x, y, domain):
    method.train(False)
    correct = (predicted_classes(method, x, domain) == y).sum().item()
    method.train(True)
    return correct / max(1, len(x))


class _StopFlag:
    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum


def train(cfg, progress=True):
    """Runs (or resumes) one training run; returns the summary dict."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        backend = "nccl" if cfg.device == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if cfg.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    cfg.world_size = world
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose from: {', '.join(sorted(METHODS))}")
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise UserError("--steps and --batch-size must be positive")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA GPU is available")
    if cfg.amp and cfg.device != "cuda":
        raise UserError("--amp needs --device cuda")
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)

    task = load_data(cfg)
    cfg.arch = cfg.arch or models.DEFAULT_ARCH.get(task.name, "mnist")
    if cfg.arch not in models.ARCHITECTURES:
        raise UserError(f"unknown --arch {cfg.arch!r}; choose from: {', '.join(models.ARCHITECTURES)}")
    if cfg.shift < 0:
        raise UserError("--shift must be >= 0")
    if not 0.0 <= cfg.ema < 1.0:
        raise UserError(f"--ema must be in [0, 1) (0: off; e.g. 0.999), got {cfg.ema}")
    tensors = to_tensors(task, device, rank, world, cfg.normalize)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    method = get_method(cfg.method)(cfg, models.model_factory(cfg.arch, task.num_classes), task.num_classes, device)
    if cfg.compile:
        for net in method.networks().values():
            net.compile()
    average = WeightAverage(method.networks(), cfg.ema) if cfg.ema else None
    evaluation_weights = average.swapped_in if average else contextlib.nullcontext
    per_rank_batch = cfg.batch_size // world
    src_sampler = EpochSampler(len(tensors["source_train"][1]), per_rank_batch, cfg.seed * 1000 + 2 * rank + 1)
    tgt_sampler = EpochSampler(len(tensors["target_train"][1]), per_rank_batch, cfg.seed * 1000 + 2 * rank + 2)
    torch.manual_seed(cfg.seed * 7919 + rank)  # dropout streams differ per rank

    os.makedirs(cfg.out, exist_ok=True)
    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    start = 0
    elapsed_before = 0.0
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, cfg)
        method.load_state_dict(ckpt["method"])
        if average:
            average.load_state_dict(ckpt["average"])
        per_rank = ckpt["per_rank"][rank]
        src_sampler.load_state_dict(per_rank["source_sampler"])
        tgt_sampler.load_state_dict(per_rank["target_sampler"])
        set_rng_state(per_rank["rng"])
        start = ckpt["step"]
        elapsed_before = ckpt.get("elapsed", 0.0)
        if rank == 0:  # drop records written after the checkpoint: the resumed run rewrites them
            lines = open(metrics_path).read().splitlines()[: ckpt["metrics_lines"]] if os.path.exists(metrics_path) else []
            with open(metrics_path, "w") as f:
                f.write("".join(line + "\n" for line in lines))
    elif rank == 0 and os.path.exists(metrics_path):
        os.remove(metrics_path)

    def write_record(record):
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def metrics_lines():
        if not os.path.exists(metrics_path):
            return 0
        with open(metrics_path) as f:
            return sum(1 for _ in f)

    def checkpoint(step):
        per_rank = {"source_sampler": src_sampler.state_dict(), "target_sampler": tgt_sampler.state_dict(),
                    "rng": rng_state()}
        gathered = [None] * world
        if distributed:
            dist.all_gather_object(gathered, per_rank)
        else:
            gathered = [per_rank]
        if rank == 0:
            save_atomic({"version": CHECKPOINT_VERSION, "config": cfg.run_defining(), "step": step,
                         "method": method.state_dict(), "average": average.state_dict() if average else None,
                         "per_rank": gathered, "metrics_lines": metrics_lines(),
                         "elapsed": elapsed_before + time.time() - t0}, ckpt_path)
        if distributed:
            dist.barrier()

    def evaluate(step):  # callers swap in the evaluation weights
        record = {"kind": "eval", "step": step,
                  "source_test_acc": accuracy(method, *tensors["source_test"], "source"),
                  "target_test_acc": accuracy(method, *tensors["target_test"], "target")}
        write_record(record)
        return record

    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading_is_main() else {}
    t0 = time.time()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"{cfg.method} {task.name}", dynamic_ncols=True,
                   mininterval=1.0)
    method.train(True)
    last = {}
    step = start
    interrupted = None
    try:
        if start == 0:  # a resumed run restores the pseudo labels etc. from the checkpoint
            extra = method.on_epoch(start, *tensors["target_train"])
            if extra:
                write_record({"kind": "refresh", "step": start, **extra})
        while step < cfg.steps:
            progress_p = step / cfg.steps
            method.set_lr(annealed_lr(progress_p, mu0=cfg.lr) if cfg.lr_anneal else cfg.lr)
            si, ti = src_sampler.next(), tgt_sampler.next()
            xs, ys = tensors["source_train"][0][si], tensors["source_train"][1][si]
            xt, yt = tensors["target_train"][0][ti], tensors["target_train"][1][ti]
            if cfg.shift:  # offsets from (seed, rank, step): a resumed run draws the same ones
                gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + rank) * 1_000_003 + step)
                xs, xt = random_shift(xs, cfg.shift, gen), random_shift(xt, cfg.shift, gen)
            if not method.uses_target_labels:
                yt = None  # target labels never reach a method that must not see them
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp):
                out = method.train_step(xs, ys, xt, yt, progress_p, target_index=ti)
            if average:
                average.update()
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                last = {k: float(v) for k, v in out.items()}
                last["lr"] = method.optimizers()[next(iter(method.optimizers()))].param_groups[0]["lr"]
                write_record({"kind": "train", "step": step, **last})
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in last.items()}, refresh=False)
            if bar is not None:
                bar.update(1)
            if cfg.refresh_every and step % cfg.refresh_every == 0 and step < cfg.steps:
                extra = method.on_epoch(step, *tensors["target_train"])
                if extra:
                    write_record({"kind": "refresh", "step": step, **extra})
            if step % cfg.eval_every == 0 and step < cfg.steps and rank == 0:
                with evaluation_weights():
                    rec = evaluate(step)
                if bar is not None:
                    bar.write(f"step {step}: source test {rec['source_test_acc']:.4f}, "
                              f"target test {rec['target_test_acc']:.4f}")
            stop_now = stop.signal is not None or (cfg.stop_after is not None and step >= cfg.stop_after)
            if distributed:
                flag = torch.tensor([1.0 if stop_now else 0.0])
                dist.all_reduce(flag)
                stop_now = bool(flag.item())
            if stop_now and step < cfg.steps:
                checkpoint(step)
                interrupted = stop.signal or "stop_after"
                break
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                checkpoint(step)
    finally:
        if bar is not None:
            bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)

    if interrupted is not None:
        if rank == 0:
            print(f"interrupted at step {step}; checkpoint saved to {ckpt_path}. "
                  f"Resume with the same command plus --resume.", file=sys.stderr)
        return {"interrupted": True, "step": step, "signal": interrupted}

    elapsed = elapsed_before + time.time() - t0
    summary = None
    if rank == 0:
        with evaluation_weights():  # everything reported is of the weights evaluated
            final = evaluate(cfg.steps)
            extra = method.final_metrics(tensors, final)
            fs = diagnostics.embed_all(method, tensors["source_test"][0], "source")
            ft = diagnostics.embed_all(method, tensors["target_test"][0], "target")
        summary = {
            "task": task.name, "method": cfg.method, "seed": cfg.seed, "steps": cfg.steps,
            "source_test_acc": final["source_test_acc"],
            "target_test_acc": final["target_test_acc"],
            "proxy_a_distance": diagnostics.proxy_a_distance(fs, ft, seed=cfg.seed),
            "train_seconds": elapsed,
            "images_per_second": cfg.steps * 2 * cfg.batch_size / max(elapsed, 1e-9),
            "sizes": task.sizes(), "config": dataclasses.asdict(cfg), "versions": versions(),
            **extra,
        }
        with open(os.path.join(cfg.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        save_atomic({"version": CHECKPOINT_VERSION, "config": cfg.run_defining(), "step": cfg.steps,
                     "method": method.state_dict(), "average": average.state_dict() if average else None,
                     "per_rank": [], "metrics_lines": metrics_lines(), "elapsed": elapsed}, ckpt_path)
        if cfg.plots:
            records = [json.loads(line) for line in open(metrics_path)]
            diagnostics.plot_curves(records, os.path.join(cfg.out, "curves.png"), f"{cfg.method} on {task.name}")
            diagnostics.plot_tsne([(f"{cfg.method}: source vs target test features", fs, ft)],
                                  os.path.join(cfg.out, "tsne.png"))
        print(f"{cfg.method} on {task.name} (seed {cfg.seed}, {cfg.steps} steps, {elapsed:.0f}s): "
              f"source test acc {summary['source_test_acc']:.4f}, target test acc {summary['target_test_acc']:.4f}, "
              f"proxy A-distance {summary['proxy_a_distance']:.2f}")
    if distributed:
        dist.barrier()
    return summary


def load_run(out, data_dir=None):
    """A finished run's (config, task, method with its final weights), on the CPU,
    in eval mode: for diagnostics after training."""
    summary_path, ckpt_path = os.path.join(out, "summary.json"), os.path.join(out, "checkpoint.pt")
    if not (os.path.exists(summary_path) and os.path.exists(ckpt_path)):
        raise UserError(f"{out} is not a finished run (no summary.json and checkpoint.pt)")
    with open(summary_path) as f:
        saved = json.load(f)["config"]
    fields = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: v for k, v in saved.items() if k in fields})
    cfg.device = "cpu"
    if data_dir is not None:
        cfg.data_dir = data_dir
    task = load_data(cfg)
    method = get_method(cfg.method)(cfg, models.model_factory(cfg.arch, task.num_classes), task.num_classes,
                                    torch.device("cpu"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    method.load_state_dict(ckpt["method"])
    if ckpt.get("average"):  # --ema: the averaged weights are the ones that were evaluated
        for name, net in method.networks().items():
            net.load_state_dict(ckpt["average"][name])
    method.train(False)
    return cfg, task, method


def threading_is_main():
    import threading

    return threading.current_thread() is threading.main_thread()


# ---- command line --------------------------------------------------------------------------------

def build_parser():
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m grl_cuda.train",
        description="Train a domain-adaptation method (DANN, CGDM, ...) on an embedded task or your own .npz files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--task", default=d.task, help=f"embedded task: {', '.join(data_mod.TASKS)}")
    g.add_argument("--source", help="labeled source .npz (x: uint8 N,H,W[,C]; y: int labels); 10%% held out as source test")
    g.add_argument("--target", help="target train .npz (its labels are used only by target-only)")
    g.add_argument("--target-test", help="target test .npz")
    g.add_argument("--data-dir", help="cache folder for embedded tasks (default: $GRL_CUDA_DATA or ~/.cache/grl_cuda/data)")
    g = p.add_argument_group("method")
    g.add_argument("--method", default=d.method, help=f"one of: {', '.join(sorted(METHODS))}")
    g.add_argument("--arch", help="mnist or svhn (the paper's nets); default: mnist")
    g.add_argument("--steps", type=int, default=d.steps, help="training steps")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="images per domain per step (the paper: 64 + 64)")
    g.add_argument("--lr", type=float, default=d.lr, help="mu_0 of the annealed learning rate")
    g.add_argument("--no-lr-anneal", dest="lr_anneal", action="store_false", help="constant learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--normalize", default=d.normalize, choices=NORMALIZATIONS,
                   help="domain: standardise each domain by its own train images' channel mean/std; "
                        "mean: subtract both domains' pooled mean (the paper)")
    g.add_argument("--shift", type=int, default=d.shift,
                   help="random translation of training images, in pixels (0: off, the paper)")
    g.add_argument("--ema", type=float, default=d.ema,
                   help="evaluate an exponential moving average of the weights with this decay, e.g. 0.999 "
                        "(0: off, the paper)")
    g.add_argument("--gamma", type=float, default=d.gamma, help="DANN: gamma of the lambda_p schedule")
    g.add_argument("--lambda-max", type=float, default=d.lambda_max, help="DANN: final lambda")
    g.add_argument("--alpha", type=float, default=d.alpha, help="CGDM: weight of the pseudo-label loss")
    g.add_argument("--beta", type=float, default=d.beta, help="CGDM: weight of the gradient discrepancy")
    g.add_argument("--num-k", type=int, default=d.num_k, help="CGDM/MCD: generator updates per step (step C)")
    g.add_argument("--im-weight", type=float, default=d.im_weight, help="CGDM/MCD: information-maximisation weight")
    g.add_argument("--refresh-every", type=int, default=d.refresh_every, help="CGDM: steps between pseudo-label refreshes")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("run")
    g.add_argument("--out", default=d.out, help="output folder")
    g.add_argument("--device", default=d.device, choices=["cpu", "cuda"])
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--eval-every", type=int, default=d.eval_every)
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    g.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="skip curves.png and tsne.png")
    g.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop as if interrupted
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = Config(**vars(args))
    try:
        summary = train(cfg)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"grl_cuda.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary and summary.get("interrupted"):
        return 130 if summary["signal"] == signal.SIGINT else 143 if summary["signal"] == signal.SIGTERM else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
