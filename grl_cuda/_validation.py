"""Argument checks shared by the Python API. Each raises TypeError or ValueError
with a message naming the argument and what is allowed."""

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_float_tensor(x, name="x"):
    if type(x) is torch.Tensor and x.dtype in FLOAT_DTYPES:  # the common case, fast
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"grl_cuda: {name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"grl_cuda: {name} must be a float32, float64, float16 or bfloat16 tensor, got {x.dtype}. "
            f"Gradients only flow through floating tensors; convert with {name}.float()."
        )


def check_lambda(lambda_, like=None, name="lambda_"):
    """A finite Python number (returned as float) or a one-element floating tensor
    on the CPU or on `like`'s device (returned as is). NaN/inf in a tensor on a GPU
    is not checked: that would need a host synchronisation."""
    if type(lambda_) is float and lambda_ - lambda_ == 0.0:  # a finite float: the per-call fast path
        return lambda_
    if isinstance(lambda_, bool) or not isinstance(lambda_, (numbers.Real, torch.Tensor)):
        raise TypeError(
            f"grl_cuda: {name} must be a float or a one-element floating tensor, got {type(lambda_).__name__}."
        )
    if isinstance(lambda_, torch.Tensor):
        if not lambda_.is_floating_point():
            raise TypeError(f"grl_cuda: a {name} tensor must have a floating dtype, got {lambda_.dtype}.")
        if lambda_.numel() != 1:
            raise ValueError(f"grl_cuda: a {name} tensor must have exactly one element, got shape {tuple(lambda_.shape)}.")
        if like is not None and lambda_.device.type != "cpu" and lambda_.device != like.device:
            raise ValueError(
                f"grl_cuda: {name} is on {lambda_.device} but the tensor it scales is on {like.device}. "
                f"Keep {name} on the same device (or on the CPU)."
            )
        if lambda_.device.type == "cpu" and not torch.compiler.is_compiling():
            value = float(lambda_)
            if not math.isfinite(value):
                raise ValueError(f"grl_cuda: {name} must be finite, got {value}.")
        return lambda_
    value = float(lambda_)
    if not math.isfinite(value):
        raise ValueError(f"grl_cuda: {name} must be finite, got {value}.")
    return value
