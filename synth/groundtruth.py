"""Exact ground-truth flow and visibility: hit points moved by their object's motion, projected, re-cast."""

from __future__ import annotations

import numpy as np

from synth.camera import Camera
from synth.constants import FAR, NEAR
from synth.raycast import K_BOX, K_GROUND, K_SKY, TILE, Hits, cast, object_tiles
from synth.scene import Scene

VIS_RTOL = 1e-4  # relative depth tolerance of the visibility test


class FrameState:
    """What one frame needs to compute flow to its neighbour: hit points and object motion."""

    def __init__(self, scene: Scene, cam: Camera, hits: Hits, u: np.ndarray, v: np.ndarray, time: float):
        self.cam, self.hits, self.u, self.v, self.time = cam, hits, u, v, time
        dx, dy, dz = hits.d
        s = np.where(hits.kind == K_SKY, np.float32(0), hits.s)
        # Offsets of the hit point from this camera (sky: the direction itself, marked by self.sky).
        self.ox, self.oy, self.oz = s * dx, s * dy, s * dz
        self.sky = hits.kind == K_SKY
        box = hits.kind == K_BOX
        self.vy = np.zeros_like(s)
        self.vy[box] = scene.box_vy[hits.index[box]].astype(np.float32)
        self.dirs = (dx, dy, dz)


def flow_to(scene: Scene, a: FrameState, b: FrameState):
    """Exact flow of every pixel of frame ``a`` into frame ``b`` and its validity."""
    dt = np.float32(b.time - a.time)
    off = (a.cam.pos - b.cam.pos).astype(np.float32)
    ox = a.ox + off[0]
    oy = a.oy + off[1] + a.vy * dt
    oz = a.oz + off[2]
    dx, dy, dz = a.dirs
    ox = np.where(a.sky, dx, ox)
    oy = np.where(a.sky, dy, oy)
    oz = np.where(a.sky, dz, oz)
    u2, v2, z2 = b.cam.project_offsets(ox, oy, oz)
    w, h = b.cam.width, b.cam.height
    flow_u = u2 - a.u
    flow_v = v2 - a.v
    in_front = np.where(a.sky, z2 > 0, z2 > NEAR)
    ok = in_front & (u2 >= 0) & (u2 <= w - 1) & (v2 >= 0) & (v2 <= h - 1)
    # A point that ends up behind camera b has no image position: flow 0, invalid.
    bad = ~in_front | ~np.isfinite(flow_u) | ~np.isfinite(flow_v)
    flow_u[bad] = 0
    flow_v[bad] = 0
    valid = np.zeros(ok.shape, bool)
    # Sky points: visible when the ray from camera b in their direction hits nothing.
    idx = np.nonzero(ok & a.sky)[0]
    if idx.size:
        valid[idx] = cast(scene, b.cam, u2[idx], v2[idx], b.time).kind == K_SKY
    # Surface points: visible when no object lies between camera b and the point (a point on the far
    # side of its own object is hidden by that object's near side). Ground points must also stay
    # nearer than FAR, where the renderer stops drawing the ground.
    ok_surf = ok & ~a.sky
    ground = a.hits.kind == K_GROUND
    ok_surf &= ~ground | (ox * ox + oy * oy + oz * oz < np.float32(FAR * FAR))
    idx = np.nonzero(ok_surf)[0]
    # Only rays inside some object's screen box can be blocked; the rest are visible.
    cover = object_tiles(scene, b.cam, b.time)
    valid[idx] = True
    # (u2, v2 >= 0 here, so truncation is floor.)
    tile = (v2[idx].astype(np.int32) // TILE) * cover.shape[1] + u2[idx].astype(np.int32) // TILE
    idx = idx[cover.ravel()[tile]]
    if idx.size:
        zi = z2[idx]
        limit = zi * np.float32(1 - VIS_RTOL) - np.float32(1e-4)
        valid[idx] = cast(scene, b.cam, u2[idx], v2[idx], b.time, limit=limit).kind == K_SKY
    return np.stack([flow_u, flow_v]), valid


class Viewpoint:
    """The camera and time of a frame: all that :func:`flow_to` reads of its target state."""

    def __init__(self, cam: Camera, time: float):
        self.cam, self.time = cam, time
