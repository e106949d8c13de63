"""Argument checks shared by the Python API. Each raises TypeError or ValueError
with a message naming the argument and what is allowed.

Per-call checks (the functional API runs every step) keep a fast path of a few
type tests for the common case; constructors call the fuller checks below."""

import math
import numbers

import torch

# numpy is optional (the library needs only torch): its bool scalar is refused as
# a number and accepted as a flag when numpy is there.
try:
    from numpy import bool_ as _numpy_bool

    BOOLS = (bool, _numpy_bool)
except ImportError:  # pragma: no cover - numpy is installed wherever the tests run
    BOOLS = (bool,)

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Largest finite float32: lambdas and schedule constants that are stored in float32
# buffers, or that the kernels turn into float32 (float32/float16/bfloat16 inputs
# compute in float32), must not exceed it, or they silently become inf.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_QUANTIZED_DTYPES = (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4)
_Tensor, _STRIDED = torch.Tensor, torch.strided  # module globals: cheaper than attribute lookups per call


def check_float_tensor(x, name="x"):
    # The common case, fast: a plain dense floating tensor (a strided nested tensor
    # reports layout strided, hence its own test).
    if type(x) is _Tensor and x.dtype in FLOAT_DTYPES and x.layout is _STRIDED and not x.is_nested:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"grl_cuda: {name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.is_nested:
        raise TypeError(
            f"grl_cuda: {name} is a nested tensor; only dense (strided) tensors are supported. "
            f"Pad it first, e.g. {name}.to_padded_tensor(0.0)."
        )
    if x.layout is not torch.strided:
        raise TypeError(
            f"grl_cuda: {name} must be a dense (strided) tensor, got layout {x.layout}. "
            f"Convert it first, e.g. {name}.to_dense()."
        )
    if x.dtype in _QUANTIZED_DTYPES or x.is_quantized:
        raise TypeError(
            f"grl_cuda: {name} is a quantized tensor ({x.dtype}); it must be a float32, float64, float16 or bfloat16 "
            f"tensor. Dequantize it first: {name}.dequantize()."
        )
    if x.dtype.is_complex:
        raise TypeError(
            f"grl_cuda: {name} is a complex tensor ({x.dtype}); it must be a float32, float64, float16 or bfloat16 "
            f"tensor (gradient reversal of complex values is not defined here)."
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"grl_cuda: {name} must be a float32, float64, float16 or bfloat16 tensor, got {x.dtype}. "
            f"Gradients only flow through floating tensors; convert with {name}.float()."
        )


def _finite_bound(like):
    """The largest magnitude a scale may have: float64 inputs compute in float64,
    everything else (and lambda buffers, like=None) in float32."""
    if like is not None and like.dtype == torch.float64:
        return math.inf
    return FLOAT32_MAX


def _check_finite_value(value, name, bound):
    if not math.isfinite(value):
        raise ValueError(f"grl_cuda: {name} must be finite, got {value}.")
    if abs(value) > bound:
        raise ValueError(
            f"grl_cuda: {name} = {value} overflows float32 (|{name}| must be <= {FLOAT32_MAX:.6g}), where it is "
            f"stored or computed; it would become inf."
        )


def _real_to_float(value, name):
    try:
        return float(value)
    except OverflowError:  # a Python int beyond the float range
        raise ValueError(f"grl_cuda: {name} must be finite, got an integer too large for a float.") from None


def check_lambda(lambda_, like=None, name="lambda_"):
    """A finite Python number (returned as float) or a one-element floating tensor
    on the CPU or on `like`'s device (returned as is). The value must fit in float32
    unless `like` is a float64 tensor (`like=None`: the value goes to a float32 buffer).
    NaN/inf in a tensor on a GPU is not checked: that would need a host synchronisation."""
    if type(lambda_) is float and -FLOAT32_MAX <= lambda_ <= FLOAT32_MAX:  # the per-call fast path (NaN fails it)
        return lambda_
    if isinstance(lambda_, BOOLS) or not isinstance(lambda_, (numbers.Real, torch.Tensor)):
        raise TypeError(
            f"grl_cuda: {name} must be a float or a one-element floating tensor, got {type(lambda_).__name__}."
        )
    bound = _finite_bound(like)
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
            _check_finite_value(float(lambda_), name, bound)  # CPU memory: no device sync
        return lambda_
    value = _real_to_float(lambda_, name)
    _check_finite_value(value, name, bound)
    return value


