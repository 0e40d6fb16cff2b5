"""Flow operations on batched torch tensors: sampling, warping, resizing, chaining, FB masks.

Conventions (ARCHITECTURE.md, "Coordinates and flow"):

- A flow field is ``[..., 2, H, W]``: channel 0 = x displacement, channel 1 = y displacement,
  in pixels of the resolution it is stored at. Pixel centres are at integer coordinates
  ``0 … W-1`` and ``0 … H-1``.
- Every bilinear lookup uses ``grid_sample(..., align_corners=True, padding_mode="zeros")``,
  exactly as the seed did: a position ``x`` in pixels is normalised as ``2x/(W-1) - 1``.
  Samples outside the frame fade to zero within one pixel of the border and are zero beyond.
- Validity masks are boolean ``[B, H, W]`` with True = valid.

All functions accept float tensors on any device; they compute in float32 (or float64 when
given float64) and never build autograd graphs they do not need.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "pixel_grid",
    "sample_at",
    "warp_image",
    "upsample_flow",
    "resize_flow",
    "shard_flow_to_full",
    "full_flow_to_shard",
    "chain_flows",
    "chain_backward",
    "fb_consistency",
    "in_frame",
    "endpoint_error",
]


def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_flow(name: str, flow: torch.Tensor, ndim: Optional[int] = 4) -> None:
    if not isinstance(flow, torch.Tensor):
        raise TypeError(f"{name} should be a torch.Tensor, got {type(flow).__name__}")
    if ndim is not None and flow.ndim != ndim:
        raise ValueError(f"{name} should be a {ndim}D tensor, got {flow.ndim}D with shape {tuple(flow.shape)}")
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"{name} should have shape [..., 2, H, W], got {tuple(flow.shape)}")


def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates ``[2, H, W]``: channel 0 = x (column), channel 1 = y (row)."""
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=0)


