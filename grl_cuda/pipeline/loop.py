"""The training loop shared by every method: ``fit(cfg)``.

Writes to ``cfg.out``: metrics.jsonl (one record per log step, refresh and
evaluation), summary.json (final numbers, config, versions), checkpoint.pt
(everything needed to resume bit-exactly; written atomically every --ckpt-every
steps and on SIGINT/SIGTERM), curves.png and tsne.png.
"""

import contextlib
import dataclasses
import json
import os
import platform
import random
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from grl_cuda.schedules import annealed_lr

from . import config as config_mod
from . import diagnostics, distributed, guard, health, models, runs, speed
from .config import UserError
from .data import (EpochSampler, LabeledRows, LabeledTargetBatch, SemiSupervisedTargetBatch, SourceBatch, TargetBatch,
                   random_invert, random_shift, task_for, to_tensors)
from .evaluate import WeightAverage, evaluation_weights, final_metrics, test_accuracies
from .methods import METHODS, build_method, get_method


@dataclasses.dataclass
class Run:
    """Everything a run holds while it trains; its state goes in the checkpoint."""
    cfg: config_mod.Config
    task: object
    tensors: dict  # {split: (images, labels)}: labels stay here, methods get batches
    method: object
    average: WeightAverage
    samplers: dict  # {"source": EpochSampler, "target": EpochSampler[, "labeled": EpochSampler]}
    rank: int
    world: int
    log: runs.MetricsLog
    step: int = 0
    elapsed_before: float = 0.0
    t0: float = 0.0
    monitor: health.CollapseMonitor = None
    rollback: guard.Rollback = None  # --rollback on an adversarial method (guard.py)

    @property
    def distributed(self):
        return self.world > 1

    @property
    def checkpoint_path(self):
        return os.path.join(self.cfg.out, runs.CHECKPOINT)

    def elapsed(self):
        return self.elapsed_before + time.time() - self.t0


def fit(cfg, progress=True):
    """Trains (or with ``cfg.resume`` resumes) one run; returns its summary dict.

    Algorithm 1 of Ganin & Lempitsky (2015), with the method's update in place of the
    DANN step: each step takes a labeled source batch and an unlabeled target batch,
    anneals the learning rate (mu_p), and lets the method update its networks."""
    run = setup(cfg)
    with stop_on_signals() as stop, progress_bar(run, progress) as bar:
        if run.step == 0:  # a resumed run restores pseudo labels etc. from its checkpoint
            refresh(run)
        while run.step < cfg.steps:
            source, target = batch(run)
            losses = step(run, source, target)
            run.step += 1
            log(run, losses, bar, target)
            if due(run, cfg.refresh_every):
                refresh(run)
            if run.rollback and run.step == run.method.guarded_steps():
                check_guard(run, bar, final=True)  # the last check: keep the last good weights if better
            elif run.rollback and run.step < run.method.guarded_steps() and due(run, cfg.rollback_every):
                check_guard(run, bar)
            if due(run, cfg.eval_every) and run.rank == 0:
                evaluate(run, bar)
            if stop_requested(run, stop) and run.step < cfg.steps:
                checkpoint(run)
                break
            if due(run, cfg.ckpt_every):
                checkpoint(run)
    if run.step < cfg.steps:
        return interrupted(run, stop.signal or "stop_after")
    return finish(run)


# ---- the steps -----------------------------------------------------------------------------------

def batch(run):
    """The next source batch (with labels) and target batch (without, unless the method
    is the target-only bound), augmented by offsets drawn from (seed, rank, step) so
    that a resumed run draws the same ones."""
    cfg, si, ti = run.cfg, run.samplers["source"].next(), run.samplers["target"].next()
    (xs, ys), (xt, yt) = run.tensors["source_train"], run.tensors["target_train"]
    xs, xt = xs[si], xt[ti]
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + run.rank) * 1_000_003 + run.step)
    if cfg.shift:
        xs, xt = random_shift(xs, cfg.shift, gen), random_shift(xt, cfg.shift, gen)
    if cfg.invert:
        xs, xt = random_invert(xs, cfg.invert, gen), random_invert(xt, cfg.invert, gen)
    if run.method.uses_target_labels:
        target = LabeledTargetBatch(xt, ti, yt[ti])
    elif "labeled" in run.samplers:  # --target-labeled: the K-per-class rows, apart from the unlabeled batch
        li = run.samplers["labeled"].next()
        xl, yl = run.tensors["target_labeled"]
        xl = random_shift(xl[li], cfg.shift, gen) if cfg.shift else xl[li]
        xl = random_invert(xl, cfg.invert, gen) if cfg.invert else xl
        target = SemiSupervisedTargetBatch(xt, ti, labeled=LabeledRows(xl, yl[li]))
    else:
        target = TargetBatch(xt, ti)
    domain = run.tensors["source_domain"][si] if "source_domain" in run.tensors else None
    return SourceBatch(xs, ys[si], domain), target


