"""PixPro with a momentum branch (docs/original-system.md §2.1), taking precomputed positive-pair masks."""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pixpro_of.config import ModelConfig  # the trainer's ``model`` section; defaults and checks live there
from pixpro_of.losses.pixpro_loss import pixpro_loss
from pixpro_of.model.encoder import build_encoder, c5_size
from pixpro_of.model.heads import PixelPropagation, Projector


def momentum_at(step: int, total_steps: int, base: float = 0.99) -> float:
    """EMA momentum ``1 − (1 − base)·(cos(π·step/total) + 1)/2``: ``base`` at step 0, 1 at the end.

    ``step`` is clamped to ``[0, total_steps]``. The seed's ``K`` (total) is
    ``int(num_instances / world / batch · epochs)``; pass the trainer's real total iteration count.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps should be > 0, got {total_steps}")
    s = min(max(int(step), 0), int(total_steps))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * s / total_steps) + 1.0) / 2.0


class PixPro(nn.Module):
    """PixPro: online ``encoder → projector → ppm`` and momentum ``encoder_k → projector_k``.

    The momentum copies start equal to the online modules and never get gradients
    (``requires_grad=False``). Both views pass through each branch separately (BatchNorm statistics
    per view, as in the seed).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = build_encoder(cfg.arch)
        self.projector = Projector(self.encoder.out_channels, cfg.proj_hidden, cfg.proj_dim)
        self.ppm = PixelPropagation(cfg.proj_dim, cfg.ppm_layers, cfg.ppm_gamma)
        self.encoder_k = copy.deepcopy(self.encoder)
        self.projector_k = copy.deepcopy(self.projector)
        for p in list(self.encoder_k.parameters()) + list(self.projector_k.parameters()):
            p.requires_grad_(False)

    @staticmethod
    def feature_size(image_size: int) -> int:
        """Side F of the C5 map (and of the positive-pair grid) for ``image_size`` inputs."""
        return c5_size(image_size)

    def online_modules(self) -> List[nn.Module]:
        """The trainable modules (what the optimizer gets parameters from)."""
        return [self.encoder, self.projector, self.ppm]

    def momentum_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        """``(online, momentum)`` module pairs."""
        return [(self.encoder, self.encoder_k), (self.projector, self.projector_k)]

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """``θ_k ← m·θ_k + (1 − m)·θ`` for every parameter of the momentum branch.

        Computed as one ``torch._foreach_lerp_`` (``θ_k + (1 − m)·(θ − θ_k)``, the same value up to
        float rounding): a single read-modify-write pass over the momentum parameters instead of
        two (``mul_`` then ``add_``), which matters on CPU for ~14 M (ResNet-18) to ~33 M
        (ResNet-50) parameters. ``m = 1`` leaves ``θ_k`` unchanged and ``m = 0`` copies ``θ``
        exactly (lerp with weight 0 / 1).

        Buffers (BN running statistics) are not copied: as in the seed, the momentum branch runs
        in train mode and keeps its own running statistics from its own forward passes.
        """
        online: List[torch.Tensor] = []
        momentum: List[torch.Tensor] = []
        for q_mod, k_mod in self.momentum_pairs():
            for pq, pk in zip(q_mod.parameters(), k_mod.parameters()):
                online.append(pq.detach())
                momentum.append(pk)
        torch._foreach_lerp_(momentum, online, 1.0 - float(m))

    def _check_inputs(self, view1, view2, pos12, pos21) -> None:
        if view1.ndim != 4 or view1.shape[1] != 3:
            raise ValueError(f"view1 should have shape [B, 3, S, S], got {tuple(view1.shape)}")
        if view2.shape != view1.shape:
            raise ValueError(f"view2 should have the shape of view1 {tuple(view1.shape)}, got {tuple(view2.shape)}")
        f = c5_size(view1.shape[-1])
        want = (view1.shape[0], f * f, f * f)
        for name, pos in (("pos12", pos12), ("pos21", pos21)):
            if tuple(pos.shape) != want:
                raise ValueError(
                    f"{name} should have shape [B, F*F, F*F] = {want} for {view1.shape[-1]}px views, got "
                    f"{tuple(pos.shape)}"
                )

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, pos12: torch.Tensor, pos21: torch.Tensor
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Returns ``(loss, metrics)``; see the module docstring for shapes.

        metrics (detached 0-d tensors, this process's batch only): ``loss/1``, ``loss/2`` (the two
        directional terms), ``positive_pair/num{,/1,/2}`` (positive pairs in the batch),
        ``positive_pair/avg{,/1,/2}`` (mean positive pairs per image), ``positive_pair/empty``
        (fraction of image-directions without any positive pair).
        """
        self._check_inputs(view1, view2, pos12, pos21)
        pred1 = F.normalize(self.ppm(self.projector(self.encoder(view1))), dim=1)
        pred2 = F.normalize(self.ppm(self.projector(self.encoder(view2))), dim=1)
        with torch.no_grad():
            targ1 = F.normalize(self.projector_k(self.encoder_k(view1)), dim=1)
            targ2 = F.normalize(self.projector_k(self.encoder_k(view2)), dim=1)
        loss1, n1 = pixpro_loss(pred1, targ2, pos12, self.cfg.loss_norm)
        loss2, n2 = pixpro_loss(pred2, targ1, pos21, self.cfg.loss_norm)
        loss = loss1 + loss2
        metrics = {
            "loss/1": loss1.detach(),
            "loss/2": loss2.detach(),
            "positive_pair/num": (n1.sum() + n2.sum()),
            "positive_pair/num/1": n1.sum(),
            "positive_pair/num/2": n2.sum(),
            "positive_pair/avg": (n1.mean() + n2.mean()) / 2,
            "positive_pair/avg/1": n1.mean(),
            "positive_pair/avg/2": n2.mean(),
            "positive_pair/empty": ((n1 == 0).float().mean() + (n2 == 0).float().mean()) / 2,
        }
        return loss, metrics
