"""Optimiser (LARS) and learning-rate schedule."""

from pixpro_of.optim.lars import LARS, param_groups
from pixpro_of.optim.schedule import build_lr_scheduler, lr_at

__all__ = ["LARS", "param_groups", "build_lr_scheduler", "lr_at"]