def step(run, source, target):
    """One update of the method's networks at progress p = step / steps."""
    cfg, progress = run.cfg, run.step / run.cfg.steps
    run.method.set_lr(annealed_lr(progress, mu0=cfg.lr) if cfg.lr_anneal else cfg.lr)
    with torch.autocast("cuda" if cfg.device == "cuda" else "cpu", dtype=torch.bfloat16, enabled=cfg.amp):
        losses = run.method.train_step(source, target, progress)
    if run.average:
        run.average.update()
    return losses


def log(run, losses, bar, target):
    if run.step % run.cfg.log_every == 0 or run.step == run.cfg.steps:
        record = {k: float(v) for k, v in losses.items()}
        record["lr"] = float(next(iter(run.method.optimizers().values())).param_groups[0]["lr"])  # a tensor under --compile
        record.update(health.target_prediction_stats(run.method, target.x))
        record = {"kind": "train", "step": run.step, **record}
        warning = run.monitor.update(record)
        if warning:
            record["warning"] = ",".join(warning)
        run.log.write(record)
        if bar is not None:
            postfix = {k: f"{v:.3g}" for k, v in record.items() if k not in ("kind", "step", "warning")}
            bar.set_postfix({**postfix, **({"WARN": record["warning"]} if warning else {})}, refresh=False)
    if bar is not None:
        bar.update(1)


def refresh(run):
    """The method's refresh hook on the target train images; pseudo labels it returns
    are logged as their accuracy, which only the loop can compute."""
    extra = run.method.refresh(run.step, run.tensors["target_train"][0])
    if "pseudo_labels" in extra:
        pseudo = extra.pop("pseudo_labels")
        extra["pseudo_label_acc"] = (pseudo == run.tensors["target_train"][1]).float().mean().item()
    if extra:
        run.log.write({"kind": "refresh", "step": run.step, **extra})


def check_guard(run, bar, final=False):
    # the monitor's flags describe these weights only when its window holds no record from before a rollback
    fresh = all(r["step"] > run.rollback.restored_at for r in run.monitor.recent)
    record = run.rollback.check(run.step, run.tensors, final=final, active_flags=run.monitor.active if fresh else None)
    if run.rank == 0:
        run.log.write(record)
        if bar is not None and "rollback_to" in record:
            then = "" if final else f", lambda x{record['lambda_scale']:g} from now on"
            marginal = record.get("target_marginal_entropy")
            why = (f"the target predictions collapsed ({record['collapse']}; their marginal entropy "
                   f"{'n/a' if marginal is None else f'{marginal:.2f}'} of log K)" if record.get("collapse") else
                   f"source validation accuracy {record['source_val_acc']:.4f} against {run.rollback.best_acc:.4f}")
            bar.write(f"step {run.step}: {why}: rolled back to step {record['rollback_to']}{then}")


def evaluate(run, bar):
    with evaluation_weights(run.average):
        record = test_accuracies(run.method, run.tensors, run.step)
    run.log.write(record)
    if bar is not None:
        bar.write(f"step {run.step}: source test {record['source_test_acc']:.4f}, "
                  f"target test {record['target_test_acc']:.4f}")
    return record


def due(run, every):
    return bool(every) and run.step % every == 0 and run.step < run.cfg.steps


def stop_requested(run, stop):
    """A signal arrived (or --stop-after was reached) on any rank."""
    now = stop.signal is not None or (run.cfg.stop_after is not None and run.step >= run.cfg.stop_after)
    if run.distributed:
        flag = torch.tensor([1.0 if now else 0.0])
        dist.all_reduce(flag)
        now = bool(flag.item())
    return now


def checkpoint(run):
    per_rank = {f"{name}_sampler": sampler.state_dict() for name, sampler in run.samplers.items()}
    per_rank["rng"] = runs.rng_state()
    gathered = [None] * run.world
    if run.distributed:
        dist.all_gather_object(gathered, per_rank)
    else:
        gathered = [per_rank]
    if run.rank == 0:
        runs.write_checkpoint(run.checkpoint_path, run.cfg, run.step, run.method, run.average, gathered,
                              run.log.lines(), run.elapsed(), run.rollback)
    if run.distributed:
        dist.barrier()