def _interval(low, high, low_open, high_open):
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def check_real(value, name, *, float32=True, low=None, high=None, high_open=False, low_open=False):
    """A finite real number (Python or numpy, not bool), returned as float;
    optionally within [low, high] (either end open). float32: it must fit in float32."""
    if isinstance(value, BOOLS) or not isinstance(value, numbers.Real):
        raise TypeError(f"grl_cuda: {name} must be a real number, got {type(value).__name__}.")
    value = _real_to_float(value, name)
    if low is not None or high is not None:
        interval = _interval(low, high, low_open, high_open)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise ValueError(f"grl_cuda: {name} must be a finite number in {interval}, got {value}.")
    _check_finite_value(value, name, FLOAT32_MAX if float32 else math.inf)
    return value


def check_int(value, name, *, low=None):
    """A Python or numpy integer (not bool), returned as int, optionally >= low."""
    if isinstance(value, BOOLS) or not isinstance(value, numbers.Integral):
        raise TypeError(f"grl_cuda: {name} must be an int, got {type(value).__name__}.")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"grl_cuda: {name} must be an int >= {low}, got {value}.")
    return value


def check_bool(value, name):
    """True/False or a numpy bool, returned as bool. Anything else is refused:
    bool("False") is True, so a truthiness test would silently flip a flag."""
    if value is True or value is False:  # the per-call fast path
        return value
    if isinstance(value, BOOLS[1:]):
        return bool(value)
    raise TypeError(f"grl_cuda: {name} must be a bool (True or False), got {type(value).__name__} {value!r}.")


def check_sizes(value, name):
    """Layer widths: one positive int or a sequence of them (a string is refused),
    returned as a tuple of ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, BOOLS):
        value = (value,)
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or isinstance(value, torch.Tensor):
        raise TypeError(
            f"grl_cuda: {name} must be an int or a sequence of ints (layer widths), got {type(value).__name__}."
        )
    sizes = []
    for i, h in enumerate(value):
        if isinstance(h, BOOLS) or not isinstance(h, numbers.Integral):
            raise TypeError(f"grl_cuda: {name}[{i}] must be an int, got {type(h).__name__} {h!r}.")
        if h <= 0:
            raise ValueError(f"grl_cuda: {name} must hold positive widths, got {name}[{i}] = {int(h)}.")
        sizes.append(int(h))
    return tuple(sizes)


def check_module(value, name, *, optional=False):
    """A torch.nn.Module (registered as a submodule, so its parameters train and
    save with the owner), or None when optional."""
    if value is None and optional:
        return value
    if not isinstance(value, torch.nn.Module):
        allowed = "a torch.nn.Module or None" if optional else "a torch.nn.Module"
        raise TypeError(f"grl_cuda: {name} must be {allowed}, got {type(value).__name__}.")
    return value


def check_num_source(num_source):
    """The number of source rows, as a Python int: a Python or numpy integer, or a
    one-element integer tensor on the CPU. A tensor on a GPU is refused: reading it
    (the kernels take the count on the host) would synchronise the device."""
    if type(num_source) is int:  # the per-call fast path
        return num_source
    if isinstance(num_source, numbers.Integral) and not isinstance(num_source, BOOLS):
        return int(num_source)
    if isinstance(num_source, torch.Tensor):
        if num_source.is_floating_point() or num_source.is_complex() or num_source.dtype == torch.bool:
            raise TypeError(f"grl_cuda: a num_source tensor must have an integer dtype, got {num_source.dtype}.")
        if num_source.numel() != 1:
            raise ValueError(
                f"grl_cuda: a num_source tensor must have exactly one element, got shape {tuple(num_source.shape)}."
            )
        if num_source.device.type != "cpu":
            raise TypeError(
                f"grl_cuda: num_source is a tensor on {num_source.device}; pass a Python int (e.g. the source batch "
                f"size): reading a device tensor would synchronise the host with the device every step."
            )
        return int(num_source)
    raise TypeError(f"grl_cuda: num_source must be an int, got {type(num_source).__name__}.")


def check_positive(value, name):
    """A positive finite count such as max_iters: an int (Python or numpy, kept an
    int) or a float (kept a float)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, BOOLS):
        return check_int(value, name, low=1)
    return check_real(value, name, float32=False, low=0.0, low_open=True)
