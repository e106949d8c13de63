"""The DANN paper's schedules (Ganin & Lempitsky, 2015, section 5.2.2).

``p`` is training progress in [0, 1]. Each function takes a Python float (checked)
or a tensor (clamped to [0, 1] on its device, no host sync).
"""

import math

import torch


def _progress(p):
    if isinstance(p, torch.Tensor):
        return p.clamp(0.0, 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"grl_cuda: progress p must be a float or a tensor, got {type(p).__name__}.")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"grl_cuda: progress p must be in [0, 1], got {p}.")
    return float(p)


def dann_lambda(p, gamma=10.0, lo=0.0, hi=1.0):
    """lambda_p = lo + (hi - lo) * (2 / (1 + exp(-gamma * p)) - 1): 0 at the start, hi at the end.
    Suppresses the domain classifier's noisy signal early in training."""
    p = _progress(p)
    if isinstance(p, torch.Tensor):
        return lo + (hi - lo) * (2.0 / (1.0 + torch.exp(-gamma * p)) - 1.0)
    return lo + (hi - lo) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def annealed_lr(p, mu0=0.01, alpha=10.0, beta=0.75):
    """mu_p = mu0 / (1 + alpha * p) ** beta."""
    p = _progress(p)
    return mu0 / (1.0 + alpha * p) ** beta


def annealed_lr_factor(step, total_steps, alpha=10.0, beta=0.75):
    """The factor mu_p / mu0 at a step, for ``torch.optim.lr_scheduler.LambdaLR``:
    ``LambdaLR(opt, lambda s: annealed_lr_factor(s, total_steps))``."""
    if total_steps <= 0:
        raise ValueError(f"grl_cuda: total_steps must be positive, got {total_steps}.")
    p = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 / (1.0 + alpha * p) ** beta
