"""Positive cell pairs between two views from crop boxes, flips and flow (seed-system.md §2.4–2.7).

Everything lives in original-frame pixel coordinates (pixel centres at integers, ARCHITECTURE.md):

- **Cell centres** of an F×F feature grid over a view with box ``(left, top, w, h)``:
  ``cx = left + (u + 0.5)·(w − 1)/F`` and ``cy = top + (v + 0.5)·(h − 1)/F`` (the seed's
  ``(x0 + (u+0.5)·(x1−x0)/F)·(W−1)`` with ``x0 = left/(W−1)``, ``x1 = (left+w−1)/(W−1)``); a flipped
  view counts u from the right: ``cx = left + w − 1 − (u + 0.5)·(w − 1)/F``. Cells are numbered
  row-major, ``i = v·F + u``, as ``[C, F, F].flatten(1)``.
- **Bin diagonal** ``sqrt(((w−1)/F)² + ((h−1)/F)²)``; a pair uses the larger of the two views'.
- **Flow** (k > 1): view-1 centres move by the composite forward flow t → t+k−1,
  ``q' = q + F_fwd(q)`` (bilinear, zeros outside the frame); view-2 centres by the backward composite.
  A query cell is valid where the occlusion mask (``mask``) at its nearest frame pixel is True.
- **Positive** ``pos[i, j] = ‖q'_i − k_j‖ / max_bin_diag < pos_ratio  and  valid_i``.

``rule="normalized"`` is original PixPro's rule (for image datasets): the same with x divided by
``W − 1`` and y by ``H − 1`` (anisotropic on non-square frames).

Flow handling. Flows come as the clip dict has them: ``[B, n, 2, h, w]`` either at full resolution
(``h, w = H, W``) or as shard flows at 1/8 (``h = ceil(H/8)``, ``w = ceil(W/8)``, 1/8-pixel units,
mapping to full resolution like :func:`flow.ops.shard_flow_to_full`: position
``x_full = x_8·(8w − 1)/(w − 1)``, values ×8). With ``flow_resolution="coarse"`` (default) the
chaining and the FB mask run on the 1/8 grid after converting the values to that grid's units
(cheap: ~14k points at 720p); with ``"full"`` the flows are first upsampled to the frame size,
which is the seed's exact procedure (``--flow_up``) and ~64× more work. Chaining, masks and
lookups are :mod:`flow.ops`; the mask of a query cell is evaluated at its nearest frame pixel from
the composites (:meth:`FlowGrid.point_validity`), so the seed's full-resolution thresholds and
border test hold on either grid. The grid-wide masks (for ``mask_ratio``) come from
:func:`flow.ops.fb_consistency`, with the seed-mode α2 rescaled to the seed's full-resolution
threshold ``α2 / sqrt(H² + W²)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from flow import ops

MASK_MODES = ("seed", "unflow", "none")
POSITIVE_RULES = ("pixel", "normalized")
FLOW_RESOLUTIONS = ("coarse", "full")


@dataclass
class PositiveConfig:
    """How positives are computed (the SampleConfig fields of the same names)."""

    pos_ratio: float = 0.7
    mask: str = "seed"  # "seed" (§2.6), "unflow" (UnFlow, alpha2 in px² at full res) or "none"
    alpha1: float = 0.01
    alpha2: float = 0.5
    positive_rule: str = "pixel"  # or "normalized" (original PixPro)
    flow_resolution: str = "coarse"  # or "full" (upsample before chaining, the seed's exact path)


def cell_centres(box: torch.Tensor, flip: torch.Tensor, grid: int) -> torch.Tensor:
    """Cell centres ``[B, F·F, 2]`` (x, y) in frame pixels for boxes ``[B, 4]`` and flips ``[B]``."""
    box = box.to(torch.float64)
    left, top, w, h = box.unbind(-1)
    steps = (torch.arange(grid, dtype=torch.float64, device=box.device) + 0.5) / grid  # [F]
    xs = left[:, None] + steps[None] * (w[:, None] - 1)
    xs_flip = (left + w - 1)[:, None] - steps[None] * (w[:, None] - 1)
    xs = torch.where(flip.to(torch.bool)[:, None], xs_flip, xs)  # [B, F]
    ys = top[:, None] + steps[None] * (h[:, None] - 1)  # [B, F]
    cx = xs[:, None, :].expand(-1, grid, -1)  # [B, v, u]
    cy = ys[:, :, None].expand(-1, -1, grid)
    return torch.stack([cx, cy], dim=-1).reshape(box.shape[0], grid * grid, 2)


def bin_size(box: torch.Tensor, grid: int) -> torch.Tensor:
    """Bin width and height ``[B, 2]`` in frame pixels: ``((w − 1)/F, (h − 1)/F)``."""
    box = box.to(torch.float64)
    return torch.stack([(box[:, 2] - 1) / grid, (box[:, 3] - 1) / grid], dim=-1)


def pair_positives(q: torch.Tensor, k: torch.Tensor, bin_q: torch.Tensor, bin_k: torch.Tensor,
                   valid_q: torch.Tensor, pos_ratio: float, frame_hw: Tuple[int, int],
                   rule: str = "pixel") -> torch.Tensor:
    """``pos [B, N, M]``: ``‖q_i − k_j‖ / max(diag_q, diag_k) < pos_ratio`` and ``valid_q[i]``.

    ``q [B, N, 2]`` (already warped into k's frame), ``k [B, M, 2]``, ``bin_* [B, 2]`` (pixels).
    """
    if rule not in POSITIVE_RULES:
        raise ValueError(f"rule should be one of {POSITIVE_RULES}, got {rule!r}")
    if rule == "normalized":
        h, w = frame_hw
        scale = torch.tensor([1.0 / (w - 1), 1.0 / (h - 1)], dtype=torch.float64, device=q.device)
    else:
        scale = torch.ones(2, dtype=torch.float64, device=q.device)
    q = q.to(torch.float64) * scale
    k = k.to(torch.float64) * scale
    diag = torch.maximum(torch.linalg.vector_norm(bin_q * scale, dim=-1), torch.linalg.vector_norm(bin_k * scale, dim=-1))
    dist = torch.cdist(q, k) / diag[:, None, None]
    return (dist < pos_ratio) & valid_q[:, :, None]


class FlowGrid:
    """Composite flows and occlusion masks of a batch of clips on one grid, for point look-ups.

    ``fwd``/``bwd``: ``[B, n, 2, h, w]`` (time order, as the clip dict), ``frame_hw = (H, W)``.
    """

    def __init__(self, fwd: torch.Tensor, bwd: torch.Tensor, frame_hw: Tuple[int, int], cfg: PositiveConfig):
        if fwd.ndim != 5 or fwd.shape[2] != 2 or fwd.shape[1] < 1:
            raise ValueError(f"fwd should have shape [B, n>=1, 2, h, w], got {tuple(fwd.shape)}")
        if bwd.shape != fwd.shape:
            raise ValueError(f"bwd should have the shape of fwd {tuple(fwd.shape)}, got {tuple(bwd.shape)}")
        H, W = frame_hw
        h, w = fwd.shape[-2:]
        fwd = fwd.float()
        bwd = bwd.float()
        if (h, w) == (H, W):
            self.pos_scale = (1.0, 1.0)
        elif (h, w) == (math.ceil(H / 8), math.ceil(W / 8)):
            if h < 2 or w < 2:
                raise ValueError(f"flow grid {h}x{w} is too small for frame {H}x{W}")
            if cfg.flow_resolution == "full":
                b, n = fwd.shape[:2]
                fwd = ops.shard_flow_to_full(fwd.reshape(b * n, 2, h, w), (H, W)).reshape(b, n, 2, H, W)
                bwd = ops.shard_flow_to_full(bwd.reshape(b * n, 2, h, w), (H, W)).reshape(b, n, 2, H, W)
                self.pos_scale = (1.0, 1.0)
            else:
                # 1/8-pixel values -> units of this grid; grid pixel x maps to frame x * sx.
                sx, sy = (8 * w - 1) / (w - 1), (8 * h - 1) / (h - 1)
                unit = torch.tensor([8.0 / sx, 8.0 / sy], device=fwd.device).view(1, 1, 2, 1, 1)
                fwd, bwd = fwd * unit, bwd * unit
                self.pos_scale = (sx, sy)
        else:
            raise ValueError(f"flow of size {h}x{w} matches neither the frame {H}x{W} nor its 1/8 "
                             f"({math.ceil(H / 8)}x{math.ceil(W / 8)})")
        self.cfg = cfg
        self.frame_hw = (int(H), int(W))
        self.fwd = ops.chain_flows(fwd)  # [B, 2, h', w'] t -> t+k-1, grid units
        self.bwd = ops.chain_backward(bwd)  # t+k-1 -> t
        gh, gw = self.fwd.shape[-2:]
        if cfg.mask == "none":
            self.valid_fwd = torch.ones(self.fwd.shape[0], gh, gw, dtype=torch.bool, device=self.fwd.device)
            self.valid_bwd = self.valid_fwd
        elif cfg.mask == "seed":
            a2 = cfg.alpha2 * math.sqrt(gh * gh + gw * gw) / math.sqrt(H * H + W * W)
            self.valid_fwd = ops.fb_consistency(self.fwd, self.bwd, "seed", cfg.alpha1, a2)
            self.valid_bwd = ops.fb_consistency(self.bwd, self.fwd, "seed", cfg.alpha1, a2)
        elif cfg.mask == "unflow":
            self.valid_fwd = ops.fb_consistency(self.fwd, self.bwd, "unflow", cfg.alpha1, cfg.alpha2, alpha2_size=(H, W))
            self.valid_bwd = ops.fb_consistency(self.bwd, self.fwd, "unflow", cfg.alpha1, cfg.alpha2, alpha2_size=(H, W))
        else:
            raise ValueError(f"mask should be one of {MASK_MODES}, got {cfg.mask!r}")

    def _to_grid(self, points: torch.Tensor) -> torch.Tensor:
        sx, sy = self.pos_scale
        return points / torch.tensor([sx, sy], dtype=points.dtype, device=points.device)

    def displacement(self, points: torch.Tensor, backward: bool = False) -> torch.Tensor:
        """Composite flow (frame pixels) at frame points ``[B, N, 2]``: bilinear, zeros outside."""
        field = self.bwd if backward else self.fwd
        disp = ops.sample_at(field.double(), self._to_grid(points.to(torch.float64)))
        sx, sy = self.pos_scale
        return disp * torch.tensor([sx, sy], dtype=torch.float64, device=points.device)

    def point_validity(self, points: torch.Tensor, backward: bool = False) -> torch.Tensor:
        """The occlusion mask at frame points ``[B, N, 2]`` → bool ``[B, N]``.

        As the seed, the mask is evaluated at the nearest frame pixel of each point (it sampled its
        full-resolution mask with nearest interpolation), with the composite flows read bilinearly
        at that pixel and at its target: ``mode="seed"`` is §2.6 (normalised units, target strictly
        inside the frame, threshold ``α1·(|f|² + |b̂|²) + α2/sqrt(H² + W²)``), ``"unflow"`` is
        UnFlow in frame pixels (target inside, borders included). Evaluating at points keeps the
        seed's full-resolution border test exact on the coarse grid.
        """
        cfg = self.cfg
        if cfg.mask == "none":
            return torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
        H, W = self.frame_hw
        p = torch.floor(points.to(torch.float64) + 0.5)
        f = self.displacement(p, backward)
        target = p + f
        b = self.displacement(target, not backward)
        if cfg.mask == "seed":
            norm = torch.tensor([2.0 / (W - 1), 2.0 / (H - 1)], dtype=torch.float64, device=points.device)
            f_n, b_n = f * norm, b * norm
            t_n = target * norm - 1.0
            inside = (t_n.abs() < 1).all(-1)
            cycle = ((f_n + b_n) ** 2).sum(-1)
            eps = cfg.alpha1 * ((f_n ** 2).sum(-1) + (b_n ** 2).sum(-1)) + cfg.alpha2 / math.sqrt(H * H + W * W)
            return inside & (cycle <= eps)
        inside = (target[..., 0] >= 0) & (target[..., 0] <= W - 1) & (target[..., 1] >= 0) & (target[..., 1] <= H - 1)
        cycle = ((f + b) ** 2).sum(-1)
        eps = cfg.alpha1 * ((f ** 2).sum(-1) + (b ** 2).sum(-1)) + cfg.alpha2
        return inside & (cycle < eps)

    def warp(self, points: torch.Tensor, backward: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Move frame points ``[B, N, 2]`` by the composite flow; returns ``(moved, valid [B, N])``."""
        moved = points.to(torch.float64) + self.displacement(points, backward)
        return moved, self.point_validity(points, backward)

    def mask_ratio(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fraction of flow-grid pixels rejected by the forward and by the backward mask, ``[B]`` each
        (the seed's logged ``mask_ratio``; computed with :func:`flow.ops.fb_consistency` on the grid)."""
        return (1.0 - self.valid_fwd.flatten(1).double().mean(1)), (1.0 - self.valid_bwd.flatten(1).double().mean(1))


def compute_positives(box1: torch.Tensor, flip1: torch.Tensor, box2: torch.Tensor, flip2: torch.Tensor,
                      frame_hw: Tuple[int, int], grid: int, cfg: PositiveConfig,
                      fwd: Optional[torch.Tensor] = None, bwd: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Positive matrices of a batch of samples.

    Args:
        box1, box2: ``[B, 4]`` crop boxes (left, top, width, height) in frame pixels.
        flip1, flip2: ``[B]`` bool.
        frame_hw: ``(H, W)`` of the original frames (all samples of the batch share it).
        grid: F, the side of the feature map.
        fwd, bwd: ``[B, k−1, 2, h, w]`` flows in time order, or None / ``k − 1 = 0`` for k = 1.
    All inputs may live on any device (e.g. CUDA, with flows from RAFT on the fly); the outputs
    are on the same device.
    Returns:
        dict with ``pos12``, ``pos21`` (bool ``[B, F·F, F·F]``), ``valid1``, ``valid2`` (bool
        ``[B, F·F]``, query cells passing the mask), ``centres1``, ``centres2`` (``[B, F·F, 2]``),
        ``warped1`` (view-1 centres in frame t+k−1), ``warped2`` (view-2 centres in frame t),
        ``mask_ratio``, ``mask_ratio_fwd``, ``mask_ratio_bwd`` (``[B]``, fraction of flow pixels
        the FB mask rejects; 0 for k = 1).
    """
    if cfg.positive_rule not in POSITIVE_RULES:
        raise ValueError(f"positive_rule should be one of {POSITIVE_RULES}, got {cfg.positive_rule!r}")
    b = box1.shape[0]
    for name, t in (("box1", box1), ("box2", box2)):
        if t.ndim != 2 or t.shape != (b, 4):
            raise ValueError(f"{name} should have shape [B, 4] = ({b}, 4), got {tuple(t.shape)}")
    for name, t in (("flip1", flip1), ("flip2", flip2)):
        if tuple(t.shape) != (b,):
            raise ValueError(f"{name} should have shape [B] = ({b},), got {tuple(t.shape)}")
    c1 = cell_centres(box1, flip1, grid)
    c2 = cell_centres(box2, flip2, grid)
    bin1, bin2 = bin_size(box1, grid), bin_size(box2, grid)
    if fwd is None or fwd.shape[1] == 0:
        w1, w2 = c1, c2
        v1 = torch.ones(b, grid * grid, dtype=torch.bool, device=box1.device)
        v2 = v1
        ratio_f = ratio_b = torch.zeros(b, dtype=torch.float64, device=box1.device)
    else:
        if bwd is None:
            raise ValueError("bwd is required when fwd is given")
        flow = FlowGrid(fwd, bwd, frame_hw, cfg)
        w1, v1 = flow.warp(c1, backward=False)
        w2, v2 = flow.warp(c2, backward=True)
        ratio_f, ratio_b = flow.mask_ratio()
    pos12 = pair_positives(w1, c2, bin1, bin2, v1, cfg.pos_ratio, frame_hw, cfg.positive_rule)
    pos21 = pair_positives(w2, c1, bin2, bin1, v2, cfg.pos_ratio, frame_hw, cfg.positive_rule)
    return {
        "pos12": pos12, "pos21": pos21, "valid1": v1, "valid2": v2,
        "centres1": c1, "centres2": c2, "warped1": w1, "warped2": w2,
        "mask_ratio": (ratio_f + ratio_b) / 2, "mask_ratio_fwd": ratio_f, "mask_ratio_bwd": ratio_b,
    }
