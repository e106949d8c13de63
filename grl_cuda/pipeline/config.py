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
import os

NORMALIZATIONS = ("domain", "mean")
INPUT_NORMS = ("none", "instance")
OPTIMIZERS = ("sgd", "adam")
PASSES = ("joint", "separate")
DANN_FAMILY = ("dann", "dann-dsbn", "dann-mcc", "cdan", "cdan-e")  # the methods on DANN's lambda_p schedule
CDAN_FAMILY = ("cdan", "cdan-e")
VADA_FAMILY = ("vada", "dirt-t")
ADVERSARIAL = DANN_FAMILY + VADA_FAMILY  # the methods with DANN's domain classifier
CDAN_MAPS = ("auto", "multilinear", "randomized")


# The pipeline's recommended configuration: what `grl_cuda.train --recommended` sets (flags given
# beside it still win) and the "recommended" row of `grl_cuda.results`. Chosen by the seed-0 probes
# of docs/dann_probes_mnist_mnistm.md (sessions 6-7) over the six embedded tasks: DANN+MCC at weight
# 0.2, the one configuration above source only on all six (plain DANN is below it on Syn -> MNIST,
# CDAN+E on max-BG, MCC alone on MNIST -> MNIST-M).
RECOMMENDED = {"method": "dann-mcc", "mcc_weight": 0.2, "input_norm": "instance", "ema": 0.999, "rollback": 0.05}


class UserError(Exception):
    """An error in what the user asked for: reported as one line, no traceback."""