def interrupted(run, why):
    if run.rank == 0:
        print(f"interrupted at step {run.step}; checkpoint saved to {run.checkpoint_path}. "
              f"Resume with the same command plus --resume.", file=sys.stderr)
    return {"interrupted": True, "step": run.step, "signal": why}


# ---- set-up ----------------------------------------------------------------------------------------

def setup(cfg):
    """Data, networks and samplers of ``cfg``'s run, restored from its checkpoint with
    --resume. The order of the seeded calls is part of the checkpoint format."""
    rank, world = init_distributed(cfg)
    config_mod.check(cfg)
    check_resources(cfg, world)
    task = task_for(cfg)
    settle(cfg, task)
    device = torch.device(cfg.device)
    tensors = to_tensors(task, device, rank, world, cfg.normalize)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    method = build_method(cfg, task.num_classes, device, task.image_shape)
    if cfg.init_from and not cfg.resume:  # a resumed run's checkpoint holds its weights
        loaded, its_task = runs.load_initial_weights(method, cfg)
        if rank == 0:
            print(f"--init-from {cfg.init_from} ({its_task}): {', '.join(loaded)} loaded", file=sys.stderr)
    speed.prepare_networks(method, cfg)  # --channels-last, --compile
    distributed.wrap(method, cfg, world)  # --sync-bn, DistributedDataParallel
    per_rank_batch = cfg.batch_size // world
    samplers = {domain: EpochSampler(len(tensors[f"{domain}_train"][1]), per_rank_batch,
                                     cfg.seed * 1000 + 2 * rank + k) for k, domain in ((1, "source"), (2, "target"))}
    if "target_labeled" in tensors:  # every rank draws from all K-per-class rows, its own order
        n_labeled = len(tensors["target_labeled"][1])
        samplers["labeled"] = EpochSampler(n_labeled, min(per_rank_batch, n_labeled),
                                           cfg.seed * 1000 + 2 * rank + 1_000_003)
    torch.manual_seed(cfg.seed * 7919 + rank)  # dropout streams differ per rank
    os.makedirs(cfg.out, exist_ok=True)
    average = WeightAverage(method.networks(), cfg.ema) if cfg.ema else None
    run = Run(cfg, task, tensors, method, average, samplers, rank, world, runs.MetricsLog(cfg.out, rank))
    run.monitor = health.CollapseMonitor(health.window_records(cfg.collapse_window, cfg.log_every))
    if cfg.rollback and cfg.method in config_mod.ADVERSARIAL:
        run.rollback = guard.Rollback(cfg.rollback, method, average, rank, world,
                                      monitor=run.monitor if cfg.rollback_collapse else None)
    if cfg.resume:
        restore(run, runs.read_checkpoint(run.checkpoint_path, cfg))
    else:
        run.log.keep_first(0)
    run.method.train(True)
    run.t0 = time.time()
    return run


def restore(run, ckpt):
    if not ckpt["per_rank"]:  # the final checkpoint keeps no sampler or RNG state
        raise runs.CheckpointError(f"{run.checkpoint_path} is the final checkpoint of a finished run: nothing to "
                                   "resume. Drop --resume to train again, or use another --out.")
    run.method.load_state_dict(ckpt["method"])
    if run.average:
        run.average.load_state_dict(ckpt["average"])
    mine = ckpt["per_rank"][run.rank]
    for name, sampler in run.samplers.items():
        sampler.load_state_dict(mine[f"{name}_sampler"])
    runs.set_rng_state(mine["rng"])
    if run.rollback:
        run.rollback.load_state_dict(ckpt["guard"])
    run.step, run.elapsed_before = ckpt["step"], ckpt.get("elapsed", 0.0)
    run.log.keep_first(ckpt["metrics_lines"])
    if run.rank == 0:  # the collapse monitor's state is a function of the records kept
        run.monitor.replay(r for r in run.log.records() if r.get("kind") == "train")


def settle(cfg, task):
    """The options the task decides: the architecture when --arch is not given (the
    shallow net for vectors), the number of source domains."""
    cfg.arch = cfg.backbone or cfg.arch or ("shallow" if task.vectors else models.DEFAULT_ARCH.get(task.name, "mnist"))
    if task.vectors != (cfg.arch == "shallow"):
        kind = "vectors" if task.vectors else "images"
        raise UserError(f"--arch {cfg.arch} does not read {kind}; for {kind} use "
                        f"{'shallow' if task.vectors else 'mnist, svhn or --backbone'}")
    cfg.source_domains = task.source_domains


