"""Both views of a batch built on the training device from JPEG bytes (``data.decode_on=device``)."""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from flow.ops import constant
from pixpro_of.data.augment import IMAGENET_MEAN, IMAGENET_STD, ViewParams
from plumbing.errors import UserError

# Columns of a packed view-parameter row (float64: every draw is an exact double or a small int).
PARAM_COLUMNS = (
    "left",
    "top",
    "width",
    "height",
    "flip",
    "jitter",
    "order0",
    "order1",
    "order2",
    "order3",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale",
    "blur",
    "sigma",
    "solarize",
)
NUM_PARAMS = len(PARAM_COLUMNS)
_C = {name: i for i, name in enumerate(PARAM_COLUMNS)}


def pack_view_params(p: ViewParams) -> torch.Tensor:
    """One view's draws as a float64 ``[NUM_PARAMS]`` row (:data:`PARAM_COLUMNS`)."""
    order, b, c, s, h = p.jitter if p.jitter is not None else ((0, 1, 2, 3), 1.0, 1.0, 1.0, 0.0)
    row = [
        *p.box,
        float(p.flip),
        float(p.jitter is not None),
        *order,
        b,
        c,
        s,
        h,
        float(p.grayscale),
        float(p.blur_sigma is not None),
        p.blur_sigma if p.blur_sigma is not None else 0.0,
        float(p.solarize),
    ]
    return torch.tensor(row, dtype=torch.float64)


def unpack_view_params(row: Sequence[float]) -> ViewParams:
    """The inverse of :func:`pack_view_params` (a row as a list or tensor)."""
    r = [float(v) for v in row]
    jitter = None
    if r[_C["jitter"]]:
        jitter = (
            tuple(int(r[_C[f"order{i}"]]) for i in range(4)),
            r[_C["brightness"]],
            r[_C["contrast"]],
            r[_C["saturation"]],
            r[_C["hue"]],
        )
    return ViewParams(
        box=tuple(int(r[_C[k]]) for k in ("left", "top", "width", "height")),
        flip=bool(r[_C["flip"]]),
        jitter=jitter,
        grayscale=bool(r[_C["grayscale"]]),
        blur_sigma=r[_C["sigma"]] if r[_C["blur"]] else None,
        solarize=bool(r[_C["solarize"]]),
    )


def decode_jpegs(data: List[torch.Tensor], device: torch.device) -> List[torch.Tensor]:
    """JPEG bytes (1-D uint8 CPU tensors) → uint8 ``[3, H, W]`` RGB on ``device``, one batched call."""
    import torchvision.io

    return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=device)


def decode_host(data: torch.Tensor) -> torch.Tensor:
    """One frame's JPEG bytes → uint8 ``[3, H, W]`` RGB in host memory (libjpeg): the fallback for
    a frame the device decoder refuses."""
    import torchvision.io

    return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _decode_chunk(
    data: List[torch.Tensor],
    device: torch.device,
    name: Callable[[int], str],
    bad: Optional[List[Tuple[int, str]]] = None,
) -> List[Optional[torch.Tensor]]:
    """:func:`decode_jpegs` of a chunk. When the batched call fails, each frame is decoded alone;
    a frame the device refuses is decoded on the host (:func:`decode_host`) and copied to
    ``device``; a frame neither decodes is named in one line (``name(j)``, called only then):
    a UserError, or with ``bad`` given, ``(j, message)`` appended there and None in its place."""
    try:
        return list(decode_jpegs(data, device))
    except RuntimeError:
        pass  # a frame of the chunk is bad: decode them one by one below to find it
    out: List[Optional[torch.Tensor]] = []
    for j, d in enumerate(data):
        try:
            out.append(decode_jpegs([d], device)[0])
            continue
        except RuntimeError as exc:
            on_device = _first_line(exc)
        try:
            out.append(decode_host(d).to(device))
            continue
        except RuntimeError as exc:
            on_host = _first_line(exc)
        msg = f"{name(j)}: cannot decode JPEG on {device} ({on_device}); the host decoder fails too ({on_host})"
        if bad is None:
            raise UserError(msg)
        bad.append((j, msg))
        out.append(None)
    return out


def _record_event(device: torch.device):
    """An event recorded on ``device``'s current stream (CUDA), else None."""
    if device.type != "cuda":
        return None
    ev = torch.cuda.Event()
    ev.record(torch.cuda.current_stream(device))
    return ev


