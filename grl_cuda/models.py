"""grl_cuda.pipeline.models at its first path, while grl_cuda/__init__.py still
imports ``models`` (the paper's nets belong to the pipeline, not the library)."""

from .pipeline.models import *  # noqa: F401,F403
