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

# Options added since that change existing methods, each with the value that reproduces the
# runs from before it (a saved config without the key reads as that value: saved_value).
ADDED_RUN_DEFINING = {"input_norm": "none", "optimizer": "sgd", "passes": "joint", "disc_hidden": "", "sync_bn": False,
                      "target_labeled": 0, "source_domains": 1, "invert": 0.0, "rollback": 0.0, "rollback_every": 250,
                      "rollback_collapse": False,  # the guard read the source accuracy alone before
                      "init_from": None}
# Options of settings added since (images with a backbone): no older run can have used them.
SETTINGS_OPTIONS = {"backbone", "weights", "image_size"}
# Options of methods added since (CDAN, MCC, VADA, DIRT-T): no older run can have used them.
NEW_METHODS_OPTIONS = {"cdan_map", "cdan_random_dim", "mcc_temperature", "mcc_weight", "vada_lambda_d",
                       "vada_lambda_s", "vada_lambda_t", "vat_eps", "vat_xi", "dirtt_start", "dirtt_beta",
                       "dirtt_refresh"}



def test_run_identity_is_what_checkpoints_have_always_stored_plus_defaulted_additions():
    expected = FIRST_RUN_DEFINING | set(ADDED_RUN_DEFINING) | NEW_METHODS_OPTIONS | SETTINGS_OPTIONS
    assert set(config.RUN_DEFINING) == expected
    assert set(config.run_identity(Config())) == expected
    for name, before in ADDED_RUN_DEFINING.items():
        assert config.saved_value({}, name) == before
    older = {k: v for k, v in config.run_identity(Config()).items() if k in FIRST_RUN_DEFINING}
    assert config.same_run(older, Config())  # an older checkpoint is still the same run


def test_parser_defaults_are_the_dataclass_defaults():
    parsed = cli.parse_config([])
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
    cfg = cli.parse_config(argv)
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
    for newer in ("normalize", "shift", "ema", "sync_bn"):  # added after the first checkpoints were written
        del saved[newer]
    assert config.same_run(saved, Config(arch="mnist"))
    assert config.run_differences(saved, Config(arch="mnist", ema=0.9)) == {"ema": (0.0, 0.9)}


def test_read_by_names_only_real_methods():
    from grl_cuda.pipeline.methods import METHODS

    for field in dataclasses.fields(Config):
        assert set(field.metadata["read_by"] or ()) <= set(METHODS), field.name


def test_recommended_sets_its_options_and_given_flags_win():
    cfg = cli.parse_config(["--recommended", "--task", "syn-mnist"])
    for name, value in config.RECOMMENDED.items():
        assert getattr(cfg, name) == value
    assert cfg.task == "syn-mnist"
    assert cli.parse_config(["--ema", "0.9", "--recommended"]).ema == 0.9  # a flag beside it wins, either order
    assert cli.parse_config([]) == Config()  # without it: the plain defaults
    for name in config.RECOMMENDED:
        assert name in config.FIELDS
