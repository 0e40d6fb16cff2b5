"""Positive cell pairs between two views from crop boxes, flips and flow (docs/original-system.md §2.4–2.7)."""

from __future__ import annotations

import math
from typing import Dict, Optional, Protocol, Tuple

import torch

from flow import ops
from pixpro_of.config import MASK_MODES, POSITIVE_RULES, PositiveConfig  # noqa: F401 - re-exported


def cell_centres(box: torch.Tensor, flip: torch.Tensor, grid: int) -> torch.Tensor:
    """Cell centres ``[B, F·F, 2]`` (x, y) in frame pixels for boxes ``[B, 4]`` and flips ``[B]``."""
    box = box.to(torch.float64)
    left, top, w, h = box.unbind(-1)
    steps = ops.constant([(i + 0.5) / grid for i in range(grid)], torch.float64, box.device)  # [F], cached
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


def pair_positives(
    q: torch.Tensor,
    k: torch.Tensor,
    bin_q: torch.Tensor,
    bin_k: torch.Tensor,
    valid_q: torch.Tensor,
    pos_ratio: float,
    frame_hw: Tuple[int, int],
    rule: str = "pixel",
) -> torch.Tensor:
    """``pos [B, N, M]``: ``‖q_i − k_j‖ / max(diag_q, diag_k) < pos_ratio`` and ``valid_q[i]``.

    ``q [B, N, 2]`` (already warped into k's frame), ``k [B, M, 2]``, ``bin_* [B, 2]`` (pixels).
    """
    if rule not in POSITIVE_RULES:
        raise ValueError(f"rule should be one of {POSITIVE_RULES}, got {rule!r}")
    if rule == "normalized":
        h, w = frame_hw
        scale = ops.constant((1.0 / (w - 1), 1.0 / (h - 1)), torch.float64, q.device)
    else:
        scale = ops.constant((1.0, 1.0), torch.float64, q.device)
    q = q.to(torch.float64) * scale
    k = k.to(torch.float64) * scale
    diag = torch.maximum(
        torch.linalg.vector_norm(bin_q * scale, dim=-1), torch.linalg.vector_norm(bin_k * scale, dim=-1)
    )
    dist = torch.cdist(q, k) / diag[:, None, None]
    return (dist < pos_ratio) & valid_q[:, :, None]


def _prepare_flows(fwd: torch.Tensor, bwd: torch.Tensor, frame_hw: Tuple[int, int], cfg: PositiveConfig):
    """Check shapes and bring both flow stacks to the chaining grid.

    Returns ``(flows, pos_scale)``: ``flows [2B, n, 2, h', w']`` float32 in grid pixels, the forward
    flows first, then the backward flows in chaining order (t+n → t); ``pos_scale = (sx, sy)`` maps
    grid pixel x to frame pixel ``x·sx``.
    """
    if fwd.ndim != 5 or fwd.shape[2] != 2 or fwd.shape[1] < 1:
        raise ValueError(f"fwd should have shape [B, n>=1, 2, h, w], got {tuple(fwd.shape)}")
    if bwd.shape != fwd.shape:
        raise ValueError(f"bwd should have the shape of fwd {tuple(fwd.shape)}, got {tuple(bwd.shape)}")
    if cfg.mask not in MASK_MODES:
        raise ValueError(f"mask should be one of {MASK_MODES}, got {cfg.mask!r}")
    H, W = frame_hw
    h, w = fwd.shape[-2:]
    b, n = fwd.shape[:2]
    shard = (h, w) != (H, W)
    if shard and (h, w) != (math.ceil(H / 8), math.ceil(W / 8)):
        raise ValueError(
            f"flow of size {h}x{w} matches neither the frame {H}x{W} nor its 1/8 "
            f"({math.ceil(H / 8)}x{math.ceil(W / 8)})"
        )
    if shard and (h < 2 or w < 2):
        raise ValueError(f"flow grid {h}x{w} is too small for frame {H}x{W}")
    coarse = shard and cfg.flow_resolution != "full"
    # [2B, n, 2, h, w]; the backward flows reversed in time with index_select (Tensor.flip is slow on CPU)
    rev = ops.constant(range(n - 1, -1, -1), torch.int64, bwd.device)
    flows = torch.empty((2 * b, n, 2, h, w), dtype=torch.float32, device=fwd.device)
    if coarse:  # 1/8-pixel values -> units of this grid; grid pixel x maps to frame x * sx
        ops.shard_flow_to_grid_units(fwd, out=flows[:b])
        ops.shard_flow_to_grid_units(bwd.float().index_select(1, rev), out=flows[b:])
        return flows, ops.shard_grid_scale(h, w)
    flows[:b] = fwd
    flows[b:] = bwd.index_select(1, rev)
    if shard:  # flow_resolution="full": upsample to the frame first (the seed's --flow_up)
        flows = ops.shard_flow_to_full(flows.reshape(2 * b * n, 2, h, w), (H, W)).reshape(2 * b, n, 2, H, W)
    return flows, (1.0, 1.0)


