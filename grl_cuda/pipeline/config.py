"""Every option of a training run, in one dataclass.

Each field's metadata says everything the pipeline needs to know about it: its
command-line flag and help (cli.py builds the parser from them), whether it
*defines the run* (a checkpoint resumes, and a finished run is reused, only by a
run that agrees on every such option: ``same_run``), and which methods read it
(a finished run is reused even if options its method never reads differ). The
saved config is ``dataclasses.asdict``. Adding a hyper-parameter is adding a field.
"""

import argparse
import dataclasses

NORMALIZATIONS = ("domain", "mean")
DANN_FAMILY = ("dann", "dann-dsbn")


class UserError(Exception):
    """An error in what the user asked for: reported as one line, no traceback."""


def option(default, help, group, *, defines_run=False, read_by=None, flag=None, type=None, choices=None,
           action=None, settled=False):
    """A Config field. ``group``: the --help section (None: not on the command line).
    ``flag``: the flag if not --field-name (e.g. --no-plots for a store_false switch).
    ``read_by``: the methods that read it (None: all). ``settled``: the loop fills it
    in, so a run not yet started cannot be compared on it."""
    meta = {"help": help, "group": group, "defines_run": defines_run, "read_by": read_by, "flag": flag,
            "type": type, "choices": choices, "action": action, "settled": settled}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Config:
    # -- data
    task: str = option("mnist-mnistm", "embedded task: {tasks}", "data", defines_run=True)
    source: str = option(None, "labeled source: an .npz (x: uint8 N,H,W[,C] images or float N,D vectors; y: int "
                         "labels) or an ImageFolder directory (a sub-folder per class); 10%% held out as source "
                         "test. Several, comma-separated: multi-source (DANN: K-way domain loss)", "data",
                         defines_run=True)
    target: str = option(None, "target train .npz or ImageFolder (its labels are used only by target-only and "
                         "--target-labeled)", "data", defines_run=True)
    target_test: str = option(None, "target test .npz or ImageFolder", "data", defines_run=True)
    image_size: int = option(None, "ImageFolder images are resized to this square size (default: 224 with "
                             "--backbone, else 32)", "data", defines_run=True)
    target_labeled: int = option(0, "semi-supervised: K labeled target train samples per class (seeded by "
                                 "--seed, listed in summary.json; never from target test), their label loss added "
                                 "(source-only, sa, dann, dann-dsbn)", "data", defines_run=True)
    data_dir: str = option(None, "cache folder for embedded tasks (default: $GRL_CUDA_DATA or "
                           "~/.cache/grl_cuda/data)", "data")
    # -- method
    method: str = option("dann", "one of: {methods}", "method", defines_run=True)
    arch: str = option(None, "mnist or svhn (the paper's nets), shallow (vectors: the JMLR paper's one hidden "
                       "layer); default: mnist, shallow for vectors, --backbone's", "method", defines_run=True,
                       settled=True)
    backbone: str = option(None, "torchvision ResNet with tllib's bottleneck (256) and classifier head, for "
                           "ImageFolder data; trunk at 0.1x the learning rate when --weights", "method",
                           defines_run=True, choices=("resnet18", "resnet50"))
    weights: str = option(None, "local state_dict of the --backbone (e.g. ImageNet's, saved from torchvision); "
                          "no download at run time", "method", defines_run=True)
    steps: int = option(3000, "training steps", "method", defines_run=True)
    batch_size: int = option(64, "images per domain per step (the paper: 64 + 64)", "method", defines_run=True)
    lr: float = option(0.01, "mu_0 of the annealed learning rate", "method", defines_run=True)
    lr_anneal: bool = option(True, "constant learning rate", "method", defines_run=True, flag="--no-lr-anneal",
                             action="store_false")
    weight_decay: float = option(0.0, "SGD weight decay", "method", defines_run=True)
    normalize: str = option("domain", "domain: standardise each domain by its own train images' channel "
                            "mean/std; mean: subtract both domains' pooled mean (the paper)", "method",
                            defines_run=True, choices=NORMALIZATIONS)
    shift: int = option(3, "random translation of training images, in pixels (0: off, the paper)", "method",
                        defines_run=True)
    ema: float = option(0.0, "evaluate an exponential moving average of the weights with this decay, e.g. "
                        "0.999 (0: off, the paper)", "method", defines_run=True)
    gamma: float = option(10.0, "DANN: gamma of the lambda_p schedule", "method", defines_run=True,
                          read_by=DANN_FAMILY)
    lambda_max: float = option(1.0, "DANN: final lambda", "method", defines_run=True, read_by=DANN_FAMILY)
    alpha: float = option(0.1, "CGDM: weight of the pseudo-label loss", "method", defines_run=True,
                          read_by=("cgdm",))
    beta: float = option(0.01, "CGDM: weight of the gradient discrepancy", "method", defines_run=True,
                         read_by=("cgdm",))
    num_k: int = option(4, "CGDM/MCD: generator updates per step (step C)", "method", defines_run=True,
                        read_by=("cgdm", "mcd"))
    im_weight: float = option(0.1, "CGDM/MCD: information-maximisation weight", "method", defines_run=True,
                              read_by=("cgdm",))
    refresh_every: int = option(500, "CGDM: steps between pseudo-label refreshes", "method", defines_run=True,
                                read_by=("cgdm",))
    seed: int = option(0, "seed of weights, batches, augmentation and dropout", "method", defines_run=True)
    # -- run
    out: str = option("runs/run", "output folder", "run")
    device: str = option("cpu", "where to train", "run", choices=("cpu", "cuda"))
    amp: bool = option(False, "bfloat16 autocast (CUDA only)", "run", action="store_true")
    compile: bool = option(False, "torch.compile the networks", "run", action="store_true")
    threads: int = option(None, "torch CPU threads", "run")
    eval_every: int = option(500, "steps between evaluations on the test splits", "run")
    log_every: int = option(50, "steps between records in metrics.jsonl", "run")
    ckpt_every: int = option(500, "steps between checkpoints", "run")
    resume: bool = option(False, "continue from --out/checkpoint.pt", "run", action="store_true")
    plots: bool = option(True, "skip curves.png and tsne.png", "run", flag="--no-plots", action="store_false")
    stop_after: int = option(None, argparse.SUPPRESS, "run")  # tests: stop as if interrupted
    # -- set by the loop: the number of data-parallel processes
    world_size: int = option(1, "processes (set from torchrun's WORLD_SIZE)", None, defines_run=True, settled=True)
    # -- set by the loop from the task: the number of source domains (multi-source when > 1)
    source_domains: int = option(1, "source domains", None, defines_run=True, settled=True)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
