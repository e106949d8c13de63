"""A short run of every CUDA kernel for compute-sanitizer (memcheck, racecheck) on a
real GPU: each op, each dtype, sizes across the vector and block boundaries,
misaligned and in-place calls, a multi-block loss; checked against the CPU kernels.
`bash .ci/gpu` runs it under the sanitizer tools. Exit status 1 on a wrong answer.
"""

import sys

import torch

import grl_cuda  # noqa: F401  (registers torch.ops.grl_cuda)


def main():
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device", file=sys.stderr)
        return 2
    ops = torch.ops.grl_cuda
    bad = []

    def check(what, got, want, tol=0.0):
        got, want = got.cpu().double(), want.cpu().double()
        if not torch.allclose(got, want, rtol=tol, atol=tol, equal_nan=True):
            bad.append(what)

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        tol = 0.0 if dtype in (torch.float32, torch.float64) else 1e-2
        for n in (1, 5, 257, 4097, 100_003):
            base = torch.randn(n + 8).to(dtype)
            for offset in (0, 1, 3):  # misaligned storage offsets take the scalar loop
                x = base[offset:offset + n]
                lam = torch.tensor(0.75, dtype=torch.float64)
                check(f"neg_scale {dtype} n={n} +{offset}", ops.neg_scale(x.cuda(), lam.cuda()), ops.neg_scale(x, lam))
                y = x.cuda()
                ops.neg_scale_(y, lam.cuda())
                check(f"neg_scale_ {dtype} n={n} +{offset}", y, ops.neg_scale(x, lam))
                check(f"copy {dtype} n={n} +{offset}", ops.copy(x.cuda()), x)
        z = (torch.randn(150_001) * 4).to(dtype)
        for reduction in ("mean", "none"):
            got = ops.domain_bce_with_logits(z.cuda(), 70_000, 1.5, 0.5, reduction)
            want = ops.domain_bce_with_logits(z, 70_000, 1.5, 0.5, reduction)
            for name, g, w in zip(("loss", "grad", "accuracy"), got, want):
                check(f"domain_bce {name} {dtype} {reduction}", g, w, max(tol, 1e-5))
        logits = (torch.randn(5000, 3) * 3).to(dtype)
        ids = torch.randint(0, 3, (5000,))
        got = ops.domain_cross_entropy(logits.cuda(), ids.cuda(), "mean")
        want = ops.domain_cross_entropy(logits, ids, "mean")
        for name, g, w in zip(("loss", "grad", "accuracy"), got, want):
            check(f"domain_cross_entropy {name} {dtype}", g, w, max(tol, 1e-5))
    torch.cuda.synchronize()
    if bad:
        print("gpu_smoke: wrong answers: " + "; ".join(bad), file=sys.stderr)
        return 1
    print("gpu_smoke: every kernel ran and matched the CPU kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