class FlowGrid:
    """Composite flows and occlusion masks of a batch of clips on one grid, for point look-ups.

    ``fwd``/``bwd``: ``[B, n, 2, h, w]`` (time order, as the clip dict), ``frame_hw = (H, W)``.

    The forward and the backward chain run as one batch of ``2B`` fields
    (:func:`flow.ops.chain_flows`), and so do the two forward–backward masks
    (:func:`flow.ops.fb_consistency_pair`) and the point look-ups (:func:`flow.ops.sample_at`,
    the other direction's field read by exchanging the query halves). Every grid pixel is
    chained, so :meth:`mask_ratio` is exact.
    """

    def __init__(self, fwd: torch.Tensor, bwd: torch.Tensor, frame_hw: Tuple[int, int], cfg: PositiveConfig):
        flows, self.pos_scale = _prepare_flows(fwd, bwd, frame_hw, cfg)
        H, W = frame_hw
        b = fwd.shape[0]
        self.cfg = cfg
        self.frame_hw = (int(H), int(W))
        self.batch = b
        comp = ops.chain_flows(flows)  # [2B, 2, h', w']: t -> t+k-1 composites, then t+k-1 -> t; grid units
        self.fwd, self.bwd = comp[:b], comp[b:]
        self._both = comp
        self._both64: Optional[torch.Tensor] = None
        gh, gw = comp.shape[-2:]
        if cfg.mask == "none":
            valid = torch.ones(2 * b, gh, gw, dtype=torch.bool, device=comp.device)
        elif cfg.mask == "seed":
            a2 = cfg.alpha2 * math.sqrt(gh * gh + gw * gw) / math.sqrt(H * H + W * W)
            valid = ops.fb_consistency_pair(comp, "seed", cfg.alpha1, a2)
        else:
            valid = ops.fb_consistency_pair(comp, "unflow", cfg.alpha1, cfg.alpha2, alpha2_size=(H, W))
        self.valid_fwd, self.valid_bwd = valid[:b], valid[b:]
        self._valid = valid

    # -------------------------------------------------------------- look-ups in frame pixels
    def _fields64(self) -> torch.Tensor:
        if self._both64 is None:
            self._both64 = self._both.double()
        return self._both64

    def _to_grid(self, points: torch.Tensor) -> torch.Tensor:
        sx, sy = self.pos_scale
        return points / ops.constant((sx, sy), points.dtype, points.device)

    def _displacement(self, field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        disp = ops.sample_at(field, self._to_grid(points.to(torch.float64)))
        sx, sy = self.pos_scale
        return disp * ops.constant((sx, sy), torch.float64, points.device)

    def _displacement_other(self, both: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """:meth:`_displacement` of ``points [2B, N, 2]`` in the *other* direction's field of
        ``both`` (row i < B reads field i + B and vice versa): the query halves are swapped rather
        than the (much larger) fields."""
        b = self.batch
        d = self._displacement(both, torch.cat([points[b:], points[:b]], 0))
        return torch.cat([d[b:], d[:b]], 0)

    def _validity(self, points: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        """The occlusion mask at frame points ``[2B, N, 2]`` → bool ``[2B, N]``: row i < B is a
        point of frame t under the forward composite (``both[i]``), row i >= B one of frame t+k−1
        under the backward composite; the other direction's field is read by exchanging halves.

        As the seed, the mask is evaluated at the nearest frame pixel of each point (it sampled its
        full-resolution mask with nearest interpolation), with the composite flows read bilinearly
        at that pixel and at its target: ``mode="seed"`` is §2.6 (normalised units, target strictly
        inside the frame, threshold ``α1·(|f|² + |b̂|²) + α2/sqrt(H² + W²)``), ``"unflow"`` is
        UnFlow in frame pixels (target inside, borders included); :func:`flow.ops.fb_consistency_at`.
        Evaluating at points keeps the seed's full-resolution border test exact on the coarse grid.
        """
        cfg = self.cfg
        if cfg.mask == "none":
            return torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
        p = torch.floor(points.to(torch.float64) + 0.5)
        f = self._displacement(both, p)
        target = p + f
        bhat = self._displacement_other(both, target)
        return ops.fb_consistency_at(f, bhat, target, self.frame_hw, cfg.mask, cfg.alpha1, cfg.alpha2)

    def warp_both(self, points1: torch.Tensor, points2: torch.Tensor):
        """Move ``points1 [B, N, 2]`` (frame t) by the forward composite and ``points2`` (frame
        t+k−1) by the backward one, in one batch of look-ups; returns ``(moved1, valid1, moved2,
        valid2)``, ``valid*`` being the occlusion mask at each point (:meth:`_validity`)."""
        b = self.batch
        both = self._fields64()
        pts = torch.cat([points1, points2], 0).to(torch.float64)
        moved = pts + self._displacement(both, pts)
        valid = self._validity(pts, both)
        return moved[:b], valid[:b], moved[b:], valid[b:]

    def displacement(self, points: torch.Tensor, backward: bool = False) -> torch.Tensor:
        """Composite flow (frame pixels) at frame points ``[B, N, 2]``: bilinear, zeros outside."""
        both = self._fields64()
        field = both[self.batch :] if backward else both[: self.batch]
        return self._displacement(field, points)

    def mask_ratio(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fraction of flow-grid pixels rejected by the forward and by the backward mask, ``[B]`` each
        (the seed's logged ``mask_ratio``; :func:`flow.ops.fb_consistency` on the whole grid)."""
        r = 1.0 - self._valid.flatten(1).double().mean(1)
        return r[: self.batch], r[self.batch :]


class Correspondence(Protocol):
    """Where query points of one frame are in the other: what :func:`compute_positives` needs of
    a flow field. :class:`FlowGrid` implements it from chained flows; a
    source of exact geometry (the synthetic world) can implement it directly."""

    def warp_both(
        self, points1: torch.Tensor, points2: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``points1 [B, N, 2]`` of frame t moved to frame t+k−1 and ``points2`` of frame t+k−1
        moved to frame t: ``(moved1, valid1 [B, N], moved2, valid2)``."""

    def mask_ratio(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fraction of points rejected as occluded, forward and backward, ``[B]`` each."""


def compute_positives(
    box1: torch.Tensor,
    flip1: torch.Tensor,
    box2: torch.Tensor,
    flip2: torch.Tensor,
    frame_hw: Tuple[int, int],
    grid: int,
    cfg: PositiveConfig,
    fwd: Optional[torch.Tensor] = None,
    bwd: Optional[torch.Tensor] = None,
    correspondence: Optional[Correspondence] = None,
) -> Dict[str, torch.Tensor]:
    """Positive matrices of a batch of samples.

    Args:
        box1, box2: ``[B, 4]`` crop boxes (left, top, width, height) in frame pixels.
        flip1, flip2: ``[B]`` bool.
        frame_hw: ``(H, W)`` of the original frames (all samples of the batch share it).
        grid: F, the side of the feature map.
        fwd, bwd: ``[B, k−1, 2, h, w]`` flows in time order, or None / ``k − 1 = 0`` for k = 1.
        correspondence: instead of flows, any object with the :class:`Correspondence` methods
            (e.g. the synthetic world's exact geometry, :class:`synth.ExactCorrespondence`).
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
    # both views in one batch (elementwise: the same values as two calls)
    c1, c2 = cell_centres(torch.cat([box1, box2]), torch.cat([flip1, flip2]), grid).split(b)
    bin1, bin2 = bin_size(torch.cat([box1, box2]), grid).split(b)
    if correspondence is not None:
        if fwd is not None or bwd is not None:
            raise ValueError("give either flows (fwd, bwd) or a correspondence, not both")
        w1, v1, w2, v2 = correspondence.warp_both(c1, c2)
        ratio_f, ratio_b = correspondence.mask_ratio()
    elif fwd is None or fwd.shape[1] == 0:
        w1, w2 = c1, c2
        v1 = torch.ones(b, grid * grid, dtype=torch.bool, device=box1.device)
        v2 = v1
        ratio_f = ratio_b = torch.zeros(b, dtype=torch.float64, device=box1.device)
    else:
        if bwd is None:
            raise ValueError("bwd is required when fwd is given")
        flow = FlowGrid(fwd, bwd, frame_hw, cfg)
        w1, v1, w2, v2 = flow.warp_both(c1, c2)
        ratio_f, ratio_b = flow.mask_ratio()
    pos12 = pair_positives(w1, c2, bin1, bin2, v1, cfg.pos_ratio, frame_hw, cfg.positive_rule)
    pos21 = pair_positives(w2, c1, bin2, bin1, v2, cfg.pos_ratio, frame_hw, cfg.positive_rule)
    return {
        "pos12": pos12,
        "pos21": pos21,
        "valid1": v1,
        "valid2": v2,
        "centres1": c1,
        "centres2": c2,
        "warped1": w1,
        "warped2": w2,
        "mask_ratio": (ratio_f + ratio_b) / 2,
        "mask_ratio_fwd": ratio_f,
        "mask_ratio_bwd": ratio_b,
    }
