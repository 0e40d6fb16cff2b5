"""Fake BDD100K-style source trees for the benchmarks (``make_bdd_like``) and the tests: frame folders and
the seed's ``.pth`` flow files, written from the synthetic world in the layout ``hdf5_tools pack`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from hdf5_tools import schema


def render_frames(seed: int, frames: int, size: Tuple[int, int]):
    """(rgb [T, H, W, 3] uint8, fwd [T-1, 2, H, W], bwd [T-1, 2, H, W]) from the synthetic world."""
    from synth import render_video

    v = render_video(seed, frames, size=size)
    return np.asarray(v.rgb), np.asarray(v.fwd, np.float32), np.asarray(v.bwd, np.float32)


def encode(rgb: np.ndarray, quality: int = 90) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB")


def write_frame_folder(
    root,
    split: str,
    video: str,
    rgb: Optional[np.ndarray] = None,
    jpegs: Optional[List[bytes]] = None,
    quality: int = 90,
) -> List[bytes]:
    """Write one video's frames as ``root/images/<split>/<video>/%05d.jpg`` (from 1); returns the bytes."""
    if jpegs is None:
        if rgb is None:
            raise ValueError("write_frame_folder: give rgb frames or their jpegs")
        jpegs = [encode(f, quality) for f in rgb]
    d = Path(root) / "images" / split / video
    d.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(jpegs):
        (d / f"{i + 1:05d}.jpg").write_bytes(b)
    return jpegs


def write_seed_flows(flow_root, split: str, video: str, fwd8: np.ndarray, bwd8: np.ndarray) -> Tuple[Path, Path]:
    """Seed layout ``flow_root/<split>/forward/<video>.pth`` and ``backward/<video>.pth`` (1/8 res, time
    order in, backward written in reverse time as the seed did)."""
    from flow.io import write_seed_pth

    fp = Path(flow_root) / split / "forward" / f"{video}.pth"
    bp = Path(flow_root) / split / "backward" / f"{video}.pth"
    write_seed_pth(fp, bp, fwd8, bwd8)
    return fp, bp


def random_flows(rng: np.random.Generator, pairs: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Smooth-ish random 1/8-resolution flows [pairs, 2, h8, w8] (values within +-20), for fixtures."""
    h8, w8 = schema.flow_size(height, width)
    base = rng.normal(0, 5, (pairs, 2, 1, 1)).astype(np.float32)
    fwd = base + rng.normal(0, 1, (pairs, 2, h8, w8)).astype(np.float32)
    bwd = -base + rng.normal(0, 1, (pairs, 2, h8, w8)).astype(np.float32)
    return np.clip(fwd, -20, 20), np.clip(bwd, -20, 20)


def make_bdd_like(
    root,
    videos: int = 2,
    frames: int = 400,
    size: Tuple[int, int] = (1280, 720),
    distinct: int = 4,
    flows: bool = True,
    quality: int = 95,
    seed: int = 0,
) -> dict:
    """A BDD100K-like tree in the seed's layout for benchmarks.

    ``root/images/train/<video>/%05d.jpg`` (``distinct`` rendered frames per video, cycled: decode
    cost is realistic, rendering 400 frames is not needed) and, with ``flows``, the seed's
    ``root/flow/train/{forward,backward}/<video>.pth`` float32 [frames-1, 2, H/8, W/8] files.
    Returns {"videos": [...], "jpeg_bytes": n, "flow_bytes": n}. Existing complete trees are reused.
    """
    root = Path(root)
    marker = root / f".complete-{videos}-{frames}-{size[0]}x{size[1]}-{distinct}-{int(flows)}-{quality}-{seed}"
    names = [f"bench{seed:02d}-{i:04d}" for i in range(videos)]
    if not marker.exists():
        rng = np.random.default_rng(seed)
        w, h = size
        for i, name in enumerate(names):
            rgb, _, _ = render_frames(seed * 1000 + i, distinct, size)
            pool = [encode(f, quality) for f in rgb]
            write_frame_folder(root, "train", name, jpegs=[pool[j % distinct] for j in range(frames)])
            if flows:
                fwd, bwd = random_flows(rng, frames - 1, h, w)
                write_seed_flows(root / "flow", "train", name, fwd, bwd)
        marker.write_text("ok\n")
    jpeg_bytes = sum(f.stat().st_size for f in (root / "images").rglob("*.jpg"))
    flow_bytes = sum(f.stat().st_size for f in (root / "flow").rglob("*.pth")) if flows else 0
    return {"videos": names, "jpeg_bytes": jpeg_bytes, "flow_bytes": flow_bytes}
