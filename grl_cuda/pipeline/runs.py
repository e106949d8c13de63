"""A run's folder: the checkpoint (written by one function, read by one), the
metrics log, and reloading a finished run.

checkpoint.pt, version 1 (unchanged since the first release, so every checkpoint
written before still loads):

    version        1
    config         the options that define the run (config.run_identity)
    step           steps done
    method         Method.state_dict(): networks, optimizers, extra (e.g. pseudo labels)
    average        WeightAverage.state_dict() with --ema, else None
    per_rank       one dict per rank: source_sampler, target_sampler, rng (empty once finished)
    metrics_lines  records of metrics.jsonl written by then
    elapsed        training seconds by then
    guard          --rollback's state (guard.Rollback.state_dict()), else None; absent in
                   checkpoints written before --rollback existed (they ran without it)
"""

import json
import os
import random

import numpy as np
import torch

from . import config as config_mod
from .config import UserError

CHECKPOINT_VERSION = 1
CHECKPOINT, SUMMARY, METRICS = "checkpoint.pt", "summary.json", "metrics.jsonl"


class CheckpointError(UserError):
    pass


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


def write_checkpoint(path, cfg, step, method, average, per_rank, metrics_lines, elapsed, guard=None):
    """The one place a checkpoint is built (schema in the module's doc)."""
    save_atomic({"version": CHECKPOINT_VERSION, "config": config_mod.run_identity(cfg), "step": step,
                 "method": method.state_dict(), "average": average.state_dict() if average else None,
                 "per_rank": per_rank, "metrics_lines": metrics_lines, "elapsed": elapsed,
                 "guard": guard.state_dict() if guard else None}, path)


def read_checkpoint(path, cfg, *, what="--resume"):
    """The one place a checkpoint is read: the dict, checked to be ours, of a version
    we read, and of ``cfg``'s run; otherwise a CheckpointError that says why."""
    if not os.path.exists(path):
        raise CheckpointError(f"{what}: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}). "
                              "Delete it to start over.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        found = ckpt.get("version") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path} is not a grl_cuda checkpoint of version {CHECKPOINT_VERSION} "
                              f"(found {found!r})")
    diff = config_mod.run_differences(ckpt["config"], cfg)
    if "world_size" in diff:  # refused, not handled: samplers and RNG streams are saved per rank
        then, now = diff["world_size"]
        raise CheckpointError(f"checkpoint {path} was written by {then} process(es), this run has {now}: resume "
                              f"with the same total (torchrun --nnodes x --nproc_per_node = {then}); each rank's "
                              "data order, augmentation and dropout streams are saved per rank")
    if diff:
        raise CheckpointError(f"checkpoint {path} belongs to a different run ({config_mod.describe(diff)}). "
                              "Use the same options, or another --out.")
    return ckpt


class MetricsLog:
    """metrics.jsonl: one JSON record a line, written by rank 0 only."""

    def __init__(self, folder, rank):
        self.path, self.rank = os.path.join(folder, METRICS), rank

    def write(self, record):
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def lines(self):
        if not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            return sum(1 for _ in f)

    def keep_first(self, n):
        """Drops records written after a checkpoint (a resumed run rewrites them); 0: a fresh log."""
        if self.rank != 0 or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = f.read().splitlines()[:n]
        with open(self.path, "w") as f:
            f.write("".join(line + "\n" for line in kept))

    def records(self):
        if not os.path.exists(self.path):  # nothing logged yet (stopped before the first record)
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f]


def finished_config(out):
    """The saved config (a dict) of the finished run in ``out``, or None if there is none."""
    path = os.path.join(out, SUMMARY)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("config", {})


def load_run(out, data_dir=None):
    """A finished run's (config, task, method with its evaluated weights), on the CPU,
    in eval mode: for diagnostics after training."""
    from . import data as data_mod
    from .methods import build_method

    saved = finished_config(out)
    if saved is None or not os.path.exists(os.path.join(out, CHECKPOINT)):
        raise UserError(f"{out} is not a finished run (no summary.json and checkpoint.pt)")
    cfg = config_mod.from_saved(saved, device="cpu", resume=False)
    if data_dir is not None:
        cfg.data_dir = data_dir
    ckpt = read_checkpoint(os.path.join(out, CHECKPOINT), cfg, what=out)
    task = data_mod.task_for(cfg)
    method = build_method(cfg, task.num_classes, torch.device("cpu"), task.image_shape)
    method.load_state_dict(ckpt["method"])
    if ckpt.get("average"):  # --ema: the averaged weights are the ones that were evaluated
        for name, net in method.networks().items():
            net.load_state_dict(ckpt["average"][name])
    method.train(False)
    return cfg, task, method


# Options whose difference makes another run's weights see other inputs than they were trained on.
INPUT_OPTIONS = ("input_norm", "normalize", "image_size")


def load_initial_weights(method, cfg):
    """--init-from: loads into ``method`` the evaluated weights (the average with --ema) of the
    finished run in ``cfg.init_from``, every network the two methods share by name; returns
    their names. Refused, saying why, when that folder holds no finished run, when the runs
    preprocess their inputs differently, or when a shared network does not fit."""
    folder = cfg.init_from
    saved = finished_config(folder)
    path = os.path.join(folder, CHECKPOINT)
    if saved is None or not os.path.exists(path):
        raise UserError(f"--init-from {folder}: not a finished run (no summary.json and checkpoint.pt)")
    differ = {name: (config_mod.saved_value(saved, name), getattr(cfg, name)) for name in INPUT_OPTIONS
              if config_mod.saved_value(saved, name) != getattr(cfg, name)}
    if differ:
        raise UserError(f"--init-from {folder}: that run's inputs were preprocessed otherwise "
                        f"({config_mod.describe(differ)}); its weights would see other inputs. "
                        "Use the same --input-norm and --normalize.")
    ckpt = read_checkpoint(path, config_mod.from_saved(saved), what=f"--init-from {folder}")
    weights = ckpt["average"] or ckpt["method"]["networks"]  # --ema: the averaged weights were evaluated
    shared = [name for name in method.networks() if name in weights]
    if not shared:
        raise UserError(f"--init-from {folder}: its {saved.get('method')!r} run has no network that "
                        f"{cfg.method!r} has (it has {', '.join(weights)}; this run {', '.join(method.networks())})")
    for name in shared:
        try:
            method.networks()[name].load_state_dict(weights[name])
        except RuntimeError as exc:  # its first line is a header; the next names the first misfit
            lines = [line.strip() for line in str(exc).strip().splitlines()]
            detail = lines[1] if len(lines) > 1 else lines[0]
            options = (f"arch {saved.get('arch')!r} vs {cfg.arch!r}" if name == "model" else
                       f"method {saved.get('method')!r} vs {cfg.method!r}, --disc-hidden "
                       f"{saved.get('disc_hidden')!r} vs {cfg.disc_hidden!r}")
            raise UserError(f"--init-from {folder}: its {name!r} network does not fit this run's "
                            f"({options}): {detail}") from None
    return shared, saved.get("task")

