"""Positive cell pairs between two views from crop boxes, flips and flow (docs/original-system.md §2.4–2.7).

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

Cost. :class:`FlowGrid` chains the forward and backward flows of the whole grid as one batch
(the values of :mod:`flow.ops`, bit for bit). A grid pixel's composite depends on its own
trajectory only, so with ``mask_ratio_stride > 1`` on CPU (:class:`SparseFlowGrid`) only the pixels
that the look-ups read are chained — the query points' bilinear neighbours, their targets'
neighbours and the ``mask_ratio`` sample — with the same float32 steps: positives, masks and
warps stay bit-identical, and ``mask_ratio`` becomes the full-grid mask counted on every
``mask_ratio_stride``-th grid pixel per axis (an unbiased estimate of the all-pixel fraction). At
the 1/8 grid that saves little (~0.25 ms of ~2 ms per 720p sample, k = 6), so the default is the
exact stride 1; with ``flow_resolution="full"`` it avoids chaining ~1M pixels per direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Protocol, Tuple

import numpy as np
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
    mask_ratio_stride: int = 1  # >1: mask_ratio from every s-th flow-grid pixel per axis, sparse chaining on CPU


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
    unit = None
    scale = (1.0, 1.0)
    if (h, w) == (H, W):
        pass
    elif (h, w) == (math.ceil(H / 8), math.ceil(W / 8)):
        if h < 2 or w < 2:
            raise ValueError(f"flow grid {h}x{w} is too small for frame {H}x{W}")
        if cfg.flow_resolution != "full":
            # 1/8-pixel values -> units of this grid; grid pixel x maps to frame x * sx.
            sx, sy = (8 * w - 1) / (w - 1), (8 * h - 1) / (h - 1)
            unit = torch.tensor([8.0 / sx, 8.0 / sy], device=fwd.device).view(1, 1, 2, 1, 1)
            scale = (sx, sy)
    else:
        raise ValueError(f"flow of size {h}x{w} matches neither the frame {H}x{W} nor its 1/8 "
                         f"({math.ceil(H / 8)}x{math.ceil(W / 8)})")
    # [2B, n, 2, h, w]; the backward flows reversed in time with index_select (Tensor.flip is slow on CPU)
    rev = torch.arange(n - 1, -1, -1, device=bwd.device)
    flows = torch.empty((2 * b, n, 2, h, w), dtype=torch.float32, device=fwd.device)
    if unit is None:
        flows[:b] = fwd
        flows[b:] = bwd.index_select(1, rev)
    else:
        torch.mul(fwd.float(), unit, out=flows[:b])
        torch.mul(bwd.float().index_select(1, rev), unit, out=flows[b:])
    if (h, w) != (H, W) and cfg.flow_resolution == "full":
        flows = ops.shard_flow_to_full(flows.reshape(2 * b * n, 2, h, w), (H, W)).reshape(2 * b, n, 2, H, W)
    return flows, scale


class _CompositeLookups:
    """Point look-ups on composite fields ``self._both [2B, 2, h, w]`` (forward composites, then
    backward), shared by :class:`FlowGrid` and :class:`SparseFlowGrid`."""

    cfg: PositiveConfig
    frame_hw: Tuple[int, int]
    pos_scale: Tuple[float, float]
    batch: int
    _both: torch.Tensor
    _both64: Optional[torch.Tensor] = None

    def _fields64(self) -> torch.Tensor:
        if self._both64 is None:
            self._both64 = self._both.double()
        return self._both64

    def _to_grid(self, points: torch.Tensor) -> torch.Tensor:
        sx, sy = self.pos_scale
        return points / torch.tensor([sx, sy], dtype=points.dtype, device=points.device)

    def _displacement(self, field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        disp = ops.sample_at(field, self._to_grid(points.to(torch.float64)))
        sx, sy = self.pos_scale
        return disp * torch.tensor([sx, sy], dtype=torch.float64, device=points.device)

    def _displacement_other(self, both: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """:meth:`_displacement` of ``points [2B, N, 2]`` in the *other* direction's field of
        ``both`` (row i < B reads field i + B and vice versa): the query halves are swapped rather
        than the (much larger) fields."""
        b = self.batch
        d = self._displacement(both, torch.cat([points[b:], points[:b]], 0))
        return torch.cat([d[b:], d[:b]], 0)

    def _validity(self, points: torch.Tensor, fields: torch.Tensor, back_fields: Optional[torch.Tensor],
                  f: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mask at the nearest pixels of ``points``; ``back_fields=None``: ``fields`` is the
        ``[2B]`` stack of both directions and the backward look-up reads the other half."""
        cfg = self.cfg
        if cfg.mask == "none":
            return torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
        H, W = self.frame_hw
        p = torch.floor(points.to(torch.float64) + 0.5)
        if f is None:
            f = self._displacement(fields, p)
        target = p + f
        if back_fields is None:
            b = self._displacement_other(fields, target)
        else:
            b = self._displacement(back_fields, target)
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

    def warp_both(self, points1: torch.Tensor, points2: torch.Tensor):
        """Move ``points1 [B, N, 2]`` (frame t) by the forward composite and ``points2`` (frame
        t+k−1) by the backward one, in one batch of look-ups; returns ``(moved1, valid1, moved2,
        valid2)``, ``valid*`` being the occlusion mask at each point (:meth:`FlowGrid.point_validity`)."""
        b = self.batch
        both = self._fields64()
        pts = torch.cat([points1, points2], 0).to(torch.float64)
        moved = pts + self._displacement(both, pts)
        valid = self._validity(pts, both, None)
        return moved[:b], valid[:b], moved[b:], valid[b:]


