"""The command line of the training pipeline, built from config.Config's fields.

    python -m grl_cuda.train --task mnist-mnistm --method dann --steps 3000 --seed 0 --out runs/m2mm
    python -m grl_cuda.train --source src.npz --target tgt.npz --target-test tgt_test.npz --method dann --out runs/custom
    torchrun --nproc_per_node=2 -m grl_cuda.train --task mnist-mnistm --method dann --out runs/ddp
"""

import argparse
import signal
import sys

import torch.distributed as dist

from .config import FIELDS, RECOMMENDED, Config, UserError

GROUPS = {"data": "data", "method": "method and hyper-parameters", "run": "run"}


def flag_of(name):
    return FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


def help_of(name):
    from .data import TASKS
    from .methods import METHODS

    text = FIELDS[name].metadata["help"]
    if text == argparse.SUPPRESS:
        return text
    return text.replace("{tasks}", ", ".join(TASKS)).replace("{methods}", ", ".join(sorted(METHODS)))


def add_option(parser, name, **overrides):
    """Adds Config field ``name`` to ``parser`` as its metadata says (other commands,
    such as grl_cuda.results, reuse this for the options they pass on)."""
    field, meta = FIELDS[name], FIELDS[name].metadata
    kwargs = {"dest": name, "help": help_of(name)}
    if meta["action"]:
        kwargs["action"] = meta["action"]
    else:
        kwargs.update(default=field.default, type=meta["type"] or field.type)
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
    kwargs.update(overrides)
    parser.add_argument(flag_of(name), **kwargs)


def build_parser(recommended=False):
    """The train command's parser; ``recommended``: its defaults are RECOMMENDED's values."""
    parser = argparse.ArgumentParser(
        prog="python -m grl_cuda.train",
        description="Train a domain-adaptation method (DANN, CGDM, ...) on an embedded task or your own .npz files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for name, field in FIELDS.items():
        if field.metadata["group"] is not None:
            add_option(groups[field.metadata["group"]], name)
    preset = ", ".join(f"{flag_of(k)} {v}" for k, v in RECOMMENDED.items())
    groups["method"].add_argument("--recommended", action="store_true",
                                  help=f"the pipeline's recommended configuration: {preset} (flags given beside it win)")
    if recommended:
        parser.set_defaults(**RECOMMENDED)
    return parser


def parse_config(argv):
    """A Config from the train command's arguments (--recommended applied first)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser(recommended="--recommended" in argv).parse_args(argv))
    args.pop("recommended")
    return Config(**args)


def flags_markdown():
    """The README's table of flags, generated from Config (a test checks that they agree)."""
    rows = ["| flag | default | defines the run | help |", "|---|---|---|---|"]
    for name, field in FIELDS.items():
        text = help_of(name)
        if field.metadata["group"] is None or text == argparse.SUPPRESS:
            continue
        default = "" if field.metadata["action"] or field.default is None else f"`{field.default}`"
        text = text.replace("%%", "%").replace("|", "\\|")
        rows.append(f"| `{flag_of(name)}` | {default} | {'yes' if field.metadata['defines_run'] else ''} | {text} |")
    return "\n".join(rows)


def main(argv=None):
    from .loop import fit

    cfg = parse_config(argv)
    try:
        summary = fit(cfg)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"grl_cuda.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary and summary.get("interrupted"):
        return {signal.SIGINT: 130, signal.SIGTERM: 143}.get(summary["signal"], 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
