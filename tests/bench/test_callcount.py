"""tools/callcount.py: every layer it counts runs its loop (valgrind itself is not
needed here; the counts are measured by hand, see the README's speed section)."""

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location("callcount", os.path.join(ROOT, "tools", "callcount.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_layer_runs_its_loop(keep_threads):
    tool = _tool()
    names = list(tool._layers())
    assert {"grl_cuda", "grl_cuda.GradientReversal", "pytorch-adapt", "no layer (baseline)"} <= set(names)
    for name in names:
        tool._child(name, calls=2, size=10)
