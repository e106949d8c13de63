"""config.Config is the one place an option is declared: the command line, the saved
config, run identity and the README's table of flags all come from its fields."""

import dataclasses
import os
import re

from grl_cuda.pipeline import cli, config
from grl_cuda.pipeline.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What defined a run before Config's metadata said it (grl_cuda/train.py's RUN_DEFINING at
# e443322): the checkpoints written since carry exactly these keys.
FIRST_RUN_DEFINING = {"task", "source", "target", "target_test", "method", "arch", "steps", "batch_size", "lr",
                      "weight_decay", "gamma", "lambda_max", "lr_anneal", "seed", "alpha", "beta", "num_k",
                      "im_weight", "refresh_every", "world_size", "normalize", "shift", "ema"}


# Added since, each with a default that is how every earlier run ran (a checkpoint
# without the key reads as the default: config.saved_value).
ADDED_RUN_DEFINING = {"target_labeled", "source_domains", "image_size", "backbone", "weights"}


def test_run_identity_is_what_checkpoints_have_always_stored():
    assert set(config.RUN_DEFINING) == FIRST_RUN_DEFINING | ADDED_RUN_DEFINING
    assert set(config.run_identity(Config())) == FIRST_RUN_DEFINING | ADDED_RUN_DEFINING
    older = {k: v for k, v in config.run_identity(Config()).items() if k in FIRST_RUN_DEFINING}
    assert config.same_run(older, Config())  # an older checkpoint is still the same run


def test_parser_defaults_are_the_dataclass_defaults():
    parsed = Config(**vars(cli.build_parser().parse_args([])))
    assert parsed == Config()


def test_every_command_line_field_has_a_flag_and_parses():
    argv, expected = [], {}
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if meta["group"] is None:
            continue
        flag = cli.flag_of(field.name)
        if meta["action"] == "store_true":
            argv.append(flag)
            expected[field.name] = True
        elif meta["action"] == "store_false":
            argv.append(flag)
            expected[field.name] = False
    argv += ["--lambda-max", "0.3", "--num-k", "2", "--normalize", "mean", "--arch", "svhn"]
    expected.update(lambda_max=0.3, num_k=2, normalize="mean", arch="svhn")
    cfg = Config(**vars(cli.build_parser().parse_args(argv)))
    for name, value in expected.items():
        assert getattr(cfg, name) == value, name
    assert "world_size" not in vars(cli.build_parser().parse_args([]))  # set by the loop, not a flag


def test_readme_flag_table_is_generated_from_config():
    readme = open(os.path.join(ROOT, "README.md")).read()
    found = re.search(r"<!-- flags:begin[^>]*-->\n(.*?)\n<!-- flags:end -->", readme, re.S)
    assert found, "README.md lost its flag table markers"
    assert found.group(1) == cli.flags_markdown(), (
        "README's table of flags disagrees with grl_cuda/pipeline/config.py; regenerate it with "
        "python -c 'from grl_cuda.pipeline.cli import flags_markdown; print(flags_markdown())'")


def test_run_differences_count_only_run_defining_options():
    saved = config.run_identity(Config(arch="mnist"))
    assert config.same_run(saved, Config(arch="mnist", out="elsewhere", threads=1, eval_every=7, plots=False))
    assert config.run_differences(saved, Config(arch="mnist", seed=1)) == {"seed": (0, 1)}
    assert config.run_differences(saved, Config(arch="svhn")) == {"arch": ("mnist", "svhn")}


def test_before_fit_ignores_what_the_loop_settles_and_what_the_method_never_reads():
    saved = config.run_identity(Config(method="source-only", arch="mnist", world_size=2))
    fresh = Config(method="source-only", lambda_max=0.3, alpha=0.5)  # arch None, world_size 1
    assert not config.same_run(saved, fresh)
    assert config.same_run(saved, fresh, before_fit=True)
    dann = config.run_identity(Config(method="dann", arch="mnist"))
    assert not config.same_run(dann, Config(method="dann", lambda_max=0.3), before_fit=True)
    assert not config.same_run(dann, Config(method="dann", shift=0), before_fit=True)  # every method reads it


def test_options_missing_from_old_saved_configs_take_their_defaults():
    saved = config.run_identity(Config(arch="mnist"))
    for newer in ("normalize", "shift", "ema"):  # added after the first checkpoints were written
        del saved[newer]
    assert config.same_run(saved, Config(arch="mnist"))
    assert config.run_differences(saved, Config(arch="mnist", ema=0.9)) == {"ema": (0.0, 0.9)}


def test_read_by_names_only_real_methods():
    from grl_cuda.pipeline.methods import METHODS

    for field in dataclasses.fields(Config):
        assert set(field.metadata["read_by"] or ()) <= set(METHODS), field.name
