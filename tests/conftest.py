import pytest
import torch

import grl_cuda  # noqa: F401  (registers the ops)

from tests.utils import DEVICES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_configure(config):
    for marker, meaning in (("slow", "trains a model or runs a subprocess; `-m 'not slow'` skips it"),
                            ("cuda", "needs a CUDA GPU"),
                            ("emu", "runs the CUDA kernels through the emulated host build")):
        config.addinivalue_line("markers", f"{marker}: {meaning}")
