"""The CUDA kernels (csrc/cuda/kernels_cuda.cu, unchanged) run on the CPU through the
CUDA emulator (tests/emu/cuda_emu.h) under ASan/UBSan, checked against the CPU
kernels and PyTorch. Run by `bash .ci/emu` (which builds grl_cuda._C_emu and sets
GRL_CUDA_EMU=1, LD_PRELOAD of libasan and GRL_EMU_SCHEDULE); skipped otherwise.

Environment:
    GRL_CUDA_EMU=1        run these tests (fail, not skip, when the build is missing)
    GRL_EMU_SCHEDULE      forward | reverse | shuffle:SEED  (default forward)
    GRL_EMU_LIB           path of another _C_emu build to test (the planted defects)
"""

import importlib
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import grl_cuda  # noqa: F401  (the CPU reference ops)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

if os.environ.get("GRL_CUDA_EMU") != "1":
    pytest.skip("emulated CUDA kernels: run by `bash .ci/emu` (needs the ASan build and LD_PRELOAD)",
                allow_module_level=True)


def _load():
    path = os.environ.get("GRL_EMU_LIB")
    if not path:
        return importlib.import_module("grl_cuda._C_emu")
    spec = importlib.util.spec_from_file_location("grl_cuda._C_emu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


E = _load()
SCHEDULE = os.environ.get("GRL_EMU_SCHEDULE", "forward")
SCHEDULES = [("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Around every vector width (2, 4, 8 elements) and block (256 threads x vector) boundary.
SIZES = [0, 1, 3, 4, 5, 7, 8, 9, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4097,
         100_003]


def set_schedule(spec):
    kind, _, seed = spec.partition(":")
    E.set_schedule(kind, int(seed or 0))


@pytest.fixture(autouse=True)
def _schedule():
    set_schedule(SCHEDULE)
    E.set_grid_cap(0)
    E.take_launch_log()
    torch.manual_seed(0)
    yield
    set_schedule(SCHEDULE)
    E.set_grid_cap(0)


def launched():
    return [name for name, *_ in E.take_launch_log()]


def offset_view(n, dtype, offset_bytes):
    """n random values whose data pointer is `offset_bytes` past a 16-byte boundary
    (the allocation itself is 64-byte aligned)."""
    es = torch.empty((), dtype=dtype).element_size()
    k = offset_bytes // es
    base = torch.randn(n + k + 1).to(dtype)
    view = base[k:k + n]
    assert n == 0 or view.data_ptr() % 16 == offset_bytes % 16
    return view


def offsets_for(dtype):
    es = torch.empty((), dtype=dtype).element_size()
    return [b for b in (0, 2, 4, 8, 12) if b % es == 0]


def assert_same(actual, expected, what):
    assert actual.dtype == expected.dtype
    if not torch.equal(actual, expected):
        bad = (actual != expected) & ~(actual.isnan() & expected.isnan())
        idx = bad.nonzero()[:5].flatten().tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} of {actual.numel()} elements differ, first at {idx}: "
                             f"{actual.flatten()[idx].tolist()} vs {expected.flatten()[idx].tolist()}")


# ---- the emulator itself ----------------------------------------------------------------------

class TestEmulator:
    def test_warp_shuffle_reduction(self):
        out = torch.zeros(2 * 4)
        E.selftest("warp_sum", out, 2, 128)
        expected = torch.tensor([sum(range(32 * w + 1, 32 * w + 33)) for w in range(4)] * 2, dtype=torch.float32)
        assert_same(out, expected, "warp sums")

    def test_shuffle_variants_and_ballot(self):
        out = torch.zeros(64 * 4, dtype=torch.int32)
        E.selftest("shuffles", out, 1, 64)
        got = out.view(64, 4)
        for t in range(64):
            w = t - t % 32
            assert got[t, 0] == w + 3
            assert got[t, 1] == (t - 1 if t % 32 else t)
            assert got[t, 2] == t ^ 1
            assert got[t, 3] == 0xAAAAAAAA - (1 << 32)  # lanes 1, 3, 5, ... vote (as an int32)
        assert E.stats()["warp_collectives"] > 0

    def test_missing_barrier_changes_the_answer(self):
        n = 64
        synced = torch.zeros(n, dtype=torch.int32)
        E.selftest("neighbour_synced", synced, 1, n)
        assert_same(synced, (torch.arange(n, dtype=torch.int32) + 1) % n, "with the barrier")
        for kind, seed in SCHEDULES:
            E.set_schedule(kind, seed)
            racy = torch.zeros(n, dtype=torch.int32)
            E.selftest("neighbour", racy, 1, n)
            assert not torch.equal(racy, synced), f"a read before the neighbour's write went unseen under {kind}"

    @pytest.mark.parametrize("name, threads, message", [
        ("divergent", 64, "divergent __syncthreads"),
        ("early_return", 64, "not reached by every thread"),
        ("full_mask", 48, "lanes that do not exist"),
        ("assert", 64, "device-side assert triggered"),
        ("bounded", 128, r"__launch_bounds__\(64\)"),
        ("atomics", 2048, "invalid configuration argument"),
        ("unchecked", 32, "without a launch check"),
    ])
    def test_what_a_gpu_rejects_fails_loudly(self, name, threads, message):
        out = torch.zeros(4096, dtype=torch.int32)
        with pytest.raises(RuntimeError, match=message):
            E.selftest(name, out, 1, threads)
        E.selftest("bounded", out, 1, 64)  # and the emulator is usable afterwards

    def test_atomics_and_types(self):
        out = torch.zeros(1)
        E.selftest("atomics", out, 3, 100)
        assert out.item() == 300
        out = torch.zeros(40 * 4)
        E.selftest("types", out, 1, 40)
        v = torch.arange(40, dtype=torch.float32) * torch.tensor(0.1, dtype=torch.float32)
        got = out.view(40, 4)
        assert_same(got[:, 0], v.half().float(), "__half round trip")
        assert_same(got[:, 1], (-v).half().float(), "__half2 high half")
        assert_same(got[:, 2], v.bfloat16().float(), "bfloat16 round trip")
        assert_same(got[:, 3], 4 * v, "float4")

    def test_address_sanitizer_is_live(self):
        # An out-of-bounds store in a kernel must stop the process with an ASan report.
        code = ("import torch, grl_cuda, importlib, os, importlib.util as u\n"
                "p = os.environ.get('GRL_EMU_LIB')\n"
                "E = importlib.import_module('grl_cuda._C_emu') if not p else None\n"
                "if p:\n"
                "    s = u.spec_from_file_location('grl_cuda._C_emu', p); E = u.module_from_spec(s); "
                "s.loader.exec_module(E)\n"
                "E.selftest('out_of_bounds', torch.zeros(32, dtype=torch.int32), 1, 32)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert "heap-buffer-overflow" in proc.stderr, proc.stderr[-2000:]


# ---- neg_scale and copy -----------------------------------------------------------------------

def reference_neg_scale(x, lam):
    return torch.ops.grl_cuda.neg_scale(x, torch.tensor(lam, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_neg_scale_every_size_and_alignment(dtype):
    for offset in offsets_for(dtype):
        for n in SIZES:
            x = offset_view(n, dtype, offset)
            out = torch.empty(n, dtype=dtype)
            E.neg_scale(x, out, 0.75)
            assert_same(out, reference_neg_scale(x, 0.75), f"n={n} offset={offset}")
            expected_kernel = "elementwise_vec_kernel" if offset == 0 else "elementwise_scalar_kernel"
            names = launched()
            assert names == ([] if n == 0 else [f"{expected_kernel}<scalar_t, Op>"]), (n, offset, names)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_neg_scale_in_place_every_size_and_alignment(dtype):
    for offset in offsets_for(dtype):
        for n in SIZES:
            x = offset_view(n, dtype, offset)
            expected = reference_neg_scale(x, 1.5)
            E.neg_scale(x, x, 1.5)
            assert_same(x, expected, f"in place, n={n} offset={offset}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_copy_every_size_and_alignment(dtype):
    for offset in offsets_for(dtype):
        for n in SIZES:
            x = offset_view(n, dtype, offset)
            out = torch.full((n,), float("nan")).to(dtype)
            E.copy(x, out)
            assert_same(out, x.clone(), f"copy n={n} offset={offset}")


def test_misaligned_source_aligned_destination_takes_the_scalar_loop():
    x = offset_view(4097, torch.float32, 4)
    out = torch.empty(4097)
    E.neg_scale(x, out, 2.0)
    assert launched() == ["elementwise_scalar_kernel<scalar_t, Op>"]
    assert_same(out, reference_neg_scale(x, 2.0), "misaligned src")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dense_layouts_walked_as_they_lie(dtype):
    # The op layer hands dense tensors in any memory format to the kernels with an
    # output of identical strides; other views are made contiguous first.
    for x in (torch.randn(3, 5, 7, 9).to(dtype).contiguous(memory_format=torch.channels_last),
              torch.randn(33, 65).to(dtype).t(),
              torch.randn(6, 40).to(dtype)[:, ::2].contiguous()):
        out = torch.empty_like(x)
        E.neg_scale(x, out, 0.5)
        assert out.stride() == x.stride()
        assert_same(out, reference_neg_scale(x, 0.5), f"layout {tuple(x.stride())}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grid_stride_loops(dtype):
    # The launches cap the grid at 65535 blocks; a capped grid walks the rest with
    # its stride. Emulating a 3-block grid runs those loops at test sizes.
    E.set_grid_cap(3)
    for offset in (0, offsets_for(dtype)[-1]):
        for n in (4097, 100_003):
            x = offset_view(n, dtype, offset)
            out = torch.empty(n, dtype=dtype)
            E.neg_scale(x, out, 0.25)
            assert_same(out, reference_neg_scale(x, 0.25), f"grid cap 3, n={n} offset={offset}")
            E.copy(x, out)
            assert_same(out, x.clone(), f"copy, grid cap 3, n={n} offset={offset}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lambda_read_from_device_buffer(dtype):
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(5000).to(dtype)
    out = torch.empty_like(x)
    E.neg_scale(x, out, 2.0, torch.tensor([0.125], dtype=opmath))
    assert_same(out, reference_neg_scale(x, 0.25), "lambda = 2 x device 0.125")


@pytest.mark.parametrize("where", [0, 1, 2047, 4096])
def test_lambda_aliasing_the_output_is_read_before_any_write(where):
    # x.neg_scale_(lambda_=x[k]): every thread must scale by the value lambda had
    # before the call, whichever thread overwrites x[k] first.
    for kind, seed in SCHEDULES:
        E.set_schedule(kind, seed)
        x = torch.randn(4097)
        expected = reference_neg_scale(x, x[where].item())
        E.neg_scale(x, x, 1.0, x[where:where + 1])
        assert_same(x, expected, f"lambda = x[{where}], schedule {kind}:{seed}")


def test_elementwise_kernels_take_no_restrict_pointers():
    # neg_scale_ runs with src == dst: a __restrict__ pair would promise the compiler
    # that they never alias (and let it route the loads through the read-only cache).
    text = open(os.path.join(ROOT, "csrc", "cuda", "kernels_cuda.cu")).read()
    for name in ("elementwise_vec_kernel", "elementwise_scalar_kernel"):
        signature = re.search(name + r"\s*\(([^)]*)\)", text).group(1)
        assert "__restrict__" not in signature, f"{name}({signature})"


# ---- the fused binary loss --------------------------------------------------------------------

def run_bce(z, num_source, inner, ws=1.0, wt=1.0, reduction="mean"):
    n = z.numel()
    scale = 1.0 / n if reduction == "mean" else 1.0
    grad = torch.full_like(z, float("nan"))
    acc = torch.full((), float("nan"))
    if reduction == "none":
        loss = torch.full_like(z, float("nan"))
        E.domain_bce(z, num_source, inner, ws, wt, scale, grad, loss_elems=loss, accuracy=acc)
    else:
        loss = torch.full((), float("nan"), dtype=z.dtype)
        E.domain_bce(z, num_source, inner, ws, wt, scale, grad, loss=loss, accuracy=acc)
    return loss, grad, acc


def bce_tolerances(dtype):
    # The CPU loop uses its own vectorisable exp/log1p; the device uses expf/log1pf.
    return {torch.float32: (1e-6, 1e-6), torch.float64: (1e-12, 1e-12),
            torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, inner", [(1, 1), (3, 1), (255, 1), (256, 1), (257, 1), (4095, 1), (4097, 1),
                                      (40, 7), (131_073, 1), (200_003, 1)])
def test_domain_bce_matches_cpu_kernel_and_pytorch(dtype, n, inner):
    rows = n // inner if inner > 1 else n
    z = (torch.randn(rows, 1, inner) * 4).to(dtype) if inner > 1 else (torch.randn(n) * 4).to(dtype)
    num_source = rows // 3
    rtol, atol = bce_tolerances(dtype)
    for reduction in ("mean", "sum", "none"):
        loss, grad, acc = run_bce(z.reshape(-1), num_source, inner, 1.5, 0.5, reduction)
        ref_loss, ref_grad, ref_acc = torch.ops.grl_cuda.domain_bce_with_logits(z, num_source, 1.5, 0.5, reduction)
        torch.testing.assert_close(grad, ref_grad.reshape(-1), rtol=rtol, atol=atol)
        torch.testing.assert_close(loss, ref_loss.reshape(loss.shape), rtol=rtol, atol=atol * 10)
        assert acc.item() == ref_acc.item()
    # And against PyTorch's own loss, in float64.
    y = torch.zeros(rows, inner if inner > 1 else 1, dtype=torch.float64)
    y[num_source:] = 1
    w = torch.where(y > 0, 0.5, 1.5)
    zd = z.double().reshape(rows, -1)
    expected = F.binary_cross_entropy_with_logits(zd, y.expand_as(zd), weight=w.expand_as(zd), reduction="mean")
    loss, _, _ = run_bce(z.reshape(-1), num_source, inner, 1.5, 0.5, "mean")
    torch.testing.assert_close(loss.double(), expected, rtol=max(rtol, 1e-6) * 10, atol=atol * 10)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_domain_bce_partial_sums_add_up(dtype):
    # Many blocks (grid-stride at 131073+): the reduced loss is the double sum of the
    # per-element losses the same kernel writes, and the accuracy counts every hit.
    n = 262_147
    z = (torch.randn(n) * 3).to(dtype)
    num_source = 100_000
    per_elem, _, _ = run_bce(z, num_source, 1, 1.0, 2.0, "none")
    total, _, acc = run_bce(z, num_source, 1, 1.0, 2.0, "sum")
    # Rounded once to the dtype from the double total: within an ulp of the reference.
    reference = per_elem.double().sum() / n
    mean, _, _ = run_bce(z, num_source, 1, 1.0, 2.0, "mean")
    rtol = max(torch.finfo(dtype).eps, 1e-12)  # (float64: the order of the double sum)
    torch.testing.assert_close(mean.double(), reference, rtol=rtol, atol=0)
    if dtype.itemsize > 2:  # (a half-precision sum of 262147 losses overflows)
        torch.testing.assert_close(total.double(), per_elem.double().sum(), rtol=rtol, atol=0)
    zf = z.float()
    hits = int((zf[:num_source] <= 0).sum()) + int((zf[num_source:] > 0).sum())
    assert acc.item() == torch.tensor(hits / n, dtype=torch.float32).item()
    launches = E.take_launch_log()
    assert [name for name, *_ in launches][-2:] == ["domain_bce_partials_kernel<scalar_t>",
                                                    "reduce_final_kernel<scalar_t>"]
    assert launches[-2][1:3] == (512, 256) and launches[-1][1:3] == (1, 256)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_domain_bce_bitwise_identical_under_every_schedule(dtype):
    z = (torch.randn(150_001) * 5).to(dtype)
    results = []
    for kind, seed in SCHEDULES:
        E.set_schedule(kind, seed)
        results.append(run_bce(z, 70_000, 1, 1.25, 0.75, "sum"))
    for (loss, grad, acc), (kind, seed) in zip(results[1:], SCHEDULES[1:]):
        assert_same(loss, results[0][0], f"loss under {kind}:{seed}")
        assert_same(grad, results[0][1], f"grad under {kind}:{seed}")
        assert_same(acc, results[0][2], f"accuracy under {kind}:{seed}")


def test_domain_bce_extremes_and_nan():
    z = torch.tensor([-1e30, 1e30, -30.0, 30.0, 0.0, float("nan"), -0.0, 17.0, float("inf"), -float("inf")])
    loss, grad, acc = run_bce(z, 4, 1, 1.0, 1.0, "none")
    ref_loss, ref_grad, ref_acc = torch.ops.grl_cuda.domain_bce_with_logits(z, 4, 1.0, 1.0, "none")
    torch.testing.assert_close(loss, ref_loss, equal_nan=True)
    torch.testing.assert_close(grad, ref_grad, equal_nan=True)
    assert acc.item() == ref_acc.item()


# ---- the K-way loss ---------------------------------------------------------------------------

def run_cross_entropy(z, d, reduction="mean"):
    rows = z.shape[0]
    grad = torch.full_like(z, float("nan"))
    acc = torch.full((), float("nan"))
    scale = 1.0 / rows if reduction == "mean" else 1.0
    if reduction == "none":
        loss = torch.full((rows,), float("nan"), dtype=z.dtype)
        E.domain_cross_entropy(z, d, scale, grad, loss_elems=loss, accuracy=acc)
    else:
        loss = torch.full((), float("nan"), dtype=z.dtype)
        E.domain_cross_entropy(z, d, scale, grad, loss=loss, accuracy=acc)
    return loss, grad, acc


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, k", [(1, 2), (3, 3), (255, 7), (256, 2), (257, 5), (4097, 3), (131_073, 2)])
def test_domain_cross_entropy_matches_cpu_kernel_and_pytorch(dtype, rows, k):
    z = (torch.randn(rows, k) * 3).to(dtype)
    d = torch.randint(0, k, (rows,))
    rtol, atol = bce_tolerances(dtype)
    for reduction in ("mean", "sum", "none"):
        loss, grad, acc = run_cross_entropy(z, d, reduction)
        ref_loss, ref_grad, ref_acc = torch.ops.grl_cuda.domain_cross_entropy(z, d, reduction)
        torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol)
        torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol * 10)
        assert acc.item() == ref_acc.item()
    loss, _, _ = run_cross_entropy(z, d, "mean")
    expected = F.cross_entropy(z.double(), d, reduction="mean")
    torch.testing.assert_close(loss.double(), expected, rtol=max(rtol, 1e-6) * 10, atol=atol * 10)


def test_domain_cross_entropy_nan_row_is_never_a_hit():
    # the CUDA row code (math::softmax_cross_entropy_row): a NaN at the row's own id is a miss
    z = torch.tensor([[float("nan"), 0.0, 1.0], [0.0, float("nan"), 1.0], [5.0, 0.0, float("nan")],
                      [5.0, 0.0, 1.0]]).repeat(100, 1)
    d = torch.tensor([0, 1, 0, 0]).repeat(100)
    _, _, acc = run_cross_entropy(z, d)
    assert acc.item() == 0.25
    assert acc.item() == torch.ops.grl_cuda.domain_cross_entropy(z, d, "mean")[2].item()


def test_domain_cross_entropy_bitwise_identical_under_every_schedule():
    z = torch.randn(140_001, 3)
    d = torch.randint(0, 3, (140_001,))
    results = []
    for kind, seed in SCHEDULES:
        E.set_schedule(kind, seed)
        results.append(run_cross_entropy(z, d, "mean"))
    for (loss, grad, acc), (kind, seed) in zip(results[1:], SCHEDULES[1:]):
        assert_same(loss, results[0][0], f"loss under {kind}:{seed}")
        assert_same(grad, results[0][1], f"grad under {kind}:{seed}")
        assert_same(acc, results[0][2], f"accuracy under {kind}:{seed}")


@pytest.mark.parametrize("bad", [-1, 3, 1 << 40])
def test_domain_id_outside_range_is_a_device_assert(bad):
    z = torch.randn(600, 3)
    d = torch.randint(0, 3, (600,))
    d[517] = bad
    with pytest.raises(RuntimeError, match=r"device-side assert triggered.*block \(2,0,0\) thread \(5,0,0\)"):
        run_cross_entropy(z, d)
