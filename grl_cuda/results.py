"""``python -m grl_cuda.results``: grl_cuda.pipeline.results at its first path."""

import sys

from .pipeline.results import main

if __name__ == "__main__":
    sys.exit(main())
