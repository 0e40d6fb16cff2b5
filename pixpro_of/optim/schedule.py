"""Learning-rate schedule of the seed (docs/original-system.md §2.2), stepped once per iteration."""

from __future__ import annotations

import math

import torch

from plumbing.errors import UserError


def lr_at(
    it: int,
    base_lr: float,
    warmup_iters: int,
    total_iters: int,
    warmup_multiplier: float = 100.0,
    eta_min: float = 1e-6,
) -> float:
    """The learning rate after ``it`` scheduler steps (see module docstring)."""
    if warmup_iters > 0 and it <= warmup_iters:
        return base_lr / warmup_multiplier * ((warmup_multiplier - 1.0) * it / warmup_iters + 1.0)
    span = total_iters - warmup_iters
    t = min(max(it - warmup_iters, 0), span)
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * t / span)) / 2.0


class _Factor:
    """Picklable ``LambdaLR`` factor: ``lr_at(it) / base_lr``."""

    def __init__(self, base_lr, warmup_iters, total_iters, warmup_multiplier, eta_min):
        self.args = (float(base_lr), int(warmup_iters), int(total_iters), float(warmup_multiplier), float(eta_min))

    def __call__(self, it: int) -> float:
        base, w, t, mult, eta = self.args
        return lr_at(it, base, w, t, mult, eta) / base if base > 0 else 0.0


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    base_lr: float,
    warmup_iters: int,
    total_iters: int,
    warmup_multiplier: float = 100.0,
    eta_min: float = 1e-6,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Set every group's lr to follow :func:`lr_at`; call ``scheduler.step()`` after each optimizer step.

    Raises :class:`UserError` for inconsistent settings (names the offending value).
    """
    if not base_lr >= 0:
        raise UserError(f"learning rate must be >= 0, got {base_lr}")
    if warmup_iters < 0:
        raise UserError(f"warm-up iterations must be >= 0, got {warmup_iters}")
    if total_iters <= warmup_iters:
        raise UserError(f"total iterations ({total_iters}) must exceed warm-up iterations ({warmup_iters})")
    if warmup_iters > 0 and not warmup_multiplier >= 1.0:
        raise UserError(f"warm-up multiplier must be >= 1, got {warmup_multiplier}")
    if not (0 <= eta_min < base_lr or eta_min == base_lr == 0):
        raise UserError(f"eta_min must be in [0, learning rate {base_lr}) (0 when the rate is 0), got {eta_min}")
    for group in optimizer.param_groups:
        group["lr"] = float(base_lr)
        group["initial_lr"] = float(base_lr)
    factor = _Factor(base_lr, warmup_iters, total_iters, warmup_multiplier, eta_min)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