def option(default, help, group, *, defines_run=False, read_by=None, flag=None, type=None, choices=None,
           action=None, settled=False, only_with=None, before=dataclasses.MISSING):
    """A Config field. ``group``: the --help section (None: not on the command line).
    ``flag``: the flag if not --field-name (e.g. --no-plots for a store_false switch).
    ``read_by``: the methods that read it (None: all). ``settled``: the loop fills it
    in, so a run not yet started cannot be compared on it. ``only_with``: another
    option without which this one is not read (e.g. nothing reads --no-rollback-collapse
    without --rollback). ``before``: what runs saved before the option existed did,
    when that is not its default."""
    meta = {"help": help, "group": group, "defines_run": defines_run, "read_by": read_by, "flag": flag,
            "type": type, "choices": choices, "action": action, "settled": settled, "only_with": only_with,
            "before": default if before is dataclasses.MISSING else before}
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
    image_size: int = option(None, "images of --source/--target/--target-test are resized to this square size "
                             "(default: ImageFolder 224 with --backbone, else 32; .npz 32)", "data", defines_run=True)
    target_labeled: int = option(0, "semi-supervised: K labeled target train samples per class (seeded by "
                                 "--seed, listed in summary.json; never from target test), their label loss added "
                                 "(source-only, sa, dann, dann-dsbn)", "data", defines_run=True)
    data_dir: str = option(None, "cache folder for embedded tasks (default: $GRL_CUDA_DATA or "
                           "~/.cache/grl_cuda/data)", "data")
    # -- method
    method: str = option("dann", "one of: {methods}", "method", defines_run=True)
    arch: str = option(None, "mnist or svhn (the paper's nets), mnist-bn (the MNIST net with BatchNorm after "
                       "every convolution and hidden layer), shallow (vectors: the JMLR paper's one hidden layer); "
                       "default: mnist, shallow for vectors, --backbone's", "method", defines_run=True, settled=True)
    backbone: str = option(None, "torchvision ResNet with tllib's bottleneck (256) and classifier head, for "
                           "ImageFolder data; trunk at 0.1x the learning rate when --weights", "method",
                           defines_run=True, choices=("resnet18", "resnet50"))
    weights: str = option(None, "local state_dict of the --backbone (e.g. ImageNet's, saved from torchvision); "
                          "no download at run time", "method", defines_run=True)
    input_norm: str = option("none", "instance: standardise each image per channel over its own pixels before "
                             "the first convolution (VADA's instance-normalised inputs); none: off", "method",
                             defines_run=True, choices=INPUT_NORMS)
    optimizer: str = option("sgd", "sgd (the paper: momentum 0.9) or adam; --lr is its initial learning rate",
                            "method", defines_run=True, choices=OPTIMIZERS)
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
    invert: float = option(0.0, "random intensity inversion: each training image (source and target) negated "
                           "after standardisation with this probability, e.g. 0.5 (French et al. 2018's intensity "
                           "flip; 0: off)", "method", defines_run=True)
    ema: float = option(0.0, "evaluate an exponential moving average of the weights with this decay, e.g. "
                        "0.999 (0: off, the paper)", "method", defines_run=True)
    gamma: float = option(10.0, "DANN: gamma of the lambda_p schedule", "method", defines_run=True,
                          read_by=DANN_FAMILY)
    lambda_max: float = option(1.0, "DANN: final lambda", "method", defines_run=True, read_by=DANN_FAMILY)
    passes: str = option("joint", "DANN: joint (one forward pass over source + target rows, the paper) or "
                         "separate (one pass per domain, so BatchNorm normalises each by its own batch)",
                         "method", defines_run=True, read_by=ADVERSARIAL, choices=PASSES)
    rollback: float = option(0.0, "adversarial methods: when the held-out source accuracy falls more than this "
                             "below its best (checked every --rollback-every steps), return to the last good weights "
                             "and halve lambda for the rest of the run (0: off; e.g. 0.05)", "method",
                             defines_run=True, read_by=ADVERSARIAL)
    rollback_every: int = option(250, "adversarial methods: steps between the --rollback checks", "method",
                                 defines_run=True, read_by=ADVERSARIAL)
    rollback_collapse: bool = option(True, "adversarial methods with --rollback: a check fails on the source "
                                     "accuracy alone, not also on a collapse of the target predictions (the collapse "
                                     "monitor's uniform flag, or its target-collapse flag with the target marginal "
                                     "entropy fallen from its peak: pipeline/guard.py)", "method",
                                     flag="--no-rollback-collapse", action="store_false", defines_run=True,
                                     read_by=ADVERSARIAL, only_with="rollback", before=False)
    disc_hidden: str = option("", "DANN: the domain classifier's hidden widths, e.g. 1024,1024 (default: the "
                              "paper's for the architecture)", "method", defines_run=True, read_by=ADVERSARIAL)
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
    cdan_map: str = option("auto", "CDAN: the discriminator's input, features (x) predictions: multilinear (the "
                           "outer product), randomized (random projections of both, multiplied), auto: randomized "
                           "above 4096 values", "method", defines_run=True, read_by=CDAN_FAMILY, choices=CDAN_MAPS)
    cdan_random_dim: int = option(1024, "CDAN: width d of the randomized map", "method", defines_run=True,
                                  read_by=CDAN_FAMILY)
    mcc_temperature: float = option(2.5, "MCC: temperature of the target predictions", "method", defines_run=True,
                                    read_by=("mcc", "dann-mcc"))
    mcc_weight: float = option(1.0, "MCC: weight of the class-confusion loss", "method", defines_run=True,
                               read_by=("mcc", "dann-mcc"))
    vada_lambda_d: float = option(0.01, "VADA: weight of the domain loss (the reversal's constant lambda)", "method",
                                  defines_run=True, read_by=VADA_FAMILY)
    vada_lambda_s: float = option(1.0, "VADA: weight of VAT on source", "method", defines_run=True,
                                  read_by=VADA_FAMILY)
    vada_lambda_t: float = option(0.01, "VADA: weight of target conditional entropy + VAT on target", "method",
                                  defines_run=True, read_by=VADA_FAMILY)
    vat_eps: float = option(3.5, "VADA: VAT radius (L2 norm of the adversarial perturbation per image)", "method",
                            defines_run=True, read_by=VADA_FAMILY)
    vat_xi: float = option(1e-2, "VADA: VAT's finite-difference step of the power iteration (the authors: 1e-6, "
                           "which float32 rounds to noise)", "method",
                           defines_run=True, read_by=VADA_FAMILY)
    dirtt_start: float = option(0.5, "DIRT-T: fraction of --steps trained as VADA before the refinement", "method",
                                defines_run=True, read_by=("dirt-t",))
    dirtt_beta: float = option(0.01, "DIRT-T: weight of the KL to the teacher (beside --vada-lambda-t on the target terms)",
                               "method", defines_run=True, read_by=("dirt-t",))
    dirtt_refresh: int = option(500, "DIRT-T: steps between teacher refreshes during the refinement", "method",
                                defines_run=True, read_by=("dirt-t",))
    seed: int = option(0, "seed of weights, batches, augmentation and dropout", "method", defines_run=True)
    init_from: str = option(None, "start from the evaluated weights (the average with --ema) of the finished run "
                            "in this folder: every network the two methods share, of the same shapes; "
                            "optimizers, schedules and steps start afresh (e.g. DIRT-T's refinement of a DANN "
                            "run: --method dirt-t --dirtt-start 0 --init-from RUN)", "method", defines_run=True)
    # -- run
    out: str = option("runs/run", "output folder", "run")
    device: str = option("cpu", "where to train", "run", choices=("cpu", "cuda"))
    amp: bool = option(False, "bfloat16 autocast of the training step (CUDA; on the CPU too, where it pays only "
                       "with AMX/bf16 instructions)", "run", action="store_true")
    compile: bool = option(False, "torch.compile every network and the parts the step calls (forward and "
                           "backward; max-pools stay ATen's kernels), in training mode, and the optimizer step; on the "
                           "CPU the speed-up measured is --channels-last's (README, Benchmarks)", "run",
                           action="store_true")
    channels_last: bool = option(False, "convolution weights, and so activations, in channels-last memory "
                                 "format (faster oneDNN convolutions and pooling on the CPU)", "run",
                                 action="store_true")
    threads: int = option(None, "torch CPU threads", "run")
    sync_bn: bool = option(False, "torchrun: BatchNorm (also domain-specific) on the statistics of the whole "
                           "batch over all processes, not each process's share (no effect in one process)",
                           "run", defines_run=True, action="store_true")
    ddp: bool = option(True, "torchrun: average gradients by the explicit all-reduce after the backward even "
                       "for methods DistributedDataParallel serves (for comparison)", "run", flag="--no-ddp",
                       action="store_false")
    eval_every: int = option(500, "steps between evaluations on the test splits", "run")
    log_every: int = option(50, "steps between records in metrics.jsonl", "run")
    ckpt_every: int = option(500, "steps between checkpoints", "run")
    resume: bool = option(False, "continue from --out/checkpoint.pt", "run", action="store_true")
    collapse_window: int = option(500, "steps a collapse sign must last to be flagged (metrics' warning, the bar's "
                                  "WARN, summary.json's collapse)", "run")
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
    """An option as a saved run recorded it; runs from before the option existed ran with its default,
    or the behaviour its ``before`` names."""
    return saved.get(name, FIELDS[name].metadata["before"])


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
        if meta["only_with"] and (unread or not (getattr(cfg, meta["only_with"]) or saved_value(saved, meta["only_with"]))):
            continue  # read by neither run (e.g. --no-rollback-collapse of a source-only run, or without --rollback)
        if then != now:
            diff[name] = (then, now)
    return diff