RUN_DEFINING = tuple(name for name, f in FIELDS.items() if f.metadata["defines_run"])


def run_identity(cfg):
    """The options that define ``cfg``'s run, as a checkpoint stores them."""
    return {name: getattr(cfg, name) for name in RUN_DEFINING}


def saved_value(saved, name):
    """An option as a saved run recorded it; runs from before the option existed ran with its default."""
    return saved.get(name, FIELDS[name].default)


def run_differences(saved, cfg, *, before_fit=False):
    """{option: (saved value, value now)} over the options that define a run.

    ``before_fit``: ``cfg`` has not run yet, so the options the loop settles (arch,
    world_size) are not compared, nor options that ``cfg.method`` never reads (a
    source-only run is the same under any --lambda-max)."""
    diff = {}
    for name in RUN_DEFINING:
        meta, now, then = FIELDS[name].metadata, getattr(cfg, name), saved_value(saved, name)
        unread = meta["read_by"] is not None and cfg.method not in meta["read_by"]
        if before_fit and (meta["settled"] or unread):
            continue
        if then != now:
            diff[name] = (then, now)
    return diff


def same_run(saved, cfg, *, before_fit=False):
    """Whether a run saved with config ``saved`` (a dict) is ``cfg``'s run (see run_differences)."""
    return not run_differences(saved, cfg, before_fit=before_fit)


def describe(diff):
    return ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())


def from_saved(saved, **overrides):
    """A Config from a saved dict (summary.json's), unknown keys ignored, missing ones defaulted."""
    return Config(**{**{k: v for k, v in saved.items() if k in FIELDS}, **overrides})


def check(cfg):
    """Rejects values no run can use, naming the flag."""
    for name in ("steps", "batch_size", "eval_every", "log_every", "ckpt_every"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.normalize not in NORMALIZATIONS:
        raise UserError(f"unknown --normalize {cfg.normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")
    if cfg.shift < 0:
        raise UserError("--shift must be >= 0")
    if not 0.0 <= cfg.ema < 1.0:
        raise UserError(f"--ema must be in [0, 1) (0: off; e.g. 0.999), got {cfg.ema}")
    if cfg.weights and not cfg.backbone:
        raise UserError("--weights needs --backbone (resnet18 or resnet50)")
    if cfg.backbone and cfg.arch and cfg.arch != cfg.backbone:
        raise UserError(f"--arch {cfg.arch} and --backbone {cfg.backbone} disagree; give --backbone alone")
    if cfg.image_size is not None and cfg.image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {cfg.image_size}")
    if cfg.target_labeled < 0:
        raise UserError(f"--target-labeled must be >= 0, got {cfg.target_labeled}")
    if cfg.amp and cfg.device != "cuda":
        raise UserError("--amp needs --device cuda")
    if cfg.source or cfg.target or cfg.target_test:
        if not (cfg.source and cfg.target and cfg.target_test):
            raise UserError("--source, --target and --target-test go together (three .npz files)")
