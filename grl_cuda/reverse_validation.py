"""``python -m grl_cuda.reverse_validation``: grl_cuda.pipeline.reverse_validation at its first path."""

import sys

from .pipeline.reverse_validation import main, reverse_validate

__all__ = ["main", "reverse_validate"]

if __name__ == "__main__":
    sys.exit(main())
