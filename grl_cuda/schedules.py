"""The DANN paper's schedules (Ganin & Lempitsky, 2015, section 5.2.2).

``p`` is training progress in [0, 1]. Each function takes a Python or numpy float
(checked) or a tensor (clamped to [0, 1] on its device, no host sync). The
constants (gamma, lo, hi, mu0, alpha, beta) must be finite real numbers within
the float32 range (tensor progress computes in float32); ``alpha > -1``.
"""

import math
import numbers

import torch

from ._validation import BOOLS, check_int, check_real


def _progress(p):
    if isinstance(p, torch.Tensor):
        return p.clamp(0.0, 1.0)
    if isinstance(p, BOOLS) or not isinstance(p, numbers.Real):
        raise TypeError(f"grl_cuda: progress p must be a float or a tensor, got {type(p).__name__}.")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"grl_cuda: progress p must be in [0, 1], got {p}.")
    return float(p)


def dann_lambda(p, gamma=10.0, lo=0.0, hi=1.0):
    """lambda_p = lo + (hi - lo) * (2 / (1 + exp(-gamma * p)) - 1): 0 at the start, hi at the end.
    Suppresses the domain classifier's noisy signal early in training."""
    p = _progress(p)
    gamma, lo, hi = check_real(gamma, "gamma"), check_real(lo, "lo"), check_real(hi, "hi")
    if isinstance(p, torch.Tensor):
        return lo + (hi - lo) * (2.0 / (1.0 + torch.exp(-gamma * p)) - 1.0)
    return lo + (hi - lo) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def annealed_lr(p, mu0=0.01, alpha=10.0, beta=0.75):
    """mu_p = mu0 / (1 + alpha * p) ** beta."""
    p = _progress(p)
    mu0, alpha, beta = _lr_constants(mu0, alpha, beta)
    return mu0 / (1.0 + alpha * p) ** beta


def _lr_constants(mu0, alpha, beta):
    # alpha > -1 keeps the base 1 + alpha * p positive over p in [0, 1] (else a
    # fractional power of a negative base: a complex number, or NaN on a tensor)
    alpha = check_real(alpha, "alpha", low=-1.0, low_open=True)
    return check_real(mu0, "mu0"), alpha, check_real(beta, "beta")


def annealed_lr_factor(step, total_steps, alpha=10.0, beta=0.75):
    """The factor mu_p / mu0 at a step, for ``torch.optim.lr_scheduler.LambdaLR``:
    ``LambdaLR(opt, lambda s: annealed_lr_factor(s, total_steps))``.

    ``step`` is an int >= 0 (past ``total_steps`` the factor stays at its final
    value), ``total_steps`` an int >= 1 (Python or numpy integers)."""
    step = check_int(step, "step", low=0)
    total_steps = check_int(total_steps, "total_steps", low=1)
    _, alpha, beta = _lr_constants(1.0, alpha, beta)
    p = min(step / total_steps, 1.0)
    return 1.0 / (1.0 + alpha * p) ** beta
