"""``python -m grl_cuda.train``: the training pipeline's command (grl_cuda.pipeline.cli),
kept at its first path for the README's commands and scripts."""

import sys

from .pipeline.cli import main
from .pipeline.config import Config, UserError
from .pipeline.loop import fit as train
from .pipeline.runs import CheckpointError, load_run

__all__ = ["main", "train", "Config", "UserError", "CheckpointError", "load_run"]

if __name__ == "__main__":
    sys.exit(main())