def same_run(saved, cfg, *, before_fit=False):
    """Whether a run saved with config ``saved`` (a dict) is ``cfg``'s run (see run_differences)."""
    return not run_differences(saved, cfg, before_fit=before_fit)


def describe(diff):
    return ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())


def from_saved(saved, **overrides):
    """A Config from a saved dict (summary.json's), unknown keys ignored, missing ones as the run
    behaved before the option existed (saved_value)."""
    return Config(**{**{k: saved_value(saved, k) for k in FIELDS}, **overrides})


def disc_hidden(cfg):
    """--disc-hidden as a tuple of widths (empty: the architecture's default)."""
    widths = tuple(int(w) for w in cfg.disc_hidden.split(",") if w.strip()) if cfg.disc_hidden else ()
    if any(w <= 0 for w in widths):
        raise ValueError(cfg.disc_hidden)
    return widths


def check(cfg):
    """Rejects values no run can use, naming the flag."""
    for name in ("steps", "batch_size", "eval_every", "log_every", "ckpt_every", "collapse_window", "cdan_random_dim",
                 "dirtt_refresh", "rollback_every", "num_k"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.normalize not in NORMALIZATIONS:
        raise UserError(f"unknown --normalize {cfg.normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")
    if cfg.shift < 0:
        raise UserError("--shift must be >= 0")
    if not 0.0 <= cfg.invert <= 1.0:
        raise UserError(f"--invert must be a probability in [0, 1], got {cfg.invert}")
    if not 0.0 <= cfg.rollback < 1.0:
        raise UserError(f"--rollback must be in [0, 1) (an accuracy drop; 0: off; e.g. 0.05), got {cfg.rollback}")
    if not 0.0 <= cfg.ema < 1.0:
        raise UserError(f"--ema must be in [0, 1) (0: off; e.g. 0.999), got {cfg.ema}")
    for name, allowed in (("input_norm", INPUT_NORMS), ("optimizer", OPTIMIZERS), ("passes", PASSES)):
        if getattr(cfg, name) not in allowed:
            raise UserError(f"unknown --{name.replace('_', '-')} {getattr(cfg, name)!r}; choose from: "
                            f"{', '.join(allowed)}")
    try:
        disc_hidden(cfg)
    except ValueError:
        raise UserError(f"--disc-hidden must be positive widths separated by commas, e.g. 1024,1024; "
                        f"got {cfg.disc_hidden!r}") from None
    if cfg.cdan_map not in CDAN_MAPS:
        raise UserError(f"unknown --cdan-map {cfg.cdan_map!r}; choose from: {', '.join(CDAN_MAPS)}")
    if cfg.mcc_temperature <= 0:
        raise UserError(f"--mcc-temperature must be positive, got {cfg.mcc_temperature}")
    if cfg.vat_eps < 0 or cfg.vat_xi <= 0:
        raise UserError(f"--vat-eps must be >= 0 and --vat-xi > 0, got {cfg.vat_eps} and {cfg.vat_xi}")
    if not 0.0 <= cfg.dirtt_start < 1.0:
        raise UserError(f"--dirtt-start must be in [0, 1), got {cfg.dirtt_start}")
    if cfg.rollback and cfg.method == "dirt-t" and int(cfg.dirtt_start * cfg.steps) == 0:
        raise UserError(f"--rollback watches DIRT-T's VADA phase, and --dirtt-start {cfg.dirtt_start} of "
                        f"--steps {cfg.steps} leaves none: drop --rollback or raise --dirtt-start")
    if cfg.init_from is not None and os.path.realpath(cfg.init_from) == os.path.realpath(cfg.out):
        raise UserError(f"--init-from {cfg.init_from} is this run's own --out: a fresh run starts by clearing it; "
                        "give the earlier run another folder (--resume continues a run)")
    if cfg.weights and not cfg.backbone:
        raise UserError("--weights needs --backbone (resnet18 or resnet50)")
    if cfg.backbone and cfg.arch and cfg.arch != cfg.backbone:
        raise UserError(f"--arch {cfg.arch} and --backbone {cfg.backbone} disagree; give --backbone alone")
    if cfg.image_size is not None and cfg.image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {cfg.image_size}")
    if cfg.target_labeled < 0:
        raise UserError(f"--target-labeled must be >= 0, got {cfg.target_labeled}")
    if cfg.source or cfg.target or cfg.target_test:
        if not (cfg.source and cfg.target and cfg.target_test):
            raise UserError("--source, --target and --target-test go together (three .npz files)")