class FlowGrid(_CompositeLookups):
    """Composite flows and occlusion masks of a batch of clips on one grid, for point look-ups.

    ``fwd``/``bwd``: ``[B, n, 2, h, w]`` (time order, as the clip dict), ``frame_hw = (H, W)``.

    The forward and the backward chain run as one batch of ``2B`` fields (and so do the two
    forward–backward masks and the point look-ups): the arithmetic per element is that of
    :func:`flow.ops.chain_flows` / :func:`flow.ops.fb_consistency` / :func:`flow.ops.sample_at`
    (the same values bit for bit, tested), with half the per-call overhead. Every grid pixel is
    chained, so :meth:`mask_ratio` is exact; :class:`SparseFlowGrid` chains only what a sample needs.
    """

    def __init__(self, fwd: torch.Tensor, bwd: torch.Tensor, frame_hw: Tuple[int, int], cfg: PositiveConfig):
        flows, self.pos_scale = _prepare_flows(fwd, bwd, frame_hw, cfg)
        H, W = frame_hw
        b = fwd.shape[0]
        self.cfg = cfg
        self.frame_hw = (int(H), int(W))
        self.batch = b
        comp = _chain(flows)  # [2B, 2, h', w']: t -> t+k-1 composites, then t+k-1 -> t; grid units
        self.fwd, self.bwd = comp[:b], comp[b:]
        self._both = comp
        self._both64 = None
        gh, gw = comp.shape[-2:]
        if cfg.mask == "none":
            valid = torch.ones(2 * b, gh, gw, dtype=torch.bool, device=comp.device)
        else:
            if cfg.mask == "seed":
                a2 = cfg.alpha2 * math.sqrt(gh * gh + gw * gw) / math.sqrt(H * H + W * W)
                valid = _fb_seed_both(comp, b, cfg.alpha1, a2)
            else:
                swapped = torch.cat([comp[b:], comp[:b]], 0)
                valid = ops.fb_consistency(comp, swapped, "unflow", cfg.alpha1, cfg.alpha2, alpha2_size=(H, W))
        self.valid_fwd, self.valid_bwd = valid[:b], valid[b:]
        self._valid = valid

    def displacement(self, points: torch.Tensor, backward: bool = False) -> torch.Tensor:
        """Composite flow (frame pixels) at frame points ``[B, N, 2]``: bilinear, zeros outside."""
        both = self._fields64()
        field = both[self.batch:] if backward else both[:self.batch]
        return self._displacement(field, points)

    def point_validity(self, points: torch.Tensor, backward: bool = False) -> torch.Tensor:
        """The occlusion mask at frame points ``[B, N, 2]`` → bool ``[B, N]``.

        As the seed, the mask is evaluated at the nearest frame pixel of each point (it sampled its
        full-resolution mask with nearest interpolation), with the composite flows read bilinearly
        at that pixel and at its target: ``mode="seed"`` is §2.6 (normalised units, target strictly
        inside the frame, threshold ``α1·(|f|² + |b̂|²) + α2/sqrt(H² + W²)``), ``"unflow"`` is
        UnFlow in frame pixels (target inside, borders included). Evaluating at points keeps the
        seed's full-resolution border test exact on the coarse grid.
        """
        both = self._fields64()
        fw, bw = both[:self.batch], both[self.batch:]
        return self._validity(points, bw, fw) if backward else self._validity(points, fw, bw)

    def warp(self, points: torch.Tensor, backward: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Move frame points ``[B, N, 2]`` by the composite flow; returns ``(moved, valid [B, N])``."""
        moved = points.to(torch.float64) + self.displacement(points, backward)
        return moved, self.point_validity(points, backward)

    def mask_ratio(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fraction of flow-grid pixels rejected by the forward and by the backward mask, ``[B]`` each
        (the seed's logged ``mask_ratio``; :func:`flow.ops.fb_consistency` on the grid), counted
        over :func:`mask_ratio_sample` (every grid pixel when ``cfg.mask_ratio_stride`` is 1)."""
        valid = self._valid
        if int(self.cfg.mask_ratio_stride) > 1:
            ys, xs = mask_ratio_sample(valid.shape[-2], valid.shape[-1], self.cfg.mask_ratio_stride, valid.device)
            valid = valid[:, ys][:, :, xs]
        r = 1.0 - valid.flatten(1).double().mean(1)
        return r[:self.batch], r[self.batch:]


def mask_ratio_sample(h: int, w: int, stride: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the grid pixels that ``mask_ratio`` counts: every ``s``-th one along each
    axis, starting at ``s // 2``, with ``s = min(stride, h // 8, w // 8)`` (at least 1) so that small
    grids keep at least 8 rows and columns (all pixels for s = 1). At 720p (a 90×160 grid) stride 8
    counts 11×20 pixels."""
    stride = max(1, min(int(stride), h // 8, w // 8))
    ys = torch.arange(min(stride // 2, h - 1), h, stride, device=device)
    xs = torch.arange(min(stride // 2, w - 1), w, stride, device=device)
    return ys, xs


class SparseFlowGrid(_CompositeLookups):
    """What :class:`FlowGrid` gives for one set of query points, chaining only the grid pixels
    that the look-ups read.

    The composite flow at a grid pixel depends on that pixel's own trajectory only, so chaining a
    pixel alone gives the value the full-grid chain has there, bit for bit (same float32 steps).
    Chained here: the bilinear neighbours of the query points (warp), of their nearest frame
    pixels (mask), of those pixels' targets (backward look-up of the mask), and the mask-ratio
    sample, every ``cfg.mask_ratio_stride``-th grid pixel along both axes plus the neighbours of
    their targets. The fields hold zeros elsewhere, which no look-up reads. So
    :meth:`warp_both` equals :meth:`FlowGrid.warp_both` exactly, and :meth:`mask_ratio` is the
    exact full-grid mask evaluated on the sample (equal to :meth:`FlowGrid.mask_ratio` with the
    same stride), at a fraction of the cost: at 720p with stride 8, ~0.4k + ~1.0k points per
    direction (two chaining passes) instead of the 14.4k pixels of the grid. CPU only (the
    pixel bookkeeping is numpy); points must be those given here.
    """

    _MARGIN = 1e-3  # grid pixels: a point this close to a pixel line also takes the next pixel

    def __init__(self, fwd: torch.Tensor, bwd: torch.Tensor, frame_hw: Tuple[int, int], cfg: PositiveConfig,
                 points1: torch.Tensor, points2: torch.Tensor):
        flows, self.pos_scale = _prepare_flows(fwd, bwd, frame_hw, cfg)
        H, W = frame_hw
        b = fwd.shape[0]
        m = 2 * b
        self.cfg = cfg
        self.frame_hw = (int(H), int(W))
        self.batch = b
        self._flows = flows
        gh, gw = flows.shape[-2:]
        self._gh, self._gw = int(gh), int(gw)
        ys, xs = mask_ratio_sample(gh, gw, cfg.mask_ratio_stride, flows.device)
        self._sample_idx = (ys[:, None] * gw + xs[None, :]).reshape(-1)  # [K] flat grid indices
        sample_np = self._sample_idx.numpy()
        dense = torch.zeros(m, 2, gh * gw, dtype=torch.float32, device=flows.device)
        self._dense = dense
        self._both = dense.view(m, 2, gh, gw)
        self._both64 = None
        pts = torch.cat([points1, points2], 0).to(torch.float64)  # [2B, N, 2] frame pixels
        near = torch.floor(pts + 0.5)
        self._points = (points1, points2)
        sample_xy = torch.stack([(self._sample_idx % gw), (self._sample_idx // gw)], -1).to(torch.float64)
        # stage 1: each direction's own composite at the points, their nearest pixels and the sample
        if cfg.mask == "none":
            self._fill(self._neighbours(self._to_grid(pts)))
            return
        need = self._neighbours(self._to_grid(torch.cat([pts, near], 1)))
        self._fill(np.concatenate([need, np.broadcast_to(sample_np, (m, sample_np.size))], 1))
        # stage 2: the other direction's composite around the targets of the nearest pixels and of the sample
        both = self._fields64()
        n = pts.shape[1]
        disp = self._displacement(both, torch.cat([pts, near], 1))  # own-direction composites only
        self._moved, self._f_near = pts + disp[:, :n], disp[:, n:]
        tgt = near + self._f_near
        s_val = dense[:, :, self._sample_idx].permute(0, 2, 1).to(torch.float64)  # [2B, K, 2] grid px
        need2 = self._neighbours(torch.cat([self._to_grid(tgt), sample_xy[None] + s_val], 1))
        self._fill(np.concatenate([need2[b:], need2[:b]], 0))

    def warp_both(self, points1: torch.Tensor, points2: torch.Tensor):
        """:meth:`FlowGrid.warp_both`, for the points given at construction only."""
        if points1 is not self._points[0] or points2 is not self._points[1]:
            raise ValueError("SparseFlowGrid.warp_both takes the points it was built for")
        if self.cfg.mask == "none":
            return super().warp_both(points1, points2)
        b = self.batch
        both = self._fields64()
        pts = torch.cat([points1, points2], 0).to(torch.float64)
        valid = self._validity(pts, both, None, f=self._f_near)
        return self._moved[:b], valid[:b], self._moved[b:], valid[b:]

    def _neighbours(self, g: torch.Tensor) -> np.ndarray:
        """Flat indices ``[2B, 9·N]`` of the grid pixels a bilinear look-up at grid points ``g
        [2B, N, 2]`` can read (2–3 per axis, with a margin for rounding); −1 for none."""
        g = g.numpy()
        e = self._MARGIN
        lo = np.floor(g - e).astype(np.int64)
        hi = np.floor(g + e).astype(np.int64) + 1
        off = np.arange(3)
        x = lo[..., 0, None] + off  # [2B, N, 3]
        y = lo[..., 1, None] + off
        okx = (x <= hi[..., 0, None]) & (x >= 0) & (x < self._gw)
        oky = (y <= hi[..., 1, None]) & (y >= 0) & (y < self._gh)
        idx = y[..., :, None] * self._gw + x[..., None, :]  # [2B, N, 3(y), 3(x)]
        ok = oky[..., :, None] & okx[..., None, :]
        return np.where(ok, idx, -1).reshape(idx.shape[0], -1)

    def _fill(self, idx: np.ndarray) -> None:
        """Chain the grid pixels ``idx [2B, K]`` (−1 = skip) of each field and store them."""
        m = idx.shape[0]
        span = self._gh * self._gw
        mark = np.zeros((m, span + 1), dtype=bool)  # column `span` collects the −1 entries
        mark[np.arange(m)[:, None], np.where(idx >= 0, idx, span)] = True
        mark = mark[:, :span]
        rows = [np.flatnonzero(mark[i]) for i in range(m)]
        pad = np.zeros((m, max(1, max(len(r) for r in rows))), dtype=np.int64)  # pixel 0 pads (chained like any other)
        for i, r in enumerate(rows):
            pad[i, :len(r)] = r
        pad = torch.from_numpy(pad)
        vals = _trace(self._flows, pad, self._gw)  # [2B, 2, K]
        where = pad[:, None, :].expand(-1, 2, -1)
        self._dense.scatter_(2, where, vals)
        if self._both64 is not None:  # keep the float64 copy in step (the same values as .double())
            self._both64.view(m, 2, -1).scatter_(2, where, vals.double())

    def mask_ratio(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fraction of the sampled grid pixels rejected by the forward and by the backward mask,
        ``[B]`` each: :func:`flow.ops.fb_consistency`'s arithmetic at the sample pixels."""
        b = self.batch
        m = 2 * b
        if self.cfg.mask == "none":
            z = torch.zeros(b, dtype=torch.float64, device=self._dense.device)
            return z, z.clone()
        H, W = self.frame_hw
        h, w = self._gh, self._gw
        idx = self._sample_idx
        f = self._dense[:, :, idx][:, :, None, :]  # [2B, 2, 1, K]
        both = self._both

        def other(field: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
            # bilinear look-up of row i's grid points in the other direction's field (swap the queries)
            out = torch.nn.functional.grid_sample(field, torch.cat([grid[b:], grid[:b]], 0), mode="bilinear",
                                                  padding_mode="zeros", align_corners=True)
            return torch.cat([out[b:], out[:b]], 0)

        gx = (idx % w).to(torch.float32).view(1, 1, -1)
        gy = (idx // w).to(torch.float32).view(1, 1, -1)
        cfg = self.cfg
        if cfg.mask == "seed":
            a2 = cfg.alpha2 * math.sqrt(h * h + w * w) / math.sqrt(H * H + W * W)

            def nflow(t):
                return torch.stack([2 * t[:, 0] / (w - 1), 2 * t[:, 1] / (h - 1)], dim=1)

            grid_n = torch.stack([2 * gx / max(w - 1, 1) - 1, 2 * gy / max(h - 1, 1) - 1], dim=1)  # [1, 2, 1, K]
            f_n, b_n = nflow(f), nflow(both)
            t_n = grid_n + f_n
            valid = (t_n[:, 0].abs() < 1) & (t_n[:, 1].abs() < 1)
            bh_n = other(b_n, t_n.permute(0, 2, 3, 1))
            cycle = ((f_n + bh_n) ** 2).sum(1)
            eps = cfg.alpha1 * ((f_n ** 2).sum(1) + (bh_n ** 2).sum(1)) + a2 / math.sqrt(h * h + w * w)
            valid = valid & (cycle - eps <= 0)
        else:
            s2 = (h * h + w * w) / float(H * H + W * W)
            target = torch.stack([gx, gy], dim=1) + f  # [2B, 2, 1, K] grid pixels
            g = torch.stack([2 * target[:, 0] / max(w - 1, 1) - 1, 2 * target[:, 1] / max(h - 1, 1) - 1], dim=-1)
            bhat = other(both, g)
            valid = ((target[:, 0] >= 0) & (target[:, 0] <= w - 1) & (target[:, 1] >= 0) & (target[:, 1] <= h - 1))
            cycle = ((f + bhat) ** 2).sum(1)
            eps = cfg.alpha1 * ((f ** 2).sum(1) + (bhat ** 2).sum(1)) + cfg.alpha2 * s2
            valid = valid & (cycle < eps)
        r = 1.0 - valid.reshape(m, -1).double().mean(1)
        return r[:b], r[b:]


def _trace(flows: torch.Tensor, idx: torch.Tensor, w: int) -> torch.Tensor:
    """The composite of ``flows [M, n, 2, h, w]`` at flat grid pixels ``idx [M, K]`` → ``[M, 2, K]``:
    :func:`_chain`'s steps applied to those pixels only (the same float32 values)."""
    n = flows.shape[1]
    m, k = idx.shape
    h = flows.shape[-2]
    if n == 1:
        return flows[:, 0].reshape(m, 2, -1).gather(2, idx[:, None, :].expand(-1, 2, -1)).clone()
    x = (idx % w).to(flows.dtype)
    y = (idx // w).to(flows.dtype)
    start = torch.stack([x, y], -1)[:, None]  # [M, 1, K, 2]
    div = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=flows.dtype, device=flows.device)
    pos = start
    for s in range(n):
        g = (2 * pos) / div - 1
        pos = pos + torch.nn.functional.grid_sample(flows[:, s], g, mode="bilinear", padding_mode="zeros",
                                                    align_corners=True).permute(0, 2, 3, 1)
    return (pos - start)[:, 0].permute(0, 2, 1)


def _chain(flows: torch.Tensor) -> torch.Tensor:
    """:func:`flow.ops.chain_flows` (``[B, n, 2, h, w]`` → ``[B, 2, h, w]``) with the positions kept
    in ``[B, h, w, 2]`` layout between steps; the same float32 values: ``2·x / (w − 1) − 1`` (one
    ``addcdiv``: ``−1 + (2·x) / (w − 1)``, the same three roundings) → ``grid_sample(bilinear,
    zeros, align_corners=True)`` → ``p + f``."""
    n = flows.shape[1]
    if n == 1:
        return flows[:, 0].clone()
    b, _, _, h, w = flows.shape
    grid = ops.pixel_grid(h, w, flows.device, flows.dtype).permute(1, 2, 0)  # [h, w, 2] (x, y)
    div = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=flows.dtype, device=flows.device)
    minus_one = torch.full((1,), -1.0, dtype=flows.dtype, device=flows.device)
    pos = grid.expand(b, h, w, 2)
    for s in range(n):
        g = torch.addcdiv(minus_one, pos, div, value=2)
        pos = pos + torch.nn.functional.grid_sample(flows[:, s], g, mode="bilinear", padding_mode="zeros",
                                                    align_corners=True).permute(0, 2, 3, 1)
    return (pos - grid).permute(0, 3, 1, 2)


_GRID_N: Dict[tuple, torch.Tensor] = {}


def _fb_seed_both(comp: torch.Tensor, batch: int, alpha1: float, alpha2: float) -> torch.Tensor:
    """``flow.ops.fb_consistency(comp, swapped, "seed", alpha1, alpha2)`` for the ``[2B]`` stack of
    forward then backward composites (``swapped`` = its halves exchanged): the same booleans with
    fewer passes (the normalised grid is cached, both channels are normalised in one division,
    and the backward look-up swaps the query halves instead of copying the fields)."""
    b = batch
    h, w = comp.shape[-2:]
    key = (h, w, comp.device, comp.dtype)
    grid_n = _GRID_N.get(key)
    if grid_n is None:
        grid = ops.pixel_grid(h, w, comp.device, comp.dtype)
        grid_n = torch.stack([2 * grid[0] / max(w - 1, 1) - 1, 2 * grid[1] / max(h - 1, 1) - 1])[None]
        _GRID_N[key] = grid_n
    div = torch.tensor([w - 1, h - 1], dtype=comp.dtype, device=comp.device).view(1, 2, 1, 1)
    f_n = (2 * comp) / div  # = stack([2·u / (w − 1), 2·v / (h − 1)])
    t_n = grid_n + f_n
    valid = (t_n.abs() < 1).all(1)
    tq = t_n.permute(0, 2, 3, 1)
    bh = torch.nn.functional.grid_sample(f_n, torch.cat([tq[b:], tq[:b]], 0), mode="bilinear", padding_mode="zeros",
                                         align_corners=True)
    bh_n = torch.cat([bh[b:], bh[:b]], 0)
    cycle = ((f_n + bh_n) ** 2).sum(1)
    eps = alpha1 * ((f_n ** 2).sum(1) + (bh_n ** 2).sum(1)) + alpha2 / math.sqrt(h * h + w * w)
    return valid & (cycle - eps <= 0)


class Correspondence(Protocol):
    """Where query points of one frame are in the other: what :func:`compute_positives` needs of
    a flow field. :class:`FlowGrid` / :class:`SparseFlowGrid` implement it from chained flows; a
    source of exact geometry (the synthetic world) can implement it directly."""

    def warp_both(self, points1: torch.Tensor, points2: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``points1 [B, N, 2]`` of frame t moved to frame t+k−1 and ``points2`` of frame t+k−1
        moved to frame t: ``(moved1, valid1 [B, N], moved2, valid2)``."""

    def mask_ratio(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fraction of points rejected as occluded, forward and backward, ``[B]`` each."""


def compute_positives(box1: torch.Tensor, flip1: torch.Tensor, box2: torch.Tensor, flip2: torch.Tensor,
                      frame_hw: Tuple[int, int], grid: int, cfg: PositiveConfig,
                      fwd: Optional[torch.Tensor] = None, bwd: Optional[torch.Tensor] = None,
                      correspondence: Optional[Correspondence] = None) -> Dict[str, torch.Tensor]:
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
        if int(cfg.mask_ratio_stride) > 1 and fwd.device.type == "cpu":
            flow = SparseFlowGrid(fwd, bwd, frame_hw, cfg, c1, c2)
        else:
            flow = FlowGrid(fwd, bwd, frame_hw, cfg)
        w1, v1, w2, v2 = flow.warp_both(c1, c2)
        ratio_f, ratio_b = flow.mask_ratio()
    pos12 = pair_positives(w1, c2, bin1, bin2, v1, cfg.pos_ratio, frame_hw, cfg.positive_rule)
    pos21 = pair_positives(w2, c1, bin2, bin1, v2, cfg.pos_ratio, frame_hw, cfg.positive_rule)
    return {
        "pos12": pos12, "pos21": pos21, "valid1": v1, "valid2": v2,
        "centres1": c1, "centres2": c2, "warped1": w1, "warped2": w2,
        "mask_ratio": (ratio_f + ratio_b) / 2, "mask_ratio_fwd": ratio_f, "mask_ratio_bwd": ratio_b,
    }
