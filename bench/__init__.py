"""grl_cuda benchmarks: `python -m bench --help`."""
