"""Ray casting: the first hit of each pixel's ray against the scene's analytic geometry, culled by screen tiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from synth.camera import Camera
from synth.constants import FAR, NEAR
from synth.scene import Scene

# Hit kinds.
K_SKY, K_GROUND, K_FACADE, K_CYL, K_SPHERE, K_BOX = 0, 1, 2, 3, 4, 5

TILE = 16  # screen tile size (pixels) for culling


def _object_boxes(scene: Scene, cam: Camera, time: float):
    """Screen boxes (u0, u1, v0, v1) of the cylinders, spheres and boxes at ``time``, in that order
    (cached: each frame's camera is used by several casts)."""
    key = (cam.pos.tobytes(), cam.rot.tobytes(), cam.f, cam.width, cam.height, float(time))
    cache = scene.__dict__.setdefault("_box_cache", {})
    if key not in cache:
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[key] = _compute_object_boxes(scene, cam, time)
    return cache[key]


def _pairs(tiles: "Tiles", boxes: np.ndarray, cam: Camera) -> Tuple[np.ndarray, np.ndarray]:
    """(ray indices, object indices) of every ray in the screen tiles under each object's box."""
    on = (
        (boxes[:, 0] <= boxes[:, 1])
        & (boxes[:, 1] >= 0)
        & (boxes[:, 0] <= cam.width)
        & (boxes[:, 3] >= 0)
        & (boxes[:, 2] <= cam.height)
    )
    rays, objs = [], []
    for i in np.nonzero(on)[0]:
        sel = tiles.select(*boxes[i])
        if sel.size:
            rays.append(sel)
            objs.append(np.full(sel.size, i, np.int32))
    if not rays:
        return np.zeros(0, np.intp), np.zeros(0, np.int32)
    return np.concatenate(rays), np.concatenate(objs)


def _compute_object_boxes(scene: Scene, cam: Camera, time: float):
    r = scene.cyl_r
    cyl = _screen_boxes(
        cam,
        np.stack([scene.cyl_x - r, scene.cyl_y - r, np.zeros_like(r)], 1),
        np.stack([scene.cyl_x + r, scene.cyl_y + r, scene.cyl_h], 1),
    )
    rs = scene.sph_r[:, None]
    sph = _screen_boxes(cam, scene.sph_c - rs, scene.sph_c + rs)
    shift = np.zeros_like(scene.box_lo)
    shift[:, 1] = scene.box_vy * time
    box = _screen_boxes(cam, scene.box_lo + shift, scene.box_hi + shift)
    return cyl, sph, box


def object_tiles(scene: Scene, cam: Camera, time: float) -> np.ndarray:
    """bool [rows, cols] of screen tiles touched by any object's screen box."""
    nr, nc = (cam.height + TILE - 1) // TILE, (cam.width + TILE - 1) // TILE
    cover = np.zeros((nr, nc), bool)
    for boxes in _object_boxes(scene, cam, time):
        for u0, u1, v0, v1 in boxes:
            if u0 > u1 or u1 < 0 or u0 > cam.width or v1 < 0 or v0 > cam.height:
                continue
            c0, c1 = max(int(u0 // TILE), 0), min(int(u1 // TILE), nc - 1)
            r0, r1 = max(int(v0 // TILE), 0), min(int(v1 // TILE), nr - 1)
            cover[r0 : r1 + 1, c0 : c1 + 1] = True
    return cover


class Tiles:
    """Rays binned by screen tile, so an object is tested only against rays near its projection."""

    def __init__(self, u: np.ndarray, v: np.ndarray, width: int, height: int, tile: int = TILE):
        self.tile, self.nc, self.nr = tile, (width + tile - 1) // tile, (height + tile - 1) // tile
        cu = np.clip(np.floor(u / tile), 0, self.nc - 1).astype(np.int16)
        cv = np.clip(np.floor(v / tile), 0, self.nr - 1).astype(np.int16)
        key = (cv.astype(np.int32) * self.nc + cu).astype(np.int16 if self.nc * self.nr < 32000 else np.int32)
        self.order = np.argsort(key, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=self.nc * self.nr))])

    def select(self, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        t = self.tile
        c0, c1 = max(int(math.floor(u0 / t)), 0), min(int(math.floor(u1 / t)), self.nc - 1)
        r0, r1 = max(int(math.floor(v0 / t)), 0), min(int(math.floor(v1 / t)), self.nr - 1)
        if c0 > c1 or r0 > r1:
            return self.order[:0]
        if c0 == 0 and c1 == self.nc - 1:
            return self.order[self.starts[r0 * self.nc] : self.starts[(r1 + 1) * self.nc]]
        parts = [
            self.order[self.starts[r * self.nc + c0] : self.starts[r * self.nc + c1 + 1]] for r in range(r0, r1 + 1)
        ]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


_EDGES = np.array([(a, a | bit) for a in range(8) for bit in (1, 2, 4) if not a & bit])  # 12 cube edges


def _screen_boxes(cam: Camera, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Screen bounding boxes [n, 4] (u0, u1, v0, v1) of world AABBs, clipped at the near plane;
    ``u0 > u1`` when a box is entirely behind it."""
    n = len(lo)
    if n == 0:
        return np.zeros((0, 4))
    corners = np.stack([np.where(np.array([i & 1, i & 2, i & 4], bool), hi, lo) for i in range(8)], 1)  # n,8,3
    pc = (corners - cam.pos) @ cam.rot.T
    p0, p1 = pc[:, _EDGES[:, 0]], pc[:, _EDGES[:, 1]]  # n,12,3
    z0, z1 = p0[..., 2:], p1[..., 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        # An endpoint behind the near plane moves along its edge onto the plane.
        q0 = np.where(z0 < NEAR, p0 + (p1 - p0) * np.clip((NEAR - z0) / (z1 - z0), 0.0, 1.0), p0)
        q1 = np.where(z1 < NEAR, p1 + (p0 - p1) * np.clip((NEAR - z1) / (z0 - z1), 0.0, 1.0), p1)
        pts = np.concatenate([q0, q1], 1)  # n,24,3
        keep = pts[..., 2] >= NEAR * 0.999
        u = np.where(keep, cam.cx + cam.f * pts[..., 0] / pts[..., 2], np.nan)
        v = np.where(keep, cam.cy + cam.f * pts[..., 1] / pts[..., 2], np.nan)
    out = np.empty((n, 4))
    any_keep = keep.any(1)
    out[any_keep, 0] = np.nanmin(u[any_keep], 1) - 1
    out[any_keep, 1] = np.nanmax(u[any_keep], 1) + 1
    out[any_keep, 2] = np.nanmin(v[any_keep], 1) - 1
    out[any_keep, 3] = np.nanmax(v[any_keep], 1) + 1
    out[~any_keep] = [1, 0, 1, 0]
    return out


@dataclass
class Hits:
    """First hits of a set of rays: depth ``s`` (inf = sky), ``kind`` (K_*), object ``index``."""

    s: np.ndarray  # float32 [P]
    kind: np.ndarray  # int8 [P]
    index: np.ndarray  # int32 [P]
    d: Tuple[np.ndarray, np.ndarray, np.ndarray]  # ray directions (camera-z = 1)


def cast(
    scene: Scene,
    cam: Camera,
    u: np.ndarray,
    v: np.ndarray,
    time: float,
    tiles: Optional[Tiles] = None,
    limit: Optional[np.ndarray] = None,
) -> Hits:
    """Cast rays through pixel positions (u, v) (flat float32 arrays) of ``cam`` at ``time`` seconds.

    With ``limit`` (depths, float32), only hits closer than ``limit`` are looked for, and the ground
    and façade planes are skipped: every scene point lies in the slab ``|X| <= facade_x, Z >= 0``
    with the camera, so the planes can never come between the camera and a point (occlusion tests).
    """
    dx, dy, dz = cam.rays(u, v)
    n = dx.shape[0]
    cxw, cyw, czw = (float(c) for c in cam.pos)
    s = np.full(n, np.inf, np.float32) if limit is None else limit.astype(np.float32)
    kind = np.zeros(n, np.int8)
    index = np.zeros(n, np.int32)
    if limit is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            # Ground.
            sg = np.where(dz < 0, np.float32(-czw) / dz, np.inf).astype(np.float32)
            ok = sg * np.sqrt(dx * dx + dy * dy + dz * dz) < FAR
            s = np.where(ok, sg, s)
            kind[ok] = K_GROUND
            # Façades.
            for side, sign in ((0, -1.0), (1, 1.0)):
                sf = (np.float32(sign * scene.facade_x - cxw) / dx).astype(np.float32)
                cand = (sf > 0) & (sf < s)
                idx = np.nonzero(cand)[0]
                sfi = sf[idx]
                yy = cyw + sfi * dy[idx]
                zz = czw + sfi * dz[idx]
                seg = np.searchsorted(scene.seg_y[side], yy) - 1
                inside = (seg >= 0) & (seg < len(scene.seg_h[side]))
                segc = np.clip(seg, 0, len(scene.seg_h[side]) - 1)
                hit = inside & (zz >= 0) & (zz <= scene.seg_h[side][segc])
                idx = idx[hit]
                s[idx] = sfi[hit]
                kind[idx] = K_FACADE
                index[idx] = side
    if tiles is None:
        tiles = Tiles(u, v, cam.width, cam.height)
    # Objects: gather (ray, object) pairs through the screen tiles, intersect each kind in one
    # vectorised pass, keep the nearest hit per ray.
    cam_pos = cam.pos
    for k, boxes in zip((K_CYL, K_SPHERE, K_BOX), _object_boxes(scene, cam, time)):
        ray, obj = _pairs(tiles, boxes, cam)
        if ray.size == 0:
            continue
        ddx, ddy, ddz = dx[ray], dy[ray], dz[ray]
        with np.errstate(invalid="ignore", divide="ignore"):
            if k == K_CYL:
                ox = (cam_pos[0] - scene.cyl_x[obj]).astype(np.float32)
                oy = (cam_pos[1] - scene.cyl_y[obj]).astype(np.float32)
                a = ddx * ddx + ddy * ddy
                b = ox * ddx + oy * ddy
                c = ox * ox + oy * oy - (scene.cyl_r[obj] ** 2).astype(np.float32)
                disc = b * b - a * c
                t = (-b - np.sqrt(disc)) / a
                zz = np.float32(cam_pos[2]) + t * ddz
                hit = (disc > 0) & (zz >= 0) & (zz <= scene.cyl_h[obj].astype(np.float32))
            elif k == K_SPHERE:
                o = (cam_pos - scene.sph_c[obj]).astype(np.float32)
                a = ddx * ddx + ddy * ddy + ddz * ddz
                b = o[:, 0] * ddx + o[:, 1] * ddy + o[:, 2] * ddz
                c = (
                    np.einsum("ij,ij->i", cam_pos - scene.sph_c[obj], cam_pos - scene.sph_c[obj])
                    - scene.sph_r[obj] ** 2
                ).astype(np.float32)
                disc = b * b - a * c
                t = (-b - np.sqrt(disc)) / a
                hit = disc > 0
            else:  # axis-aligned boxes moving along Y: slab test
                lo = scene.box_lo[obj] - cam_pos
                hi = scene.box_hi[obj] - cam_pos
                lo[:, 1] += scene.box_vy[obj] * time
                hi[:, 1] += scene.box_vy[obj] * time
                lo, hi = lo.astype(np.float32), hi.astype(np.float32)
                t = np.full(ray.size, -np.inf, np.float32)
                tf = np.full(ray.size, np.inf, np.float32)
                for axis, di in enumerate((ddx, ddy, ddz)):
                    inv = np.float32(1.0) / np.where(di == 0, np.float32(1e-20), di)
                    t1, t2 = lo[:, axis] * inv, hi[:, axis] * inv
                    t = np.maximum(t, np.minimum(t1, t2))
                    tf = np.minimum(tf, np.maximum(t1, t2))
                hit = t <= tf
        hit &= (t > NEAR) & (t < s[ray])
        ray, obj, t = ray[hit], obj[hit], t[hit]
        if ray.size == 0:
            continue
        order = np.lexsort((t, ray))  # by ray, nearest first
        ray, obj, t = ray[order], obj[order], t[order]
        first = np.ones(ray.size, bool)
        first[1:] = ray[1:] != ray[:-1]
        ray, obj, t = ray[first], obj[first], t[first]
        s[ray] = t
        kind[ray] = k
        index[ray] = obj
    if limit is None:
        kind[np.isinf(s)] = K_SKY
    return Hits(s, kind, index, (dx, dy, dz))
