"""Helpers shared by the test files (fixtures live in conftest.py)."""

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU"))]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def make_layouts(shape, dtype, device):
    """The same values in several memory layouts: contiguous, channels_last,
    a strided slice, a transposed view, an expanded (zero-stride) view, empty."""
    base = torch.randn(shape, device=device).to(dtype)
    cases = {"contiguous": base}
    if base.dim() == 4:
        cases["channels_last"] = base.contiguous(memory_format=torch.channels_last)
    wide = torch.randn(shape[:-1] + (shape[-1] * 2,), device=device).to(dtype)
    cases["strided"] = wide[..., ::2]
    cases["transposed"] = torch.randn(tuple(reversed(shape)), device=device).to(dtype).transpose(0, -1)
    cases["expanded"] = torch.randn(shape[:-1] + (1,), device=device).to(dtype).expand(shape)
    cases["offset"] = torch.randn(base.numel() + 1, device=device).to(dtype)[1:].view(shape)  # misaligned pointer
    cases["empty"] = torch.randn((0,) + tuple(shape[1:]), device=device).to(dtype)
    return cases