def _grey(x: torch.Tensor) -> torch.Tensor:
    """torchvision's luma of integer-valued float ``[N, 3, S, S]``, rounded down as its uint8 ops store it."""
    r, g, b = x.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).floor_().unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x·f + other·(1 − f)`` clamped and rounded down (torchvision's uint8 blend); f = 1 gives x."""
    f = factor.view(-1, 1, 1, 1)
    return (x * f + other * (1.0 - f)).clamp_(0.0, 255.0).floor_()


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of integer-valued float RGB ``[N, 3, S, S]`` by ``turns`` ``[N]`` (HSV, hue in
    sixths of a turn), rounded to the nearest grey level as the worker path's OpenCV rotation."""
    rgb = x / 255.0
    r, g, b = rgb.unbind(1)
    v = rgb.amax(1)
    d = v - rgb.amin(1)
    span = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(
        v == r, torch.remainder((g - b) / span, 6.0), torch.where(v == g, (b - r) / span + 2.0, (r - g) / span + 4.0)
    )
    h = torch.where(d > 0, h, torch.zeros_like(h))
    h = torch.remainder(h + 6.0 * turns.view(-1, 1, 1).to(h.dtype), 6.0)
    s = torch.where(v > 0, d / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    out = []
    for n in (5.0, 3.0, 1.0):  # R, G, B: v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + h) mod 6
        k = torch.remainder(h + n, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1).mul_(255.0).round_().clamp_(0.0, 255.0)


def _blur(x: torch.Tensor, sigmas: List[Optional[float]]) -> torch.Tensor:
    """Per-view Gaussian blur (``None``: none), the kernel of ``augment.gaussian_blur`` (radius
    ceil(3σ) clamped to the image, reflect borders), two 1-D passes, rounded once."""
    n, _, hh, ww = x.shape
    radii = [max(1, min(int(math.ceil(3.0 * s)), ww - 1, hh - 1)) for s in sigmas if s is not None]
    if not radii:
        return x
    R = max(radii)
    taps = torch.arange(-R, R + 1, dtype=torch.float64)
    kernels = torch.zeros(n, 2 * R + 1, dtype=torch.float64)
    for i, s in enumerate(sigmas):
        if s is None:
            kernels[i, R] = 1.0
            continue
        r = max(1, min(int(math.ceil(3.0 * s)), ww - 1, hh - 1))
        k = torch.exp(-0.5 * (taps[R - r : R + r + 1] / s) ** 2)
        kernels[i, R - r : R + r + 1] = k / k.sum()
    w = kernels.to(torch.float32).repeat_interleave(3, 0).to(x.device)
    y = F.pad(x.reshape(1, n * 3, hh, ww), (R, R, R, R), mode="reflect")
    y = F.conv2d(y, w.view(n * 3, 1, 1, -1), groups=n * 3)
    y = F.conv2d(y, w.view(n * 3, 1, -1, 1), groups=n * 3)
    return y.view(n, 3, hh, ww).round_().clamp_(0.0, 255.0)


def colour_views(x: torch.Tensor, params: torch.Tensor, rows: List[List[float]]) -> torch.Tensor:
    """Flip, jitter, grayscale, blur, solarize of integer-valued float ``[N, 3, S, S]`` views with
    their packed ``params`` ``[N, NUM_PARAMS]`` (host or ``x``'s device; ``rows`` the same as lists,
    for the data-dependent choices made on the host: which ops run at all, which views take
    them, blur kernel sizes). The params and the index lists go to the device in one copy each."""
    p = params.to(x.device, torch.float32, non_blocking=True)
    flip = p[:, _C["flip"]] > 0
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    plan, flat = [], []  # each view's jitter ops in its own order: at each position, op by op
    for pos in range(4):
        for op in (0, 1, 2, 3):
            take = [i for i, r in enumerate(rows) if r[_C["jitter"]] and int(r[_C[f"order{pos}"]]) == op]
            if take:
                plan.append((op, len(flat), len(take)))
                flat.extend(take)
    index = torch.tensor(flat, dtype=torch.long).to(x.device, non_blocking=True) if flat else None
    for op, start, n in plan:
        idx = index[start : start + n]
        sub, q = x.index_select(0, idx), p.index_select(0, idx)
        if op == 0:
            sub = (sub * q[:, _C["brightness"]].view(-1, 1, 1, 1)).clamp_(0.0, 255.0).floor_()
        elif op == 1:
            sub = _blend(sub, _grey(sub).mean(dim=(1, 2, 3), keepdim=True), q[:, _C["contrast"]])
        elif op == 2:
            sub = _blend(sub, _grey(sub), q[:, _C["saturation"]])
        else:
            sub = _rotate_hue(sub, q[:, _C["hue"]])
        x = x.index_copy(0, idx, sub)
    if any(r[_C["grayscale"]] for r in rows):
        x = torch.where((p[:, _C["grayscale"]] > 0).view(-1, 1, 1, 1), _grey(x).expand_as(x), x)
    x = _blur(x, [r[_C["sigma"]] if r[_C["blur"]] else None for r in rows])
    sol = (p[:, _C["solarize"]] > 0).view(-1, 1, 1, 1)
    return torch.where(sol & (x >= 128.0), 255.0 - x, x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``augment.to_normalized_float``'s formula on integer-valued float views."""
    mean = constant(IMAGENET_MEAN, x.dtype, x.device).view(1, 3, 1, 1)  # cached per device
    std = constant(IMAGENET_STD, x.dtype, x.device).view(1, 3, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)


def crop_resize(frame: torch.Tensor, box: Tuple[int, int, int, int], size: int) -> torch.Tensor:
    """A uint8 ``[3, H, W]`` frame's crop ``box`` (left, top, w, h) → float ``[3, S, S]`` with integer
    values: bilinear, antialiased, on float32, rounded."""
    left, top, w, h = box
    crop = frame[:, top : top + h, left : left + w].unsqueeze(0).to(torch.float32)
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].round_().clamp_(0.0, 255.0)


def build_views(
    jpeg_bytes: torch.Tensor,
    spans: torch.Tensor,
    params1: torch.Tensor,
    params2: torch.Tensor,
    size: int,
    device,
    chunk: int = 64,
    names: Optional[Callable[[int, int], str]] = None,
    bad: Optional[List[Tuple[int, int, str]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(view1, view2)`` float32 ``[B, 3, S, S]`` ImageNet-normalised, on ``device``.

    ``jpeg_bytes``: uint8 host tensor with every JPEG of the batch; ``spans`` int64 ``[B, 2, 2]``:
    (start, length) of sample b's frame for view 1 / view 2; ``params1``/``params2``
    ``[B, NUM_PARAMS]`` packed draws (best kept in host memory: they are read there, and copied to
    the device once). ``chunk``: frames decoded per call. ``names(b, view)`` names a frame in a
    decode error. A frame that neither the device nor the host decodes raises a one-line
    UserError, or, with ``bad`` given, is appended to it as ``(b, view, message)`` and its view
    left at zero (the caller drops the sample).

    Stream safety on CUDA: torchvision allocates each chunk's frames on the current stream and
    nvJPEG writes them from its own stream, which the current stream is then made to wait for;
    the crops read them on the current stream. Freed frames could be handed to the *next*
    chunk's decode, whose writes are not ordered after these crops; so a chunk's frames are kept
    until an event recorded after its crops has completed, one chunk later (the decode of chunk
    i + 1 overlaps the crops of chunk i: at most 2·``chunk`` decoded frames exist at once), and
    the last chunk's event is waited for before returning.
    """
    device = torch.device(device)
    if chunk < 1:
        raise ValueError(f"chunk should be >= 1 frames, got {chunk}")
    B = int(params1.shape[0])
    params = torch.cat([params1.to("cpu", torch.float64), params2.to("cpu", torch.float64)])  # row i: view 1 of
    rows = params.tolist()  # sample i, B + i: view 2; a no-op copy for host params, as the trainer keeps them
    sp = spans.to("cpu").tolist()
    data = jpeg_bytes.to("cpu")
    frames = [data[s : s + n] for v in (0, 1) for (s, n) in (sp[b][v] for b in range(B))]
    label = names or (lambda b, v: f"sample {b} view {v + 1}")
    out = torch.zeros(2 * B, 3, size, size, dtype=torch.float32, device=device)
    alive: "deque" = deque()  # (decoded frames, event after their crops): at most two chunks
    for i in range(0, 2 * B, chunk):
        while len(alive) >= 2:
            _, ev = alive.popleft()
            if ev is not None:
                ev.synchronize()
        part = frames[i : i + chunk]
        failed: Optional[List[Tuple[int, str]]] = [] if bad is not None else None
        decoded = _decode_chunk(part, device, lambda j, i=i: label((i + j) % B, (i + j) // B), failed)
        for j, msg in failed or ():
            bad.append(((i + j) % B, (i + j) // B, msg))
        for j, img in enumerate(decoded):
            if img is None:
                continue
            r = rows[i + j]
            out[i + j] = crop_resize(img, (int(r[0]), int(r[1]), int(r[2]), int(r[3])), size)
        alive.append((decoded, _record_event(device)))
        del decoded
    for _, ev in alive:
        if ev is not None:
            ev.synchronize()
    alive.clear()
    views = normalize(colour_views(out, params, rows))
    return views[:B], views[B:]
