"""The PixPro pixel-to-propagation consistency loss for one direction (seed ``regression_loss``)."""

from __future__ import annotations

from typing import Tuple

import torch

from pixpro_of.config import LOSS_NORMS  # model.loss_norm's choices, owned by the config


def pixpro_loss(
    pred: torch.Tensor, target: torch.Tensor, pos: torch.Tensor, norm: str = "seed"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(loss, pairs)``: the scalar loss and the positive-pair count per image ``[B]``."""
    if pred.ndim != 4:
        raise ValueError(f"pred should be a 4D tensor [B, C, H, W], got shape {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target should have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    b, c, h, w = pred.shape
    if pos.shape != (b, h * w, h * w):
        raise ValueError(f"pos should have shape [B, HW, HW] = {(b, h * w, h * w)}, got {tuple(pos.shape)}")
    if norm not in LOSS_NORMS:
        raise ValueError(f"norm should be one of {LOSS_NORMS}, got {norm!r}")
    q = pred.float().flatten(2)  # [B, C, HW]
    k = target.float().flatten(2)
    with torch.autocast(device_type=pred.device.type, enabled=False):  # keep the cosines in float32
        logit = torch.bmm(q.transpose(1, 2), k)  # [B, HW, HW] cosines
    posf = pos.to(logit.dtype)
    pairs = posf.sum(dim=(1, 2))
    if norm == "seed":
        per_image = (logit * posf).sum(dim=(1, 2)) / (pairs + 1e-6)
    else:
        per_query_count = posf.sum(dim=2)  # [B, HW]
        per_query = (logit * posf).sum(dim=2) / per_query_count.clamp(min=1)
        has = (per_query_count > 0).to(logit.dtype)
        per_image = (per_query * has).sum(dim=1) / has.sum(dim=1).clamp(min=1)
    return -2.0 * per_image.mean(), pairs.detach()
