"""The synthetic world's renderer (``Renderer``, ``render_video``) and the conventions all its parts keep."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from plumbing.errors import UserError
from synth.camera import Camera, CameraPath
from synth.constants import SKY_DEPTH
from synth.groundtruth import FrameState, Viewpoint, flow_to
from synth.raycast import K_SKY, Tiles, cast
from synth.scene import make_scene
from synth.shading import shade

MAX_SIZE = (1920, 1080)  # largest frame size, pixels


@dataclass
class Video:
    """A rendered video with exact ground truth (see the module docstring for the conventions).

    rgb uint8 [T, H, W, 3]; depth float32 [T, H, W] metres (sky: SKY_DEPTH); labels uint8 [T, H, W]
    Cityscapes ids; fwd/bwd float32 [T-1, 2, H, W] pixels (fwd[t]: t -> t+1, bwd[t]: t+1 -> t);
    valid_fwd/valid_bwd bool [T-1, H, W] (True = visible in the other frame and inside it).
    """

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    fwd: np.ndarray
    bwd: np.ndarray
    valid_fwd: np.ndarray
    valid_bwd: np.ndarray
    fps: float
    seed: int


@dataclass
class Frame:
    """One rendered frame; for t >= 1 also the flows of the pair (t-1, t)."""

    t: int
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W]
    labels: np.ndarray  # uint8 [H, W]
    fwd: Optional[np.ndarray] = None  # float32 [2, H, W], frame t-1 -> t
    bwd: Optional[np.ndarray] = None  # float32 [2, H, W], frame t -> t-1
    valid_fwd: Optional[np.ndarray] = None  # bool [H, W]
    valid_bwd: Optional[np.ndarray] = None  # bool [H, W]


def check_size(size) -> Tuple[int, int]:
    try:
        w, h = (int(x) for x in size)
    except (TypeError, ValueError):
        raise UserError(f"size must be (width, height), got {size!r}") from None
    if w < 8 or h < 8 or w > MAX_SIZE[0] or h > MAX_SIZE[1]:
        raise UserError(f"size {w}x{h} out of range (8x8 to {MAX_SIZE[0]}x{MAX_SIZE[1]})")
    return w, h


class Renderer:
    """Renders one video frame by frame (constant memory); ``frames()`` yields :class:`Frame`.

    ``flow=False`` skips the ground-truth flow (the frames' ``fwd``/``bwd``/``valid_*`` stay None);
    images, depth and labels are identical either way.
    """

    def __init__(self, seed: int, frames: int, size=(640, 360), fps: float = 10.0, flow: bool = True):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {seed!r}")
        if int(frames) < 1:
            raise UserError(f"frames must be >= 1, got {frames}")
        if not (fps > 0 and math.isfinite(fps)):
            raise UserError(f"fps must be positive, got {fps}")
        self.seed, self.n, self.fps, self.flow = int(seed), int(frames), float(fps), bool(flow)
        self.width, self.height = check_size(size)
        rng = np.random.default_rng(np.random.SeedSequence([0x5F17, self.seed]))
        self.duration = (self.n - 1) / self.fps
        self.path = CameraPath.sample(rng, self.duration)
        self.scene = make_scene(rng, self.path, self.duration)
        vv, uu = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        self.u, self.v = uu.ravel(), vv.ravel()
        self.tiles = Tiles(self.u, self.v, self.width, self.height)

    def camera(self, t: int) -> Camera:
        return self.path.camera(t / self.fps, self.width, self.height)

    def track(self, t0: int, t1: int, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Exact correspondences: where the surface points seen through sub-pixel ``points [N, 2]``
        (x, y) of frame ``t0`` are in frame ``t1``, and whether they are visible there.

        Rays are cast through the exact points (no pixel grid, no interpolation) and the hit points
        are moved and projected as the ground-truth flow is (:func:`synth.groundtruth.flow_to`, any frame distance).
        Returns ``(positions [N, 2] float64, visible [N] bool)``; visible = inside frame ``t1`` and
        not occluded there (the module docstring's validity).
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        for name, t in (("t0", t0), ("t1", t1)):
            if not 0 <= int(t) < self.n:
                raise ValueError(f"{name}={t} out of range [0, {self.n})")
        if pts.shape[0] == 0:
            return pts.copy(), np.zeros(0, bool)
        u = pts[:, 0].astype(np.float32)
        v = pts[:, 1].astype(np.float32)
        cam = self.camera(int(t0))
        time = int(t0) / self.fps
        state = FrameState(self.scene, cam, cast(self.scene, cam, u, v, time), u, v, time)
        flow, valid = flow_to(self.scene, state, Viewpoint(self.camera(int(t1)), int(t1) / self.fps))
        return pts + flow.T.astype(np.float64), valid

    def frames(self) -> Iterator[Frame]:
        h, w = self.height, self.width
        prev: Optional[FrameState] = None
        for t in range(self.n):
            time = t / self.fps
            cam = self.camera(t)
            hits = cast(self.scene, cam, self.u, self.v, time, self.tiles)
            rgb, lab = shade(self.scene, cam, hits, time)
            depth = np.where(hits.kind == K_SKY, np.float32(SKY_DEPTH), hits.s).astype(np.float32)
            frame = Frame(
                t, (rgb * 255 + 0.5).astype(np.uint8).reshape(h, w, 3), depth.reshape(h, w), lab.reshape(h, w)
            )
            state = FrameState(self.scene, cam, hits, self.u, self.v, time) if self.flow else None
            if prev is not None:
                fwd, vf = flow_to(self.scene, prev, state)
                bwd, vb = flow_to(self.scene, state, prev)
                frame.fwd, frame.valid_fwd = fwd.reshape(2, h, w), vf.reshape(h, w)
                frame.bwd, frame.valid_bwd = bwd.reshape(2, h, w), vb.reshape(h, w)
            prev = state
            yield frame


def render_video(seed: int, frames: int, size=(640, 360), fps: float = 10.0) -> Video:
    """Render a whole video with ground truth in memory (deterministic by ``seed``); see :class:`Video`."""
    r = Renderer(seed, frames, size, fps)
    t, (w, h) = r.n, (r.width, r.height)
    out = Video(
        np.empty((t, h, w, 3), np.uint8),
        np.empty((t, h, w), np.float32),
        np.empty((t, h, w), np.uint8),
        np.empty((t - 1, 2, h, w), np.float32),
        np.empty((t - 1, 2, h, w), np.float32),
        np.empty((t - 1, h, w), bool),
        np.empty((t - 1, h, w), bool),
        r.fps,
        r.seed,
    )
    for fr in r.frames():
        out.rgb[fr.t], out.depth[fr.t], out.labels[fr.t] = fr.rgb, fr.depth, fr.labels
        if fr.t:
            out.fwd[fr.t - 1], out.bwd[fr.t - 1] = fr.fwd, fr.bwd
            out.valid_fwd[fr.t - 1], out.valid_bwd[fr.t - 1] = fr.valid_fwd, fr.valid_bwd
    return out
