"""The CPU loops at sizes that cross their block, chunk and vector-width edges, on
both instruction-set paths: the AVX2 + FMA loops (chosen at run time where the CPU
has them) and the baseline loops, forced in a subprocess by GRL_CUDA_CPU_ISA=baseline."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import grl_cuda

from tests.utils import FLOAT_DTYPES

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.float16: dict(rtol=3e-3, atol=3e-3), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check_cross_entropy(rows, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(rows, k, generator=g) * 4).to(dtype).requires_grad_()
    d = torch.randint(0, k, (rows,), generator=g)
    z_ref = z.detach().double().requires_grad_()
    loss, acc = grl_cuda.domain_cross_entropy(z, d, reduction="none", return_accuracy=True)
    ref = F.cross_entropy(z_ref, d, reduction="none")
    torch.testing.assert_close(loss.double(), ref, **TOL[dtype])
    up = torch.randn(rows, generator=g, dtype=torch.float64)
    (loss.double() * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(z.grad.double(), z_ref.grad, **TOL[dtype])
    torch.testing.assert_close(acc, (z.detach().double().argmax(1) == d).float().mean())
    mean = grl_cuda.domain_cross_entropy(z.detach(), d)
    torch.testing.assert_close(mean.double(), ref.detach().mean(), **TOL[dtype])


def check_bce(n, num_source, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, 1, generator=g) * 4).to(dtype).requires_grad_()
    labels = torch.zeros(n, 1, dtype=torch.float64)
    labels[num_source:] = 1
    loss, acc = grl_cuda.domain_bce_with_logits(z, num_source, reduction="sum", return_accuracy=True)
    ref = F.binary_cross_entropy_with_logits(z.detach().double(), labels, reduction="sum")
    torch.testing.assert_close(loss.double(), ref, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * n)
    loss.backward()
    grad_ref = torch.sigmoid(z.detach().double()) - labels
    torch.testing.assert_close(z.grad.double(), grad_ref, **TOL[dtype])
    torch.testing.assert_close(acc, ((z.detach().double() > 0) == labels.bool()).float().mean())
    none = grl_cuda.domain_bce_with_logits(z.detach(), num_source, reduction="none")
    ref_none = F.binary_cross_entropy_with_logits(z.detach().double(), labels, reduction="none")
    torch.testing.assert_close(none.double(), ref_none, **TOL[dtype])


# rows: inside one 64-row block, across blocks with a ragged tail, across 1024-row chunks;
# K: 2, odd, a full AVX2 vector, and wider than a block's L1 budget
CE_SHAPES = [(1, 2), (7, 3), (65, 2), (130, 5), (1025, 4), (2100, 3), (300, 8), (70, 16), (9, 257)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rows, k", CE_SHAPES)
def test_cross_entropy_block_edges(dtype, rows, k):
    check_cross_entropy(rows, k, dtype)


# n: below one vector, a ragged 256-element block, across 16384-element chunks; the
# source/target boundary inside a block, on a block edge, at either end
BCE_CASES = [(3, 1), (257, 100), (16384 * 2 + 9, 16384), (16384 + 700, 300), (513, 0), (513, 513)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n, num_source", BCE_CASES)
def test_bce_block_edges(dtype, n, num_source):
    check_bce(n, num_source, dtype)


def test_cross_entropy_nan_and_ties_per_row():
    z = torch.tensor([[1.0, 1.0, 0.0], [float("nan"), 0.0, 1.0], [0.0, 2.0, 2.0], [-float("inf"), 0.0, 0.0]] * 20)
    d = torch.tensor([0, 1, 2, 0] * 20)
    loss = grl_cuda.domain_cross_entropy(z, d, reduction="none")
    ref = F.cross_entropy(z, d, reduction="none")
    nan_rows = torch.arange(80) % 4 == 1
    assert torch.isnan(loss[nan_rows]).all()
    torch.testing.assert_close(loss[~nan_rows], ref[~nan_rows])
    # first maximum wins: [1, 1, 0] hits id 0; [0, 2, 2] misses id 2 (the tie goes to column 1)
    _, acc = grl_cuda.domain_cross_entropy(z[[0, 2]], torch.tensor([0, 2]), return_accuracy=True)
    assert acc.item() == 0.5


@pytest.mark.slow
def test_baseline_isa_path_matches():
    # The baseline loops, forced on this machine: same checks as above, in a fresh process
    # (the choice is read once per process).
    code = ("import torch\nfrom tests.ops import test_cpu_paths as t\n"
            "for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):\n"
            "    for rows, k in t.CE_SHAPES: t.check_cross_entropy(rows, k, dtype)\n"
            "    for n, s in t.BCE_CASES: t.check_bce(n, s, dtype)\n"
            "    for n in t.REVERSAL_SIZES: t.check_reversal(n, dtype)\n"
            "import grl_cuda\nassert grl_cuda._C.cpu_loop_isa() == 'baseline'\nprint('ok')\n")
    env = dict(os.environ, GRL_CUDA_CPU_ISA="baseline", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_cpu_loop_isa_is_reported():
    import platform
    isa = grl_cuda._C.cpu_loop_isa()
    if os.environ.get("GRL_CUDA_CPU_ISA") == "baseline" or platform.machine().lower() not in ("x86_64", "amd64"):
        assert isa == "baseline"
    else:
        assert isa in ("avx2+fma", "baseline")


def check_reversal(n, dtype, lam=0.75, seed=0):  # lam exact in float32: the lambda tensor is float32
    # one product in float (the op math type of 16-bit), rounded once: bitwise what
    # ATen's mul gives, in place (the stolen-gradient case) and into a fresh output
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 3).to(dtype)
    x[::7] = float("nan") if n > 7 else x[::7]
    expected = (x.to(torch.float64 if dtype == torch.float64 else torch.float32) * -lam).to(dtype)
    out = torch.ops.grl_cuda.neg_scale(x, torch.tensor(lam))
    assert torch.equal(out[~out.isnan()], expected[~expected.isnan()]) and torch.equal(out.isnan(), expected.isnan())
    torch.ops.grl_cuda.neg_scale_(x, torch.tensor(lam))
    assert torch.equal(x.isnan(), expected.isnan()) and torch.equal(x[~x.isnan()], expected[~expected.isnan()])


# tails of the 8- and 16-wide vector loops and of the 32-wide unrolled one; several threads' spans
REVERSAL_SIZES = [1, 7, 8, 15, 16, 17, 31, 33, 1000, 32768 * 3 + 5]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", REVERSAL_SIZES)
def test_reversal_vector_tails(dtype, n):
    check_reversal(n, dtype)


def test_reversal_16bit_rounding_edges():
    # values whose product lands exactly between two 16-bit neighbours (ties to even),
    # overflows to inf, or underflows to subnormals and zero
    for dtype in (torch.float16, torch.bfloat16):
        info = torch.finfo(dtype)
        x = torch.tensor([1.0, 1 + info.eps / 2, 1 + 1.5 * info.eps, info.max, info.tiny, info.tiny / 4,
                          float("inf"), -float("inf"), 0.0, -0.0] * 3, dtype=torch.float32)
        for lam in (1.0, 1.0 + 2 ** -9, 3.0, 1e-3):
            xs = x.to(dtype)
            expected = (xs.float() * -lam).to(dtype)
            assert torch.equal(torch.ops.grl_cuda.neg_scale(xs, torch.tensor(lam)), expected), (dtype, lam)
