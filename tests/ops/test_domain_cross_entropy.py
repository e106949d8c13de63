"""The K-way fused domain loss against F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

import grl_cuda

from tests.utils import FLOAT_DTYPES

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.float16: dict(rtol=3e-3, atol=3e-3), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("k", [2, 3, 7])
def test_matches_cross_entropy(device, dtype, reduction, k):
    z = (torch.randn(33, k, device=device) * 3).to(dtype).requires_grad_()
    d = torch.randint(0, k, (33,), device=device)
    z_ref = z.detach().double().requires_grad_()
    loss, acc = grl_cuda.domain_cross_entropy(z, d, reduction=reduction, return_accuracy=True)
    ref = F.cross_entropy(z_ref, d, reduction=reduction)
    assert loss.dtype == dtype and loss.shape == ref.shape
    torch.testing.assert_close(loss.double(), ref, **TOL[dtype])
    up = torch.randn(ref.shape, device=device, dtype=torch.float64)
    (loss.double() * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(z.grad.double(), z_ref.grad, **TOL[dtype])
    torch.testing.assert_close(acc, (z.detach().double().argmax(1) == d).float().mean())


def test_extreme_logits_and_strided_input(device):
    full = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], device=device, requires_grad=True)
    z = full[:, ::2]  # a strided view
    assert not z.is_contiguous()
    d = torch.tensor([1, 0], device=device)
    loss = grl_cuda.domain_cross_entropy(z, d, reduction="none")
    torch.testing.assert_close(loss, F.cross_entropy(z.detach(), d, reduction="none"))
    assert torch.isfinite(loss).all()


def test_opcheck_gradcheck(device):
    for dtype in FLOAT_DTYPES:
        z = torch.randn(5, 4, device=device).to(dtype).requires_grad_(dtype == torch.float64)
        d = torch.randint(0, 4, (5,), device=device)
        for reduction in ("mean", "sum", "none"):
            opcheck(torch.ops.grl_cuda.domain_cross_entropy, (z, d, reduction))
    z = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    d = torch.randint(0, 4, (5,), device=device)
    for reduction in ("mean", "none"):
        f = lambda z: grl_cuda.domain_cross_entropy(z, d, reduction=reduction)  # noqa: E731
        assert gradcheck(f, (z,))
        assert gradgradcheck(f, (z,))


def test_deterministic_and_compiles():
    z = torch.randn(5000, 3)
    d = torch.randint(0, 3, (5000,))
    assert torch.equal(grl_cuda.domain_cross_entropy(z, d), grl_cuda.domain_cross_entropy(z, d))
    f = torch.compile(lambda z, d: grl_cuda.domain_cross_entropy(z, d) * 2, fullgraph=True)
    torch.testing.assert_close(f(z, d), grl_cuda.domain_cross_entropy(z, d) * 2)


def test_nan_propagates():
    # (out-of-range ids are refused: tests/ops/test_bad_input.py)
    z = torch.randn(3, 3)
    z[0, 0] = float("nan")
    assert torch.isnan(grl_cuda.domain_cross_entropy(z, torch.tensor([0, 1, 2])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [4, 300])  # one block of rows, and several with a ragged end
def test_nan_row_is_never_a_hit(dtype, rows):
    # A NaN wins the row's max so that the loss propagates it; the accuracy must still call
    # the row a miss, also when the NaN sits at the row's own id (it used to count as a hit).
    z = torch.tensor([[float("nan"), 0.0, 1.0],  # NaN at the id: a miss
                      [0.0, float("nan"), 1.0],  # NaN at the id, not in column 0: a miss
                      [5.0, 0.0, float("nan")],  # largest finite logit at the id, NaN elsewhere: a miss
                      [5.0, 0.0, 1.0]], dtype=dtype).repeat(rows // 4, 1)  # a clean hit
    d = torch.tensor([0, 1, 0, 0]).repeat(rows // 4)
    _, acc = grl_cuda.domain_cross_entropy(z, d, return_accuracy=True)
    assert acc.item() == 0.25


@pytest.mark.parametrize("logits, domains, error, match", [
    (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), ValueError, "K >= 2"),
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), ValueError, r"shape \(N, K\)"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "empty batch"),
    (torch.zeros(4, 3), torch.zeros(4), TypeError, "int64"),
    (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), ValueError, "shape"),
    (torch.zeros(4, 3, dtype=torch.int32), torch.zeros(4, dtype=torch.long), TypeError, "float32"),
    (torch.zeros(4, 3), [0, 1, 2, 0], TypeError, "int64 tensor"),
])
def test_bad_input(logits, domains, error, match):
    with pytest.raises(error, match=match):
        grl_cuda.domain_cross_entropy(logits, domains)


def test_thread_count_does_not_change_the_loss_or_gradient():
    # row chunks of a fixed size, partials added in chunk order: 1 or 2 threads, the same bits
    logits = torch.randn(100_003, 5, requires_grad=True)
    ids = torch.randint(0, 5, (100_003,))
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            logits.grad = None
            loss, acc = grl_cuda.domain_cross_entropy(logits, ids, return_accuracy=True)
            loss.backward()
            out.append((loss.detach(), acc, logits.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*out))
