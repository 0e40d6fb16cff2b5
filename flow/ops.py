"""Flow operations on batched torch tensors: sampling, warping, resizing, chaining, FB masks. The one set of flow
kernels of the project: the positives, the flow evaluation and the flow tools use these, never their own copies.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "constant",
    "pixel_grid",
    "sample_at",
    "warp_image",
    "upsample_flow",
    "resize_flow",
    "shard_flow_to_full",
    "full_flow_to_shard",
    "shard_grid_scale",
    "shard_flow_to_grid_units",
    "chain_flows",
    "chain_backward",
    "fb_consistency",
    "fb_consistency_pair",
    "fb_consistency_at",
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


_CONSTANTS: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_CONSTANTS_LOCK = threading.Lock()
_CONSTANTS_MAX = 512


def constant(values: Sequence, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A small 1-D tensor of ``values`` on ``device``, made once per (values, dtype, device) and
    cached (at most 512; least recently used dropped first): the per-batch ``torch.tensor(...,
    device=cuda)`` it replaces was a host-to-device copy on every call. Never modify it in place.

    On CUDA the copy is waited for once when the constant is made (the current stream is
    synchronised), so any stream may read it at once afterwards.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (tuple(values), dtype, dev)
    with _CONSTANTS_LOCK:
        t = _CONSTANTS.get(key)
        if t is not None:
            _CONSTANTS.move_to_end(key)
            return t
    t = torch.tensor(list(values), dtype=dtype, device=dev)
    if dev.type == "cuda":
        torch.cuda.current_stream(dev).synchronize()
    with _CONSTANTS_LOCK:
        _CONSTANTS[key] = t
        while len(_CONSTANTS) > _CONSTANTS_MAX:
            _CONSTANTS.popitem(last=False)
    return t


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
        raise ValueError(
            f"points and field should have the same batch size, got {points.shape[0]} and {field.shape[0]}"
        )
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
        raise ValueError(
            f"img and flow should have the same batch and spatial size, got {tuple(img.shape)} and {tuple(flow.shape)}"
        )
    img = _float(img)
    flow = flow.to(img.dtype)
    h, w = flow.shape[-2:]
    pos = pixel_grid(h, w, flow.device, flow.dtype).unsqueeze(0) + flow
    return _sample_grid(img, pos)


def resize_flow(
    flow: torch.Tensor, size: Sequence[int], mode: str = "bilinear", scale: Optional[Tuple[float, float]] = None
) -> torch.Tensor:
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
        raise ValueError(
            f"flow8 should be [..., 2, {math.ceil(H / 8)}, {math.ceil(W / 8)}] for frame size {H}x{W}, got "
            f"{tuple(flow8.shape)}"
        )
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


def shard_grid_scale(h8: int, w8: int) -> Tuple[float, float]:
    """Frame pixels per shard-grid pixel ``(sx, sy)``: grid position x is frame position ``x·sx``.

    The mapping of :func:`shard_flow_to_full` (align_corners=True onto the padded ``8·w8 × 8·h8``
    frame): ``sx = (8·w8 − 1)/(w8 − 1)``, ``sy = (8·h8 − 1)/(h8 − 1)``; needs ``h8, w8 >= 2``.
    """
    if h8 < 2 or w8 < 2:
        raise ValueError(f"a shard flow grid needs at least 2x2 pixels, got {h8}x{w8}")
    return (8 * w8 - 1) / (w8 - 1), (8 * h8 - 1) / (h8 - 1)


def shard_flow_to_grid_units(flow8: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Shard flow values (1/8-resolution pixels) in pixels of the shard grid itself under the
    :func:`shard_grid_scale` mapping: x values ×``8/sx``, y values ×``8/sy`` (float32).

    Chaining and FB checks can then run on the 1/8 grid and their results map to frame pixels
    by ×``(sx, sy)``, consistently with :func:`shard_flow_to_full`. ``out``: where to write.
    """
    _check_flow("flow8", flow8, ndim=None)
    sx, sy = shard_grid_scale(*flow8.shape[-2:])
    unit = constant((8.0 / sx, 8.0 / sy), torch.float32, flow8.device).view(2, 1, 1)
    return torch.mul(flow8.float(), unit, out=out)


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
    # Positions stay in grid_sample's [B, h, w, 2] layout between steps; the normalisation
    # 2·x/(w−1) − 1 is one addcdiv (−1 + (2·x)/(w−1): the same three roundings as
    # _normalise_points, so the values are those of the plain loop bit for bit, tested).
    grid = pixel_grid(h, w, flows.device, flows.dtype).permute(1, 2, 0)  # [h, w, 2] (x, y)
    div = constant((max(w - 1, 1), max(h - 1, 1)), flows.dtype, flows.device)
    minus_one = constant((-1.0,), flows.dtype, flows.device)
    pos = grid.expand(b, h, w, 2)
    for s in range(n):
        g = torch.addcdiv(minus_one, pos, div, value=2)
        pos = pos + F.grid_sample(flows[:, s], g, mode="bilinear", padding_mode="zeros", align_corners=True).permute(
            0, 2, 3, 1
        )
    return (pos - grid).permute(0, 3, 1, 2)


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


