"""Losses, one per module."""

from pixpro_of.losses.pixpro_loss import LOSS_NORMS, pixpro_loss

__all__ = ["LOSS_NORMS", "pixpro_loss"]
