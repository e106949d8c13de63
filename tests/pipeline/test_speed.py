"""--channels-last and --compile's preparation of the networks (pipeline/speed.py): the
opaque max-pool gives nn.MaxPool2d's values and gradients, eager and compiled (whole
graph), in both memory formats; prepare_networks swaps only the pools it can compute."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grl_cuda.pipeline import speed
from grl_cuda.pipeline.config import Config
from grl_cuda.pipeline.methods import build_method


def _pool_both(fn, x, k, s):
    x = x.detach().clone().requires_grad_()
    y = fn(x, k, s)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).contiguous(
        memory_format=torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else
        torch.contiguous_format)
    (y * g).sum().backward()
    return y, x.grad


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k, s, shape", [(2, 2, (4, 8, 28, 28)), (3, 2, (2, 5, 15, 15))])
def test_opaque_max_pool_matches_aten(channels_last, k, s, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x[0, 0, :2, :2] = 1.0  # a tie: the first maximum takes the gradient, as ATen's
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want_y, want_g = _pool_both(lambda t, k, s: F.max_pool2d(t, k, s), x, k, s)
    for fn in (speed.max_pool2d, torch.compile(speed.max_pool2d, fullgraph=True)):
        y, g = _pool_both(fn, x, k, s)
        assert torch.equal(y, want_y) and torch.equal(g, want_g)
        assert y.stride() == want_y.stride()


def test_compiled_relu_pool_graph_is_whole_and_exact():
    # what the MNIST extractor does around each pool, compiled with no graph break
    conv = nn.Conv2d(3, 4, 5).to(memory_format=torch.channels_last)
    x = torch.randn(6, 3, 16, 16)

    def f(x):
        return speed.max_pool2d(F.relu(conv(x)), 2, 2).sum()

    compiled = torch.compile(f, fullgraph=True)
    want = torch.autograd.grad(f(x), conv.weight)[0]
    got = torch.autograd.grad(compiled(x), conv.weight)[0]
    torch.testing.assert_close(got, want)


def test_prepare_networks_swaps_plain_pools_only():
    cfg = Config(arch="svhn", method="dann", compile=True, channels_last=True)
    torch.manual_seed(0)
    method = build_method(cfg, 10, "cpu", (3, 32, 32))
    odd = nn.MaxPool2d(2, 2, padding=1)  # padding: not computed by speed.max_pool2d, left alone
    method.model.extractor.append(odd)
    speed.prepare_networks(method, cfg)
    pools = [m for m in method.model.modules() if isinstance(m, nn.MaxPool2d)]
    assert sum(type(m) is speed.OpaqueMaxPool2d for m in pools) == 2 and odd in pools
    assert [m.kernel_size for m in pools[:2]] == [3, 3] and [m.stride for m in pools[:2]] == [2, 2]
    assert method.model.extractor[0].weight.is_contiguous(memory_format=torch.channels_last)