def init_distributed(cfg):
    """(rank, world) under torchrun (gloo on CPU, nccl on CUDA), else (0, 1); sets cfg.world_size."""
    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if cfg.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    cfg.world_size = world
    return rank, world


def check_resources(cfg, world):
    method = get_method(cfg.method)  # an unknown method fails before any data is built
    if cfg.target_labeled and not method.supports_target_labeled:
        supported = sorted(name for name, m in METHODS.items() if m.supports_target_labeled)
        raise UserError(f"--method {cfg.method} does not use --target-labeled; methods that do: "
                        f"{', '.join(supported)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA GPU is available")
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set ``.signal`` instead of killing the run (the loop then checkpoints)."""
    class Stop:
        signal = None

        def __call__(self, signum, frame):
            self.signal = signum

    stop = Stop()
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def progress_bar(run, enabled):
    bar = None
    if enabled and run.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=run.cfg.steps, initial=run.step, desc=f"{run.cfg.method} {run.task.name}",
                   dynamic_ncols=True, mininterval=1.0)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


# ---- the end ---------------------------------------------------------------------------------------

def finish(run):
    """Final evaluation, summary.json, the final checkpoint and the plots (rank 0)."""
    cfg, elapsed, summary = run.cfg, run.elapsed(), None
    if run.rank == 0:
        with evaluation_weights(run.average):  # everything reported is of the weights evaluated
            final = test_accuracies(run.method, run.tensors, cfg.steps)
            run.log.write(final)
            extra, features = final_metrics(run.method, run.tensors, final, cfg.seed)
        summary = {"task": run.task.name, "method": cfg.method, "seed": cfg.seed, "steps": cfg.steps,
                   "source_test_acc": final["source_test_acc"], "target_test_acc": final["target_test_acc"],
                   "proxy_a_distance": extra.pop("proxy_a_distance"), "train_seconds": elapsed,
                   "images_per_second": cfg.steps * 2 * cfg.batch_size / max(elapsed, 1e-9),
                   "sizes": run.task.sizes(), "collapse": collapse_summary(run),
                   "rollback": run.rollback.summary() if run.rollback else None, "config": dataclasses.asdict(cfg),
                   "versions": versions(), **extra}
        if run.task.target_labeled is not None:  # which target train rows' labels training read
            summary["target_labeled_rows"] = run.task.target_labeled.tolist()
        with open(os.path.join(cfg.out, runs.SUMMARY), "w") as f:
            json.dump(summary, f, indent=2)
        runs.write_checkpoint(run.checkpoint_path, cfg, cfg.steps, run.method, run.average, [], run.log.lines(),
                              elapsed, run.rollback)
        if cfg.plots:
            plot(run, features)
        print(f"{cfg.method} on {run.task.name} (seed {cfg.seed}, {cfg.steps} steps, {elapsed:.0f}s): "
              f"source test acc {summary['source_test_acc']:.4f}, target test acc {summary['target_test_acc']:.4f}, "
              f"proxy A-distance {summary['proxy_a_distance']:.2f}")
        for flag, seen in summary["collapse"]["flags"].items():
            print(f"collapse warning {flag}: steps {seen['first']}-{seen['last']} (see metrics.jsonl 'warning')",
                  file=sys.stderr)
    if run.distributed:
        dist.barrier()
    return summary


def collapse_summary(run):
    """The monitor's summary, its flags at the end those of the weights reported: after a final
    rollback, of the state restored (None: not known; the flags seen in training stay, with their steps)."""
    summary = run.monitor.summary()
    if run.rollback and run.rollback.ended_on_rollback(run.cfg.steps):
        summary.update(at_end=run.rollback.flags_at_best, at_end_of_step=run.rollback.best_step)
    return summary


def plot(run, features):
    name, title = run.cfg.method, f"{run.cfg.method} on {run.task.name}"
    diagnostics.plot_curves(run.log.records(), os.path.join(run.cfg.out, "curves.png"), title)
    diagnostics.plot_tsne([(f"{name}: source vs target test features", *features)],
                          os.path.join(run.cfg.out, "tsne.png"))


def versions():
    import grl_cuda

    return {"python": platform.python_version(), "torch": torch.__version__, "grl_cuda": grl_cuda.__version__,
            "numpy": np.__version__, "machine": platform.machine(), "processor": platform.processor(),
            "threads": torch.get_num_threads()}