_GRID_N: dict = {}


def _normalised_grid(h: int, w: int, device, dtype) -> torch.Tensor:
    """``[1, 2, h, w]`` pixel centres in grid_sample units (cached per size, device and dtype)."""
    key = (h, w, str(device), dtype)
    grid_n = _GRID_N.get(key)
    if grid_n is None:
        grid = pixel_grid(h, w, device, dtype)
        grid_n = _normalise_points(grid.permute(1, 2, 0), h, w).permute(2, 0, 1)[None].contiguous()
        _GRID_N[key] = grid_n
    return grid_n


def _fb_criterion(
    f: torch.Tensor, bhat: torch.Tensor, inside: torch.Tensor, mode: str, alpha1: float, alpha2_term: float, dim: int
) -> torch.Tensor:
    """The forward–backward test given the flow ``f`` at a point, the backward flow ``bhat`` read
    at its target and whether the target is ``inside`` (channels along ``dim``):
    ``|f + b̂|² − (α1·(|f|² + |b̂|²) + alpha2_term) <= 0`` (``seed``) or ``|f + b̂|² < …`` (``unflow``)."""
    cycle = ((f + bhat) ** 2).sum(dim)
    eps = alpha1 * ((f**2).sum(dim) + (bhat**2).sum(dim)) + alpha2_term
    return inside & ((cycle - eps <= 0) if mode == "seed" else (cycle < eps))