def _normalise_points(points: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel positions ``[..., 2]`` (x, y) to grid_sample's [-1, 1] units (align_corners=True)."""
    # Same arithmetic order as the seed's normalize_coord (2 * x / (W - 1) - 1), so results match it bit for bit.
    x = 2 * points[..., 0] / max(w - 1, 1) - 1
    y = 2 * points[..., 1] / max(h - 1, 1) - 1
    return torch.stack([x, y], dim=-1)


def _sample_grid(field: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``field [B, C, H, W]`` at pixel ``positions [B, 2, Ho, Wo]``; returns [B, C, Ho, Wo]."""
    h, w = field.shape[-2:]
    grid = _normalise_points(positions.permute(0, 2, 3, 1), h, w).to(field.dtype)
    return F.grid_sample(field, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def sample_at(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``field`` at arbitrary points.

    Args:
        field: ``[B, C, H, W]`` float tensor.
        points: ``[B, N, 2]`` positions (x, y) in pixels of ``field``.
    Returns:
        ``[B, N, C]``; points outside the frame read zeros (partial weights within one pixel
        of the border), as ``grid_sample(align_corners=True, padding_mode="zeros")``.
    """
    if field.ndim != 4:
        raise ValueError(f"field should be a 4D tensor [B, C, H, W], got shape {tuple(field.shape)}")
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"points should have shape [B, N, 2], got {tuple(points.shape)}")
    if points.shape[0] != field.shape[0]:
        raise ValueError(f"points and field should have the same batch size, got {points.shape[0]} and {field.shape[0]}")
    field = _float(field)
    h, w = field.shape[-2:]
    grid = _normalise_points(points.to(field.dtype), h, w).unsqueeze(1)  # [B, 1, N, 2]
    out = F.grid_sample(field, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, :, 0].transpose(1, 2)  # [B, N, C]


def warp_image(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: ``out(x) = img(x + flow(x))``, bilinear, zeros outside the frame.

    Args:
        img: ``[B, C, H, W]`` (any float dtype; integer images are converted to float32).
        flow: ``[B, 2, H, W]`` in pixels of this resolution.
    Returns:
        ``[B, C, H, W]`` float tensor. With ``flow`` = the backward flow t+1 → t and ``img`` =
        frame t, the result approximates frame t+1 where it is visible in frame t.
    """
    _check_flow("flow", flow)
    if img.ndim != 4:
        raise ValueError(f"img should be a 4D tensor [B, C, H, W], got shape {tuple(img.shape)}")
    if img.shape[0] != flow.shape[0] or img.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"img and flow should have the same batch and spatial size, got {tuple(img.shape)} and {tuple(flow.shape)}")
    img = _float(img)
    flow = flow.to(img.dtype)
    h, w = flow.shape[-2:]
    pos = pixel_grid(h, w, flow.device, flow.dtype).unsqueeze(0) + flow
    return _sample_grid(img, pos)


def resize_flow(flow: torch.Tensor, size: Sequence[int], mode: str = "bilinear",
                scale: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """Resample a flow field to ``size = (H, W)`` and rescale its values to the new pixel units.

    Args:
        flow: ``[..., 2, h, w]``.
        size: target ``(H, W)``.
        mode: ``"bilinear"`` (align_corners=True; any direction) or ``"area"`` (block average;
            only for downsampling, as used to make 1/8-resolution flow from a full-resolution one).
        scale: value multipliers ``(sx, sy)``; default ``(W / w, H / h)``.
    Returns:
        ``[..., 2, H, W]`` float tensor in pixels of the new resolution.
    """
    _check_flow("flow", flow, ndim=None)
    H, W = int(size[0]), int(size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"size should be positive (H, W), got {tuple(size)}")
    lead = flow.shape[:-3]
    h, w = flow.shape[-2:]
    x = _float(flow).reshape(-1, 2, h, w)
    if (h, w) != (H, W):
        if mode == "bilinear":
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=True)
        elif mode == "area":
            x = F.adaptive_avg_pool2d(x, (H, W))
        else:
            raise ValueError(f"mode should be 'bilinear' or 'area', got {mode!r}")
    sx, sy = scale if scale is not None else (W / w, H / h)
    x = torch.stack([x[:, 0] * sx, x[:, 1] * sy], dim=1)
    return x.reshape(*lead, 2, H, W)


def upsample_flow(flow: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=True) upsampling of ``[..., 2, h, w]`` to ``size = (H, W)``.

    Values are multiplied by ``W / w`` (x) and ``H / h`` (y): x8 for shard flows of a frame whose
    sides are multiples of 8 (90×160 → 720×1280), the seed's ``upflow8``. For other frame sizes
    use :func:`shard_flow_to_full`.
    """
    return resize_flow(flow, size, mode="bilinear")


def shard_flow_to_full(flow8: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Shard flow (``[..., 2, ceil(H/8), ceil(W/8)]``, 1/8-pixel units) to full resolution ``size``.

    Upsamples to the padded size ``(8·h8, 8·w8)`` with values x8 (the seed's ``upflow8``) and crops
    the bottom/right padding, matching how the estimators pad frames (at the bottom and right).
    Equal to :func:`upsample_flow` when H and W are multiples of 8.
    """
    _check_flow("flow8", flow8, ndim=None)
    H, W = int(size[0]), int(size[1])
    h8, w8 = flow8.shape[-2:]
    if h8 != math.ceil(H / 8) or w8 != math.ceil(W / 8):
        raise ValueError(f"flow8 should be [..., 2, {math.ceil(H / 8)}, {math.ceil(W / 8)}] for frame size {H}x{W}, got {tuple(flow8.shape)}")
    full = resize_flow(flow8, (8 * h8, 8 * w8), scale=(8.0, 8.0))
    return full[..., :H, :W].contiguous()


def full_flow_to_shard(flow: torch.Tensor) -> torch.Tensor:
    """Full-resolution flow ``[..., 2, H, W]`` to shard units ``[..., 2, ceil(H/8), ceil(W/8)]``.

    Area-averages 8×8 blocks (replicating the last row/column into the padding when H or W is not
    a multiple of 8) and divides the values by 8. This is how DIS flow is stored.
    """
    _check_flow("flow", flow, ndim=None)
    lead = flow.shape[:-3]
    H, W = flow.shape[-2:]
    h8, w8 = math.ceil(H / 8), math.ceil(W / 8)
    x = _float(flow).reshape(-1, 2, H, W)
    if (8 * h8, 8 * w8) != (H, W):
        x = F.pad(x, (0, 8 * w8 - W, 0, 8 * h8 - H), mode="replicate")
    x = F.avg_pool2d(x, 8) / 8.0
    return x.reshape(*lead, 2, h8, w8)


def chain_flows(flows: torch.Tensor) -> torch.Tensor:
    """Compose ``n`` adjacent flows into one: t → t+n (docs/original-system.md §2.5, ``concat_flow``).

    ``p ← grid; for s in 0..n-1: p ← p + bilinear(flows[:, s], at p); return p − grid``, with
    ``grid_sample(align_corners=True, padding_mode="zeros")``: a point that leaves the frame reads
    zero flow and so stops moving.

    Args:
        flows: ``[B, n, 2, H, W]``, ``flows[:, s]`` maps frame t+s → t+s+1 (pixels). For the
            backward chain t+n → t pass the backward flows in *reverse* time order,
            ``bwd[:, ::-1]`` (``bwd[s]`` maps t+s+1 → t+s), e.g. ``chain_flows(bwd.flip(1))``.
    Returns:
        ``[B, 2, H, W]`` composite flow in pixels. ``n = 1`` returns ``flows[:, 0]``.
    """
    if flows.ndim != 5 or flows.shape[2] != 2:
        raise ValueError(f"flows should have shape [B, n, 2, H, W], got {tuple(flows.shape)}")
    n = flows.shape[1]
    if n == 0:
        raise ValueError("flows should hold at least one flow (n >= 1), got n = 0")
    flows = _float(flows)
    if n == 1:
        return flows[:, 0].clone()
    b, _, _, h, w = flows.shape
    grid = pixel_grid(h, w, flows.device, flows.dtype).unsqueeze(0).expand(b, -1, -1, -1)
    pos = grid.clone()
    for s in range(n):
        pos = pos + _sample_grid(flows[:, s], pos)
    return pos - grid


def chain_backward(bwd: torch.Tensor) -> torch.Tensor:
    """Backward composite t+n → t from backward flows in time order ``[B, n, 2, H, W]``."""
    if bwd.ndim != 5 or bwd.shape[2] != 2:
        raise ValueError(f"bwd should have shape [B, n, 2, H, W], got {tuple(bwd.shape)}")
    return chain_flows(bwd.flip(1))


def in_frame(flow: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` True where ``x + flow(x)`` lies inside the frame (borders included)."""
    _check_flow("flow", flow)
    h, w = flow.shape[-2:]
    pos = pixel_grid(h, w, flow.device, _float(flow).dtype).unsqueeze(0) + flow
    return (pos[:, 0] >= 0) & (pos[:, 0] <= w - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)


def fb_consistency(fwd: torch.Tensor, bwd: torch.Tensor, mode: str = "seed", alpha1: float = 0.01,
                   alpha2: float = 0.5, alpha2_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Forward–backward consistency mask for the flow ``fwd`` (frame A → B), True = valid.

    With ``b̂(x) = bilinear(bwd, at x + fwd(x))`` (zeros outside the frame):

    - ``mode="seed"`` — exactly the seed's ``forward_backward_consistency`` (docs/original-system.md §2.6):
      flows are normalised to [-1, 1] units (``u·2/(W-1)``, ``v·2/(H-1)``); valid iff the target is
      strictly inside (``|x_n| < 1`` and ``|y_n| < 1``, so a target exactly on the border row or
      column is rejected, as in the seed) and
      ``|f_n + b̂_n|² <= alpha1·(|f_n|² + |b̂_n|²) + alpha2 / sqrt(H² + W²)``.
      ``alpha2_size`` is ignored (the seed's threshold already depends on H, W).
    - ``mode="unflow"`` — UnFlow (Meister et al. 2018) in pixels:
      valid iff the target is inside the frame (borders included) and
      ``|f + b̂|² < alpha1·(|f|² + |b̂|²) + alpha2'`` where ``alpha2' = alpha2·s²`` (px²) and
      ``s`` = diagonal of (H, W) / diagonal of ``alpha2_size``: ``alpha2`` is given in px² at
      ``alpha2_size`` (default: the flows' own resolution, s = 1).

    Args:
        fwd: ``[B, 2, H, W]`` flow A → B (pixels).
        bwd: ``[B, 2, H, W]`` flow B → A (pixels). For the mask of ``bwd`` swap the arguments.
    Returns:
        ``[B, H, W]`` bool.
    """
    if mode not in ("seed", "unflow"):
        raise ValueError(f"mode should be 'seed' or 'unflow', got {mode!r}")
    _check_flow("fwd", fwd)
    _check_flow("bwd", bwd)
    if fwd.shape != bwd.shape:
        raise ValueError(f"fwd and bwd should have the same shape, got {tuple(fwd.shape)} and {tuple(bwd.shape)}")
    fwd = _float(fwd)
    bwd = bwd.to(fwd.dtype)
    b, _, h, w = fwd.shape
    grid = pixel_grid(h, w, fwd.device, fwd.dtype).unsqueeze(0)
    if mode == "seed":
        # The seed's arithmetic, step by step: normalised grid + normalised flow, sampled directly.
        def nflow(f):
            return torch.stack([2 * f[:, 0] / (w - 1), 2 * f[:, 1] / (h - 1)], dim=1)

        grid_n = _normalise_points(grid.permute(0, 2, 3, 1), h, w).permute(0, 3, 1, 2)
        f_n, b_n = nflow(fwd), nflow(bwd)
        t_n = grid_n + f_n
        valid = (t_n[:, 0].abs() < 1) & (t_n[:, 1].abs() < 1)
        bh_n = F.grid_sample(b_n, t_n.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=True)
        cycle = ((f_n + bh_n) ** 2).sum(1)
        eps = alpha1 * ((f_n ** 2).sum(1) + (bh_n ** 2).sum(1)) + alpha2 / math.sqrt(h * h + w * w)
        return valid & (cycle - eps <= 0)
    target = grid + fwd
    bhat = _sample_grid(bwd, target)
    if alpha2_size is not None:
        hr, wr = alpha2_size
        s2 = (h * h + w * w) / float(hr * hr + wr * wr)
    else:
        s2 = 1.0
    valid = (target[:, 0] >= 0) & (target[:, 0] <= w - 1) & (target[:, 1] >= 0) & (target[:, 1] <= h - 1)
    cycle = ((fwd + bhat) ** 2).sum(1)
    eps = alpha1 * ((fwd ** 2).sum(1) + (bhat ** 2).sum(1)) + alpha2 * s2
    return valid & (cycle < eps)


def endpoint_error(pred: torch.Tensor, gt: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean end-point error ``|pred − gt|₂`` per batch element, over ``mask`` ([B, H, W] bool) if given.

    Returns a ``[B]`` float tensor (NaN for an element whose mask is empty).
    """
    _check_flow("pred", pred)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt should have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    err = torch.linalg.vector_norm(_float(pred) - _float(gt), dim=1)
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.to(err.dtype)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1)
