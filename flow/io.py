"""Flow file formats: Middlebury ``.flo`` and the seed's per-video ``.pth`` tensors.

Every function here uses the project's flow convention: an array of shape (2, H, W),
float32, channel 0 = x displacement, channel 1 = y displacement, in pixels of the
resolution it is stored at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from plumbing.atomic import atomic_open
from plumbing.errors import UserError

FLO_MAGIC = 202021.25  # "PIEH" as a little-endian float32
PathLike = Union[str, os.PathLike]


def write_flo(path: PathLike, flow: np.ndarray) -> None:
    """Write a (2, H, W) flow as a Middlebury ``.flo`` file (atomically: temp name, then rename)."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must have shape (2, H, W), got {tuple(flow.shape)}")
    _, h, w = flow.shape
    with atomic_open(path, "wb") as f:
        np.array([FLO_MAGIC], "<f4").tofile(f)
        np.array([w, h], "<i4").tofile(f)
        np.ascontiguousarray(flow.transpose(1, 2, 0), dtype="<f4").tofile(f)


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file into a (2, H, W) float32 array."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(12)
            if len(header) < 12:
                raise UserError(f"{path}: truncated .flo header ({len(header)} of 12 bytes)")
            magic = np.frombuffer(header[:4], "<f4")[0]
            if magic != np.float32(FLO_MAGIC):
                raise UserError(f"{path}: not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
            w, h = (int(v) for v in np.frombuffer(header[4:12], "<i4"))
            if w <= 0 or h <= 0 or w * h > 1 << 28:
                raise UserError(f"{path}: implausible .flo size {w}x{h}")
            data = np.frombuffer(f.read(), "<f4")
    except OSError as exc:
        raise UserError(f"{path}: cannot read .flo file ({exc.strerror})") from None
    if data.size != 2 * w * h:
        raise UserError(f"{path}: truncated .flo data ({data.size} of {2 * w * h} values)")
    return data.reshape(h, w, 2).transpose(2, 0, 1).astype(np.float32)


def read_seed_pth(forward_path: PathLike, backward_path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Load one video's flows from the seed's per-video files and return them in time order.

    The seed saved ``forward/<video>.pth`` as ``[N-1, 2, h, w]`` with ``fwd[i] = RAFT(I_i, I_i+1)``
    and ``backward/<video>.pth`` in *reverse* time: ``b[j] = RAFT(I_{N-1-j}, I_{N-2-j})``.
    This returns ``(fwd, bwd)`` with ``bwd[i]`` mapping frame i+1 -> i (the project's order),
    both float32 numpy arrays ``[N-1, 2, h, w]`` in the stored (1/8-resolution) pixel units.
    """
    import torch

    arrays = []
    for p in (forward_path, backward_path):
        try:
            t = torch.load(p, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{p}: flow file not found") from None
        except Exception as exc:  # torch raises several types for damaged files
            raise UserError(f"{p}: cannot load seed flow file ({type(exc).__name__}: {exc})") from None
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise UserError(f"{p}: expected a tensor [N-1, 2, h, w], got {shape}")
        arrays.append(t.float().numpy())
    fwd, bwd_reversed = arrays
    if fwd.shape != bwd_reversed.shape:
        raise UserError(f"{forward_path} and {backward_path}: shapes differ ({fwd.shape} vs {bwd_reversed.shape})")
    return fwd, np.ascontiguousarray(bwd_reversed[::-1])


def write_seed_pth(forward_path: PathLike, backward_path: PathLike, fwd: np.ndarray, bwd: np.ndarray) -> None:
    """Write flows in the seed's layout (backward in reverse time). ``fwd``/``bwd`` are in time order."""
    import torch

    fwd = np.asarray(fwd, np.float32)
    bwd = np.asarray(bwd, np.float32)
    if fwd.shape != bwd.shape or fwd.ndim != 4 or fwd.shape[1] != 2:
        raise ValueError(f"fwd and bwd must both be [N-1, 2, h, w], got {fwd.shape} and {bwd.shape}")
    for p, arr in ((forward_path, fwd), (backward_path, np.ascontiguousarray(bwd[::-1]))):
        with atomic_open(p, "wb") as f:
            torch.save(torch.from_numpy(arr.copy()), f)