def _read_other(fields: torch.Tensor, grid: torch.Tensor, swap: bool) -> torch.Tensor:
    """grid_sample of ``fields [M, C, h, w]`` at ``grid [M, ho, wo, 2]``; ``swap``: row i < M/2
    reads field i + M/2 and vice versa (the query halves are exchanged, not the larger fields)."""
    if not swap:
        return F.grid_sample(fields, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    b = fields.shape[0] // 2
    out = F.grid_sample(
        fields, torch.cat([grid[b:], grid[:b]], 0), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return torch.cat([out[b:], out[:b]], 0)


def _fb_grid(
    fwd: torch.Tensor,
    bwd: Optional[torch.Tensor],
    mode: str,
    alpha1: float,
    alpha2: float,
    alpha2_size: Optional[Sequence[int]],
) -> torch.Tensor:
    """:func:`fb_consistency` of ``fwd`` against ``bwd``, or (``bwd=None``) of each half of the
    stack ``fwd`` against the other half."""
    swap = bwd is None
    b, _, h, w = fwd.shape
    if mode == "seed":
        # The seed's arithmetic, step by step: normalised grid + normalised flow, sampled directly.
        div = constant((w - 1, h - 1), fwd.dtype, fwd.device).view(1, 2, 1, 1)
        f_n = (2 * fwd) / div  # = stack([2·u / (w − 1), 2·v / (h − 1)])
        b_n = f_n if swap else (2 * bwd) / div
        t_n = _normalised_grid(h, w, fwd.device, fwd.dtype) + f_n
        inside = (t_n.abs() < 1).all(1)
        bh_n = _read_other(b_n, t_n.permute(0, 2, 3, 1), swap)
        return _fb_criterion(f_n, bh_n, inside, mode, alpha1, alpha2 / math.sqrt(h * h + w * w), dim=1)
    target = pixel_grid(h, w, fwd.device, fwd.dtype).unsqueeze(0) + fwd
    bhat = _read_other(fwd if swap else bwd, _normalise_points(target.permute(0, 2, 3, 1), h, w), swap)
    if alpha2_size is not None:
        hr, wr = alpha2_size
        s2 = (h * h + w * w) / float(hr * hr + wr * wr)
    else:
        s2 = 1.0
    inside = (target[:, 0] >= 0) & (target[:, 0] <= w - 1) & (target[:, 1] >= 0) & (target[:, 1] <= h - 1)
    return _fb_criterion(fwd, bhat, inside, mode, alpha1, alpha2 * s2, dim=1)


def fb_consistency(
    fwd: torch.Tensor,
    bwd: torch.Tensor,
    mode: str = "seed",
    alpha1: float = 0.01,
    alpha2: float = 0.5,
    alpha2_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
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
        bwd: ``[B, 2, H, W]`` flow B → A (pixels). For the mask of ``bwd`` swap the arguments, or
            use :func:`fb_consistency_pair` for both masks in one pass.
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
    return _fb_grid(fwd, bwd.to(fwd.dtype), mode, alpha1, alpha2, alpha2_size)


def fb_consistency_pair(
    flows: torch.Tensor,
    mode: str = "seed",
    alpha1: float = 0.01,
    alpha2: float = 0.5,
    alpha2_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Both masks of ``B`` flow pairs in one pass: ``flows [2B, 2, H, W]`` holds the flows A → B
    then the flows B → A; returns ``[2B, H, W]``, row i being
    ``fb_consistency(flows[i], flows[(i + B) mod 2B])`` (the same booleans, half the calls)."""
    if mode not in ("seed", "unflow"):
        raise ValueError(f"mode should be 'seed' or 'unflow', got {mode!r}")
    _check_flow("flows", flows)
    if flows.shape[0] % 2:
        raise ValueError(f"flows should stack forward then backward flows ([2B, 2, H, W]), got {tuple(flows.shape)}")
    return _fb_grid(_float(flows), None, mode, alpha1, alpha2, alpha2_size)


def fb_consistency_at(
    f: torch.Tensor,
    bhat: torch.Tensor,
    target: torch.Tensor,
    size: Sequence[int],
    mode: str = "seed",
    alpha1: float = 0.01,
    alpha2: float = 0.5,
) -> torch.Tensor:
    """:func:`fb_consistency`'s test at arbitrary points of an ``H × W`` frame, channels last.

    Args:
        f: ``[..., 2]`` flow at the points (pixels), ``target = point + f``.
        bhat: ``[..., 2]`` backward flow read at ``target``.
        size: ``(H, W)``: the seed mode normalises with it and takes its α2 term as
            ``alpha2 / sqrt(H² + W²)``; the UnFlow mode takes ``alpha2`` in px² as is.
    Returns:
        ``[...]`` bool: inside (strictly for ``seed``) and consistent.
    """
    if mode not in ("seed", "unflow"):
        raise ValueError(f"mode should be 'seed' or 'unflow', got {mode!r}")
    H, W = int(size[0]), int(size[1])
    if mode == "seed":
        norm = constant((2.0 / (W - 1), 2.0 / (H - 1)), f.dtype, f.device)
        t_n = target * norm - 1.0
        return _fb_criterion(
            f * norm, bhat * norm, (t_n.abs() < 1).all(-1), mode, alpha1, alpha2 / math.sqrt(H * H + W * W), dim=-1
        )
    inside = (target[..., 0] >= 0) & (target[..., 0] <= W - 1) & (target[..., 1] >= 0) & (target[..., 1] <= H - 1)
    return _fb_criterion(f, bhat, inside, mode, alpha1, alpha2, dim=-1)


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
