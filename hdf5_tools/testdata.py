"""Small generated inputs for tests and benchmarks: BDD-style frame folders and seed flow files.

- :func:`write_frame_folder` writes ``root/images/<split>/<video>/00001.jpg ...`` from frames
  rendered by the synthetic world (or given), and returns the JPEG bytes written.
- :func:`write_seed_flows` writes the seed's per-video ``.pth`` pair (forward, and backward in
  reverse time) at 1/8 resolution; :func:`write_flo_flows` writes full-resolution ``.flo`` files.
- :func:`render_frames` renders a video with the synthetic world: rgb uint8 [T, H, W, 3] and the
  exact full-resolution flows fwd/bwd float32 [T-1, 2, H, W].
"""
from __future__ import annotations

import os
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


def write_frame_folder(root, split: str, video: str, rgb: Optional[np.ndarray] = None,
                       jpegs: Optional[List[bytes]] = None, quality: int = 90) -> List[bytes]:
    """Write one video's frames as ``root/images/<split>/<video>/%05d.jpg`` (from 1); returns the bytes."""
    if jpegs is None:
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


def write_flo_flows(flow_root, split: str, video: str, fwd: np.ndarray, bwd: np.ndarray) -> None:
    """Full-resolution ``flow_root/<split>/<video>/{forward,backward}/%05d.flo`` (pair 1 = frames 1, 2)."""
    from flow.io import write_flo

    for direction, arr in (("forward", fwd), ("backward", bwd)):
        d = Path(flow_root) / split / video / direction
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(arr):
            write_flo(d / f"{i + 1:05d}.flo", f)


def random_flows(rng: np.random.Generator, pairs: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Smooth-ish random 1/8-resolution flows [pairs, 2, h8, w8] (values within +-20), for fixtures."""
    h8, w8 = schema.flow_size(height, width)
    base = rng.normal(0, 5, (pairs, 2, 1, 1)).astype(np.float32)
    fwd = base + rng.normal(0, 1, (pairs, 2, h8, w8)).astype(np.float32)
    bwd = -base + rng.normal(0, 1, (pairs, 2, h8, w8)).astype(np.float32)
    return np.clip(fwd, -20, 20), np.clip(bwd, -20, 20)


def file_offset(h5_path, video: str, dataset: str, index: Optional[int] = None) -> int:
    """Byte offset in the file of a video's contiguous dataset (or of chunk ``index`` of a chunked one).

    Used by tests that inject corruption.
    """
    import h5py

    with h5py.File(os.fspath(h5_path), "r") as h5:
        ds = h5[schema.VIDEOS][video][dataset]
        if index is None:
            return int(ds.id.get_offset())
        return int(ds.id.get_chunk_info_by_coord((int(index), 0, 0, 0)).byte_offset)


def make_bdd_like(root, videos: int = 2, frames: int = 400, size: Tuple[int, int] = (1280, 720),
                  distinct: int = 4, flows: bool = True, quality: int = 95, seed: int = 0) -> dict:
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
