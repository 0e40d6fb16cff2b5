"""The synthetic driving world: scene, moving camera, ray-cast rendering with exact ground truth.

Coordinates
-----------
World: metres, ``X`` to the right of the road, ``Y`` along the road (the direction of travel),
``Z`` up; the ground is the plane ``Z = 0``. The road occupies ``|X| < ROAD_HALF`` (two lanes per
direction, right-hand traffic: the ego car drives at ``X > 0``), sidewalks run from the road edge
to the façades at ``|X| = facade_x``.

Camera: pinhole, ``x`` right, ``y`` down, ``z`` forward; pixel centres at integer coordinates
(0 … W−1, 0 … H−1), principal point at the image centre. A pixel (u, v) is the ray
``C + s · d(u, v)`` with ``d`` scaled so that its camera-z component is 1: the ray parameter ``s`` at
the first hit *is* the depth (z-depth, metres) stored in ``depth``.

The scene: a straight four-lane street (lane markings, kerbs, paved sidewalks), façades of
buildings of random heights with window grids (and some hedges), poles and trees along the
sidewalks, a sky with clouds, and cars and vans as textured boxes: parked along both kerbs,
oncoming, and travelling with the ego car (overtaking it or being overtaken). The ego camera
drives forward at 7–13 m/s with slow speed changes, weaves in its lane, makes occasional lane
changes (turns of up to ~10° yaw) and has small pitch/yaw/height jitter. Objects far ahead grow
from a few pixels to a large part of the frame as the camera approaches.

Rendering casts one ray per pixel against analytic geometry (ground plane, two façade planes cut
into building/hedge segments, vertical cylinders for poles and tree trunks, spheres for crowns,
axis-aligned boxes for cars) and colours the hit with a procedural texture of the *surface
coordinates*, prefiltered to the pixel footprint (box-filtered stripes, Gaussian-attenuated
sinusoids), so a surface point keeps its colour from frame to frame and nothing aliases. Shading
depends on the surface normal only (a fixed sun), never on the viewpoint.

Ground truth
------------
Forward flow of frame t: the hit point of every pixel is moved by its object's motion over one
frame (cars move along ``Y``; everything else is static; sky points are directions at infinity)
and projected with the camera of frame t+1. A pixel is *valid* (not occluded, inside the frame)
when its projection lies in ``[0, W-1] x [0, H-1]`` and the ray cast from camera t+1 through that
exact sub-pixel position meets nothing before the point (depth tolerance: relative 1e-4 + 0.1 mm;
a point on the far side of its own object is hidden by the near side); for the sky, when that ray
hits nothing at all. Backward flow is the same computation from frame t+1 to t.
Flow is given for every pixel, also where invalid (points leaving the frame keep their exact
displacement); only a point that passes behind the other camera gets flow 0.

Determinism: a video is a function of (seed, frames, fps) — the trajectory and scene are sampled
for the video's duration, so fewer frames give a different video, not a prefix. ``size`` only
changes the resolution: the same seed renders the same scene and camera path at any size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

from plumbing.errors import UserError

# Cityscapes label ids (cityscapesScripts labels.py).
LABEL_UNLABELED = 0
LABEL_ROAD = 7
LABEL_SIDEWALK = 8
LABEL_BUILDING = 11
LABEL_POLE = 17
LABEL_VEGETATION = 21
LABEL_SKY = 23
LABEL_CAR = 26
LABEL_IDS = (LABEL_ROAD, LABEL_SIDEWALK, LABEL_BUILDING, LABEL_POLE, LABEL_VEGETATION, LABEL_SKY, LABEL_CAR)
LABEL_NAMES = {7: "road", 8: "sidewalk", 11: "building", 17: "pole", 21: "vegetation", 23: "sky", 26: "car"}

SKY_DEPTH = 1.0e4  # metres stored in ``depth`` for sky pixels (the sky itself is at infinity)
FAR = 3000.0  # ground hits beyond this distance (a fraction of a pixel under the horizon) count as sky
NEAR = 0.05  # metres; nothing is hit closer than this
ROAD_HALF = 7.0  # half-width of the road (2 lanes of 3.5 m per direction)
LANE_W = 3.5
HFOV_DEG = 70.0  # horizontal field of view
MAX_SIZE = (1920, 1080)
AA = 1.5  # texture prefilter width, in pixel footprints
VIS_RTOL = 1e-4  # relative depth tolerance of the visibility test

# Hit kinds.
K_SKY, K_GROUND, K_FACADE, K_CYL, K_SPHERE, K_BOX = 0, 1, 2, 3, 4, 5

_SUN = np.array([0.45, -0.35, 0.82])
_SUN = _SUN / np.linalg.norm(_SUN)


def _shade(nx, ny, nz):
    """Lambert + ambient brightness (float32) for unit normals (arrays or floats)."""
    sun = _SUN.astype(np.float32)
    return np.float32(0.62) + np.float32(0.45) * np.maximum(nx * sun[0] + ny * sun[1] + nz * sun[2], np.float32(0))


# --------------------------------------------------------------------------- camera


@dataclass(frozen=True)
class Camera:
    """One frame's pinhole camera. ``rot`` maps world vectors to camera (rows: right, down, forward)."""

    pos: np.ndarray  # (3,) float64, world metres
    rot: np.ndarray  # (3, 3) float64
    f: float  # focal length, pixels
    width: int
    height: int

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0

    def rays(self, u: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World ray directions (dx, dy, dz), float32, for pixel coordinates u, v (camera-z component 1)."""
        a = (np.asarray(u, np.float32) - np.float32(self.cx)) / np.float32(self.f)
        b = (np.asarray(v, np.float32) - np.float32(self.cy)) / np.float32(self.f)
        r = self.rot.astype(np.float32)  # world = rot.T @ cam
        return (r[0, 0] * a + r[1, 0] * b + r[2, 0],
                r[0, 1] * a + r[1, 1] * b + r[2, 1],
                r[0, 2] * a + r[1, 2] * b + r[2, 2])

    def project_offsets(self, ox, oy, oz):
        """Project world offsets from the camera centre. Returns (u, v, z) float32 arrays."""
        r = self.rot.astype(np.float32)
        xc = r[0, 0] * ox + r[0, 1] * oy + r[0, 2] * oz
        yc = r[1, 0] * ox + r[1, 1] * oy + r[1, 2] * oz
        zc = r[2, 0] * ox + r[2, 1] * oy + r[2, 2] * oz
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.float32(self.f) / zc
            return np.float32(self.cx) + xc * inv, np.float32(self.cy) + yc * inv, zc


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """World->camera rotation for a heading ``yaw`` (radians, positive = towards +X) and ``pitch`` (up)."""
    fwd = np.array([math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch)])
    right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])


@dataclass
class CameraPath:
    """The ego camera's smooth trajectory: speed changes, lane changes (turns), pitch/height jitter."""

    v0: float
    v_amp: float
    v_period: float
    v_phase: float
    lane_x: float
    changes: List[Tuple[float, float, float]]  # (start time s, duration s, lateral shift m)
    weave: Tuple[float, float, float]  # amplitude m, period s, phase
    yaw_jit: List[Tuple[float, float, float]]  # (amplitude rad, period s, phase)
    pitch0: float
    pitch_jit: List[Tuple[float, float, float]]
    height0: float
    bob: Tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator, duration: float) -> "CameraPath":
        changes = []
        x = LANE_W / 2
        t = float(rng.uniform(0.3, 3.0))
        while t < duration:  # each step advances at least 2 s
            if rng.random() < 0.6:
                dur = float(rng.uniform(2.0, 3.5))
                shift = LANE_W if x < LANE_W else -LANE_W
                changes.append((t, dur, shift))
                x += shift
                t += dur
            t += float(rng.uniform(2.0, 6.0))
        return cls(
            v0=float(rng.uniform(7.0, 13.0)), v_amp=float(rng.uniform(0.0, 1.5)),
            v_period=float(rng.uniform(6.0, 15.0)), v_phase=float(rng.uniform(0, 2 * math.pi)),
            lane_x=LANE_W / 2, changes=changes,
            weave=(float(rng.uniform(0.05, 0.25)), float(rng.uniform(4.0, 9.0)), float(rng.uniform(0, 2 * math.pi))),
            yaw_jit=[(float(rng.uniform(0.002, 0.006)), float(rng.uniform(0.7, 3.0)), float(rng.uniform(0, 2 * math.pi)))
                     for _ in range(2)],
            pitch0=float(rng.uniform(-0.05, -0.02)),
            pitch_jit=[(float(rng.uniform(0.001, 0.004)), float(rng.uniform(0.4, 2.0)), float(rng.uniform(0, 2 * math.pi)))
                       for _ in range(2)],
            height0=float(rng.uniform(1.3, 1.55)),
            bob=(float(rng.uniform(0.003, 0.012)), float(rng.uniform(0.3, 0.9)), float(rng.uniform(0, 2 * math.pi))),
        )

    def y(self, t):
        w = 2 * math.pi / self.v_period
        return self.v0 * t - self.v_amp / w * (np.cos(w * t + self.v_phase) - math.cos(self.v_phase))

    def vy(self, t):
        return self.v0 + self.v_amp * np.sin(2 * math.pi / self.v_period * t + self.v_phase)

    def x(self, t):
        t = np.asarray(t, np.float64)
        a, p, ph = self.weave
        x = self.lane_x + a * np.sin(2 * math.pi / p * t + ph)
        for t0, dur, shift in self.changes:
            tau = np.clip((t - t0) / dur, 0.0, 1.0)
            x = x + shift * (1 - np.cos(math.pi * tau)) / 2
        return x

    def vx(self, t):
        t = np.asarray(t, np.float64)
        a, p, ph = self.weave
        vx = a * 2 * math.pi / p * np.cos(2 * math.pi / p * t + ph)
        for t0, dur, shift in self.changes:
            tau = (t - t0) / dur
            inside = (tau > 0) & (tau < 1)
            vx = vx + np.where(inside, shift * math.pi / (2 * dur) * np.sin(math.pi * np.clip(tau, 0, 1)), 0.0)
        return vx

    def camera(self, t: float, width: int, height: int) -> Camera:
        yaw = math.atan2(float(self.vx(t)), float(self.vy(t)))
        yaw += sum(a * math.sin(2 * math.pi / p * t + ph) for a, p, ph in self.yaw_jit)
        pitch = self.pitch0 + sum(a * math.sin(2 * math.pi / p * t + ph) for a, p, ph in self.pitch_jit)
        a, p, ph = self.bob
        z = self.height0 + a * math.sin(2 * math.pi / p * t + ph)
        f = (width / 2.0) / math.tan(math.radians(HFOV_DEG) / 2)
        return Camera(np.array([float(self.x(t)), float(self.y(t)), z]), _rotation(yaw, pitch), f, width, height)


# --------------------------------------------------------------------------- scene


@dataclass
class Scene:
    """All geometry of one video, generated from its seed. Arrays are float64 unless noted."""

    facade_x: float  # façades at X = ±facade_x
    # façade segments per side (0 = left, X<0; 1 = right): boundaries [n+1], per segment params
    seg_y: List[np.ndarray]
    seg_h: List[np.ndarray]  # height, m
    seg_kind: List[np.ndarray]  # 0 building, 1 hedge
    seg_color: List[np.ndarray]  # [n, 3] base colour 0..1
    seg_win: List[np.ndarray]  # [n, 4]: window period along Y, floor height, window duty along Y, along Z
    # vertical cylinders (poles, trunks): [n] each
    cyl_x: np.ndarray
    cyl_y: np.ndarray
    cyl_r: np.ndarray
    cyl_h: np.ndarray
    cyl_label: np.ndarray  # uint8
    # spheres (tree crowns)
    sph_c: np.ndarray  # [n, 3]
    sph_r: np.ndarray
    sph_tone: np.ndarray  # [n] colour variation
    # boxes (car bodies, cabins), at time 0, moving along Y with box_vy m/s
    box_lo: np.ndarray  # [n, 3]
    box_hi: np.ndarray  # [n, 3]
    box_vy: np.ndarray  # [n]
    box_color: np.ndarray  # [n, 3]
    box_part: np.ndarray  # [n] int: 0 body, 1 cabin, 2 van
    box_dir: np.ndarray  # [n] +1 if the car faces +Y, -1 if it faces -Y
    sky_top: np.ndarray  # (3,)
    sky_horizon: np.ndarray  # (3,)
    tex_seed: int


_BUILDING_COLORS = np.array([
    [0.62, 0.36, 0.28], [0.78, 0.72, 0.60], [0.60, 0.60, 0.62], [0.85, 0.82, 0.76],
    [0.55, 0.45, 0.38], [0.70, 0.56, 0.42], [0.45, 0.50, 0.55], [0.80, 0.66, 0.52]])
_CAR_COLORS = np.array([
    [0.80, 0.80, 0.82], [0.12, 0.12, 0.14], [0.60, 0.08, 0.08], [0.15, 0.22, 0.50], [0.45, 0.47, 0.50],
    [0.85, 0.85, 0.80], [0.20, 0.35, 0.25], [0.70, 0.55, 0.15], [0.30, 0.30, 0.33]])


def _segments(rng, y0, y1, facade_x):
    ys, hs, kinds, cols, wins = [y0], [], [], [], []
    y = y0
    while y < y1:
        hedge = rng.random() < 0.18
        length = float(rng.uniform(8.0, 30.0)) if hedge else float(rng.uniform(10.0, 40.0))
        y += length
        ys.append(y)
        kinds.append(1 if hedge else 0)
        hs.append(float(rng.uniform(2.2, 3.2)) if hedge else float(rng.uniform(6.0, 28.0)))
        col = _BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS))] * rng.uniform(0.85, 1.1)
        if hedge:
            col = np.array([0.20, 0.42, 0.16]) * rng.uniform(0.8, 1.15)
        cols.append(np.clip(col, 0, 1))
        wins.append([rng.uniform(2.2, 4.0), rng.uniform(2.9, 3.6), rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6)])
    return np.array(ys), np.array(hs), np.array(kinds), np.array(cols), np.array(wins)


def _cars(rng, path: CameraPath, duration: float, y_lo: float, y_hi: float):
    """Sample parked, same-direction and oncoming cars that never touch the ego car or each other."""
    # The ego check samples the (non-linear) ego path at 20 Hz; car pairs move linearly relative to
    # each other, so their closest approach over [0, duration] is computed exactly.
    times = np.linspace(0.0, duration, int(min(max(2, duration * 20 + 1), 40001)))
    ego_x, ego_y = path.x(times), path.y(times)
    cars = []  # (x, y0 centre, vy, length, width, kind, dir)

    def closest(dy0, dv):
        """min over t in [0, duration] of |dy0 + dv t|."""
        if dv != 0 and 0 <= -dy0 / dv <= duration:
            return 0.0
        return min(abs(dy0), abs(dy0 + dv * duration))

    def clear(x, y0, vy, length, width):
        cy = y0 + vy * times
        if np.any((np.abs(cy - ego_y) < length / 2 + 6.0) & (np.abs(x - ego_x) < width / 2 + 1.4)):
            return False
        for (x2, y2, v2, l2, w2, _, _) in cars:
            if abs(x - x2) < (width + w2) / 2 + 0.3 and closest(y0 - y2, vy - v2) < (length + l2) / 2 + 1.5:
                return False
        return True

    span = y_hi - y_lo
    n_parked = int(span / 9)
    n_moving = int(span / 14)
    for _ in range(n_parked):
        side = 1 if rng.random() < 0.5 else -1
        x = side * (ROAD_HALF - 1.15 + rng.uniform(-0.1, 0.1))
        van = rng.random() < 0.15
        length = float(rng.uniform(5.0, 6.2) if van else rng.uniform(3.9, 4.8))
        width = float(rng.uniform(1.9, 2.1) if van else rng.uniform(1.7, 1.9))
        y0 = float(rng.uniform(y_lo, y_hi))
        if rng.random() < 0.35 or not clear(x, y0, 0.0, length, width):
            continue
        cars.append((x, y0, 0.0, length, width, 2 if van else 0, 1 if rng.random() < 0.5 else -1))
    for _ in range(n_moving):
        oncoming = rng.random() < 0.55
        lane = rng.integers(2)
        x = (-1 if oncoming else 1) * (LANE_W / 2 + lane * LANE_W) + rng.uniform(-0.25, 0.25)
        vy = -float(rng.uniform(8.0, 15.0)) if oncoming else float(path.v0 + rng.uniform(-5.0, 5.0))
        van = rng.random() < 0.12
        length = float(rng.uniform(5.0, 6.5) if van else rng.uniform(3.9, 4.8))
        width = float(rng.uniform(1.9, 2.2) if van else rng.uniform(1.7, 1.9))
        if oncoming:
            y0 = float(rng.uniform(y_lo + 40, y_hi + 200))
        else:
            y0 = float(rng.uniform(y_lo - 30, y_hi))
        if not clear(x, y0, vy, length, width):
            continue
        cars.append((x, y0, vy, length, width, 2 if van else 0, -1 if oncoming else 1))
    return cars


def make_scene(rng: np.random.Generator, path: CameraPath, duration: float) -> Scene:
    y_start, y_end = float(path.y(0.0)), float(path.y(duration))
    facade_x = ROAD_HALF + float(rng.uniform(3.0, 5.0))
    seg = [_segments(rng, y_start - 150.0, y_end + FAR + 50.0, facade_x) for _ in range(2)]

    # Poles along both kerbs, trees on the sidewalks.
    cx, cy, cr, ch, cl = [], [], [], [], []
    sc, sr, st = [], [], []
    y_obj_hi = y_end + 300.0
    for side in (-1, 1):
        y = y_start - 30.0 + rng.uniform(0, 10)
        spacing = rng.uniform(18.0, 32.0)
        pole_y = []
        while y < y_obj_hi:
            pole_y.append(y)
            cx.append(side * (ROAD_HALF + 0.5))
            cy.append(y)
            cr.append(rng.uniform(0.08, 0.14))
            ch.append(rng.uniform(5.0, 8.0))
            cl.append(LABEL_POLE)
            y += spacing * rng.uniform(0.8, 1.2)
        y = y_start - 30.0 + rng.uniform(0, 15)
        while y < y_obj_hi:
            y += rng.uniform(8.0, 30.0)
            if rng.random() < 0.3:
                continue
            r = rng.uniform(1.3, 2.2)
            x = side * (facade_x - r - rng.uniform(0.2, 0.5))  # crowns stay in front of the façades
            if np.min(np.abs(np.array(pole_y) - y)) < r + 0.4:  # no pole through a crown
                continue
            trunk_h = rng.uniform(2.0, 3.0)
            cx.append(x)
            cy.append(y)
            cr.append(rng.uniform(0.12, 0.22))
            ch.append(trunk_h + r * 0.6)
            cl.append(LABEL_VEGETATION)
            sc.append([x, y, trunk_h + r * 0.9])
            sr.append(r)
            st.append(rng.uniform(-1, 1))
    # Trunks end inside their crowns, so their top caps are never seen.

    cars = _cars(rng, path, duration, y_start - 20.0, y_end + 180.0)
    lo, hi, vys, colors, parts, dirs = [], [], [], [], [], []
    for (x, y0, vy, length, width, kind, d) in cars:
        col = _CAR_COLORS[rng.integers(len(_CAR_COLORS))]
        if kind == 2:  # van: one tall box
            lo.append([x - width / 2, y0 - length / 2, 0.3])
            hi.append([x + width / 2, y0 + length / 2, rng.uniform(2.1, 2.6)])
            vys.append(vy), colors.append(col), parts.append(2), dirs.append(d)
            continue
        body_top = rng.uniform(0.95, 1.1)
        lo.append([x - width / 2, y0 - length / 2, 0.25])
        hi.append([x + width / 2, y0 + length / 2, body_top])
        vys.append(vy), colors.append(col), parts.append(0), dirs.append(d)
        cab_len = length * rng.uniform(0.5, 0.6)
        cab_c = y0 - d * length * 0.08
        lo.append([x - width / 2 + 0.08, cab_c - cab_len / 2, body_top])
        hi.append([x + width / 2 - 0.08, cab_c + cab_len / 2, body_top + rng.uniform(0.42, 0.55)])
        vys.append(vy), colors.append(col), parts.append(1), dirs.append(d)

    sky_top = np.array([0.30, 0.50, 0.85]) * rng.uniform(0.85, 1.1)
    sky_h = np.array([0.80, 0.86, 0.92]) * rng.uniform(0.9, 1.05)
    return Scene(
        facade_x=facade_x,
        seg_y=[s[0] for s in seg], seg_h=[s[1] for s in seg], seg_kind=[s[2] for s in seg],
        seg_color=[s[3] for s in seg], seg_win=[s[4] for s in seg],
        cyl_x=np.array(cx, float), cyl_y=np.array(cy, float), cyl_r=np.array(cr, float),
        cyl_h=np.array(ch, float), cyl_label=np.array(cl, np.uint8),
        sph_c=np.array(sc, float).reshape(-1, 3), sph_r=np.array(sr, float), sph_tone=np.array(st, float),
        box_lo=np.array(lo, float).reshape(-1, 3), box_hi=np.array(hi, float).reshape(-1, 3),
        box_vy=np.array(vys, float), box_color=np.array(colors, float).reshape(-1, 3),
        box_part=np.array(parts, int), box_dir=np.array(dirs, int),
        sky_top=np.clip(sky_top, 0, 1), sky_horizon=np.clip(sky_h, 0, 1),
        tex_seed=int(rng.integers(1 << 30)),
    )


# --------------------------------------------------------------------------- ray casting


_TILE = 16  # screen tile size (pixels) for culling


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


def _pairs(tiles: "_Tiles", boxes: np.ndarray, cam: Camera) -> Tuple[np.ndarray, np.ndarray]:
    """(ray indices, object indices) of every ray in the screen tiles under each object's box."""
    on = (boxes[:, 0] <= boxes[:, 1]) & (boxes[:, 1] >= 0) & (boxes[:, 0] <= cam.width) \
        & (boxes[:, 3] >= 0) & (boxes[:, 2] <= cam.height)
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
    cyl = _screen_boxes(cam, np.stack([scene.cyl_x - r, scene.cyl_y - r, np.zeros_like(r)], 1),
                        np.stack([scene.cyl_x + r, scene.cyl_y + r, scene.cyl_h], 1))
    rs = scene.sph_r[:, None]
    sph = _screen_boxes(cam, scene.sph_c - rs, scene.sph_c + rs)
    shift = np.zeros_like(scene.box_lo)
    shift[:, 1] = scene.box_vy * time
    box = _screen_boxes(cam, scene.box_lo + shift, scene.box_hi + shift)
    return cyl, sph, box


def _object_tiles(scene: Scene, cam: Camera, time: float) -> np.ndarray:
    """bool [rows, cols] of screen tiles touched by any object's screen box."""
    nr, nc = (cam.height + _TILE - 1) // _TILE, (cam.width + _TILE - 1) // _TILE
    cover = np.zeros((nr, nc), bool)
    for boxes in _object_boxes(scene, cam, time):
        for u0, u1, v0, v1 in boxes:
            if u0 > u1 or u1 < 0 or u0 > cam.width or v1 < 0 or v0 > cam.height:
                continue
            c0, c1 = max(int(u0 // _TILE), 0), min(int(u1 // _TILE), nc - 1)
            r0, r1 = max(int(v0 // _TILE), 0), min(int(v1 // _TILE), nr - 1)
            cover[r0:r1 + 1, c0:c1 + 1] = True
    return cover


class _Tiles:
    """Rays binned by screen tile, so an object is tested only against rays near its projection."""

    def __init__(self, u: np.ndarray, v: np.ndarray, width: int, height: int, tile: int = _TILE):
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
            return self.order[self.starts[r0 * self.nc]:self.starts[(r1 + 1) * self.nc]]
        parts = [self.order[self.starts[r * self.nc + c0]:self.starts[r * self.nc + c1 + 1]] for r in range(r0, r1 + 1)]
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


def cast(scene: Scene, cam: Camera, u: np.ndarray, v: np.ndarray, time: float,
         tiles: Optional[_Tiles] = None, limit: Optional[np.ndarray] = None) -> Hits:
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
        tiles = _Tiles(u, v, cam.width, cam.height)
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
                c = (np.einsum("ij,ij->i", cam_pos - scene.sph_c[obj], cam_pos - scene.sph_c[obj])
                     - scene.sph_r[obj] ** 2).astype(np.float32)
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


# --------------------------------------------------------------------------- textures


def _box1(x, a, b, w):
    """Box-filtered indicator of the interval [a, b] at x, filter width w (arrays)."""
    w = np.maximum(w, np.float32(1e-6))
    return (np.clip(x + w / 2, a, b) - np.clip(x - w / 2, a, b)) / w


def _pulses(x, period, duty, w, offset=0.0):
    """Box-filtered periodic pulse train: 1 on [offset + k·period, offset + k·period + duty·period)."""
    w = np.maximum(w, np.float32(1e-6))
    x = x - offset
    base = np.floor(x / period) * period
    xl = x - base  # in [0, period)
    on = duty * period

    def prim(y):  # integral of the pulse train from 0 to y (y may leave [0, period))
        k = np.floor(y / period)
        return k * on + np.clip(y - k * period, 0, on)

    return (prim(xl + w / 2) - prim(xl - w / 2)) / w


def _noise(coords, sigmas, rng_seed: int, n: int, k_min: float, k_max: float):
    """Sum of ``n`` random sinusoids of the given surface coordinates (metres; spatial frequencies
    log-uniform in [k_min, k_max] cycles/m, amplitude ~1/sqrt(k)), each prefiltered by a Gaussian of
    per-coordinate std ``sigmas`` (its exact effect on a sinusoid: an attenuation factor).
    Returns float32 values in about [-1, 1]."""
    rng = np.random.default_rng(rng_seed)
    dim = len(coords)
    out = np.zeros(np.shape(coords[0]), np.float32)
    neg_half_s2 = [np.float32(-0.5) * np.asarray(sg, np.float32) ** 2 for sg in sigmas]
    arg = np.empty_like(out)
    att = np.empty_like(out)
    total = 0.0
    for _ in range(n):
        k = math.exp(rng.uniform(math.log(k_min), math.log(k_max)))
        dirn = rng.normal(size=dim)
        dirn = dirn / np.linalg.norm(dirn) * k * 2 * math.pi
        amp = 1.0 / math.sqrt(k)
        phase = rng.uniform(0, 2 * math.pi)
        np.multiply(coords[0], np.float32(dirn[0]), out=arg)
        att[...] = neg_half_s2[0] * np.float32(dirn[0] ** 2)
        for c, s2, kc in zip(coords[1:], neg_half_s2[1:], dirn[1:]):
            arg += np.float32(kc) * c
            att += s2 * np.float32(kc * kc)
        arg += np.float32(phase)
        np.sin(arg, out=arg)
        np.exp(att, out=att)
        arg *= att
        arg *= np.float32(amp)
        out += arg
        total += amp
    out *= np.float32(2.0 / total)
    return out


def _footprints(r, du, dv, dn):
    """Footprint std along in-plane unit axes (a, b) with ray components du=a·d̂, dv=b·d̂, dn=n·d̂."""
    inv = 1.0 / np.maximum(np.abs(dn), np.float32(1e-3))
    return r * np.sqrt(np.maximum(1 - dv * dv, 0)) * inv, r * np.sqrt(np.maximum(1 - du * du, 0)) * inv


def _road_color(x, y, sx, sy, seed):
    """Asphalt with lane markings: white edge lines, dashed white lane dividers, a double yellow centre line."""
    ax = np.abs(x)
    g = 0.36 + 0.035 * _noise((x, y), (sx, sy), seed + 2, 6, 0.15, 3.0) \
        + 0.03 * _noise((x, y), (sx, sy), seed + 3, 2, 0.02, 0.12)
    white = (_box1(ax, ROAD_HALF - 0.4, ROAD_HALF - 0.25, sx)
             + _box1(ax, LANE_W - 0.07, LANE_W + 0.07, sx) * _pulses(y, 9.0, 0.35, sy))
    yellow = _box1(ax, 0.08, 0.2, sx)  # the markings never overlap, so their weights just add
    g *= 1 - white - yellow
    white *= np.float32(0.86)
    return np.stack([g + white + np.float32(0.85) * yellow, g + white + np.float32(0.68) * yellow,
                     g * np.float32(1.04) + white + np.float32(0.18) * yellow], 1)


def _sidewalk_color(x, y, sx, sy, seed):
    """Paving slabs (0.75 m) with dark joints and a light kerb stripe along the road edge."""
    ax = np.abs(x)
    pav = 0.56 + 0.03 * _noise((x, y), (sx, sy), seed + 4, 4, 0.3, 2.0)
    pav *= 1 - 0.25 * (1 - _pulses(ax - ROAD_HALF, 0.75, 0.9, sx) * _pulses(y, 0.75, 0.9, sy))
    kerb = _box1(ax, ROAD_HALF, ROAD_HALF + 0.3, sx)
    pav *= 1 - kerb
    kerb *= np.float32(0.72)
    return np.stack([pav + kerb, pav * np.float32(0.98) + kerb, pav * np.float32(0.94) + kerb], 1)


def _building_color(scene, side, seg, y, z, sy, sz, seed):
    """Façade wall with a window grid from the first floor up and a darker shop band below 3 m."""
    base = scene.seg_color[side][seg].astype(np.float32)
    win = scene.seg_win[side][seg].astype(np.float32)
    wall = 1 + 0.06 * _noise((y, z), (sy, sz), seed + 5 + side, 5, 0.3, 4.0)
    wy = _pulses(y, win[:, 0], win[:, 2], sy, offset=scene.seg_y[side][seg].astype(np.float32) + 0.5)
    wz = _pulses(z, win[:, 1], win[:, 3], sz, offset=np.float32(0.9)) * (z > 3.2)
    windows = (wy * wz)[:, None]
    glass = np.float32(0.18) + 0.05 * _noise((y, z), (sy, sz), seed + 7, 2, 0.05, 0.2)[:, None]
    col = base * wall[:, None] * (1 - windows) + glass * np.array([0.9, 1.0, 1.15], np.float32) * windows
    shop = _box1(z, 0.0, 3.0, sz)[:, None] * np.float32(0.35)
    return col * (1 - shop) + shop * np.float32(0.25) * base


def shade(scene: Scene, cam: Camera, hits: Hits, time: float) -> Tuple[np.ndarray, np.ndarray]:
    """Colour (float32 [P, 3], 0..1) and Cityscapes label (uint8 [P]) of every hit."""
    dx, dy, dz = hits.d
    n = dx.shape[0]
    rgb = np.zeros((n, 3), np.float32)
    lab = np.zeros(n, np.uint8)
    norm = np.sqrt(dx * dx + dy * dy + dz * dz)
    seed = scene.tex_seed
    cxw, cyw, czw = (float(c) for c in cam.pos)
    f = np.float32(cam.f)

    def gather(k):
        idx = np.nonzero(hits.kind == k)[0]
        s = hits.s[idx]
        nn = norm[idx]
        ux, uy, uz = dx[idx] / nn, dy[idx] / nn, dz[idx] / nn
        r = np.float32(AA) * s * nn / f
        return idx, s, (ux, uy, uz), r

    # Sky: gradient + clouds, functions of the direction only.
    idx, _, (ux, uy, uz), _ = gather(K_SKY)
    if idx.size:
        e = np.clip(uz * 3.0, 0, 1)[:, None]
        col = scene.sky_horizon * (1 - e) + scene.sky_top * e
        sig = np.float32(AA) / f
        cl = _noise((ux, uy, uz), (sig, sig, sig), seed + 1, 6, 0.6, 4.0)
        cloud = np.clip(cl * 0.9 + 0.1, 0, 1) * np.clip(uz * 8.0, 0, 1)
        rgb[idx] = (col * (1 - 0.7 * cloud[:, None]) + 0.95 * 0.7 * cloud[:, None]).astype(np.float32)
        lab[idx] = LABEL_SKY

    # Ground: road with markings, sidewalks with paving.
    idx, s, (ux, uy, uz), r = gather(K_GROUND)
    if idx.size:
        x = np.float32(cxw) + s * dx[idx]
        y = np.float32(cyw) + s * dy[idx]
        sx, sy = _footprints(r, ux, uy, uz)
        road = np.abs(x) < ROAD_HALF
        col = np.empty((idx.size, 3), np.float32)
        sub = np.nonzero(road)[0]
        if sub.size:
            col[sub] = _road_color(x[sub], y[sub], sx[sub], sy[sub], seed)
        sub = np.nonzero(~road)[0]
        if sub.size:
            col[sub] = _sidewalk_color(x[sub], y[sub], sx[sub], sy[sub], seed)
        rgb[idx] = col * _shade(0, 0, 1)
        lab[idx] = np.where(road, LABEL_ROAD, LABEL_SIDEWALK)

    # Façades: buildings with windows and a ground-floor band, or hedges.
    for side in (0, 1):
        sel = np.nonzero((hits.kind == K_FACADE) & (hits.index == side))[0]
        if not sel.size:
            continue
        s = hits.s[sel]
        nn = norm[sel]
        ux, uy, uz = dx[sel] / nn, dy[sel] / nn, dz[sel] / nn
        r = np.float32(AA) * s * nn / f
        y = np.float32(cyw) + s * dy[sel]
        z = np.float32(czw) + s * dz[sel]
        sy, sz = _footprints(r, uy, uz, ux)
        seg = np.clip(np.searchsorted(scene.seg_y[side], y) - 1, 0, len(scene.seg_h[side]) - 1)
        hedge = scene.seg_kind[side][seg] == 1
        col = np.empty((sel.size, 3), np.float32)
        sub = np.nonzero(~hedge)[0]
        if sub.size:
            col[sub] = _building_color(scene, side, seg[sub], y[sub], z[sub], sy[sub], sz[sub], seed)
        sub = np.nonzero(hedge)[0]
        if sub.size:
            leaf = 1 + 0.25 * _noise((y[sub], z[sub]), (sy[sub], sz[sub]), seed + 9, 8, 0.8, 6.0)
            col[sub] = scene.seg_color[side][seg[sub]].astype(np.float32) * leaf[:, None]
        rgb[sel] = col * _shade(1.0 if side == 0 else -1.0, 0, 0)
        lab[sel] = np.where(hedge, LABEL_VEGETATION, LABEL_BUILDING)

    # Cylinders: metal poles with bands, bark trunks.
    idx, s, (ux, uy, uz), r = gather(K_CYL)
    if idx.size:
        i = hits.index[idx]
        px = np.float32(cxw) + s * dx[idx] - scene.cyl_x[i].astype(np.float32)
        py = np.float32(cyw) + s * dy[idx] - scene.cyl_y[i].astype(np.float32)
        z = np.float32(czw) + s * dz[idx]
        rad = scene.cyl_r[i].astype(np.float32)
        nx, ny = px / rad, py / rad
        arc = np.arctan2(ny, nx) * rad
        dn = np.abs(nx * ux + ny * uy)
        sz = r
        sa = r / np.maximum(dn, np.float32(0.05))
        pole = scene.cyl_label[i] == LABEL_POLE
        metal = 0.5 + 0.08 * _pulses(z, 1.3, 0.5, sz)
        pcol = np.stack([metal, metal, metal * 1.05], 1)
        bark = 0.8 + 0.2 * _noise((arc, z), (sa, sz), seed + 11, 4, 1.0, 6.0)
        tcol = bark[:, None] * np.array([0.36, 0.27, 0.18], np.float32)
        rgb[idx] = np.where(pole[:, None], pcol, tcol) * _shade(nx, ny, 0)[:, None]
        lab[idx] = scene.cyl_label[i]

    # Spheres: tree crowns.
    idx, s, (ux, uy, uz), r = gather(K_SPHERE)
    if idx.size:
        i = hits.index[idx]
        c = scene.sph_c[i].astype(np.float32)
        px = np.float32(cxw) + s * dx[idx] - c[:, 0]
        py = np.float32(cyw) + s * dy[idx] - c[:, 1]
        pz = np.float32(czw) + s * dz[idx] - c[:, 2]
        rad = scene.sph_r[i].astype(np.float32)
        nx, ny, nz = px / rad, py / rad, pz / rad
        dn = np.abs(nx * ux + ny * uy + nz * uz)
        sg = r / np.maximum(dn, np.float32(0.1))
        leaf = 1 + 0.35 * _noise((px, py, pz), (sg, sg, sg), seed + 13, 9, 0.7, 5.0)
        tone = scene.sph_tone[i].astype(np.float32)
        base = np.stack([0.20 + 0.04 * tone, 0.40 + 0.06 * tone, 0.13 + 0.02 * tone], 1)
        rgb[idx] = base * leaf[:, None] * _shade(nx, ny, nz)[:, None]
        lab[idx] = LABEL_VEGETATION

    # Boxes: cars (body with wheels and lights, cabin with windows) and vans.
    idx, s, (ux, uy, uz), r = gather(K_BOX)
    if idx.size:
        i = hits.index[idx]
        lo = scene.box_lo[i].astype(np.float32)
        hi = scene.box_hi[i].astype(np.float32)
        lo[:, 1] += (scene.box_vy[i] * time).astype(np.float32)
        hi[:, 1] += (scene.box_vy[i] * time).astype(np.float32)
        p = [np.float32(cxw) + s * dx[idx], np.float32(cyw) + s * dy[idx], np.float32(czw) + s * dz[idx]]
        # Which face: the coordinate closest to a box boundary (relative to the box size).
        dist = np.stack([np.minimum(np.abs(p[a] - lo[:, a]), np.abs(p[a] - hi[:, a])) / (hi[:, a] - lo[:, a])
                         for a in range(3)], 1)
        face = np.argmin(dist, 1)
        ly = p[1] - lo[:, 1]
        lz = p[2] - lo[:, 2]
        lx = p[0] - lo[:, 0]
        length = hi[:, 1] - lo[:, 1]
        width = hi[:, 0] - lo[:, 0]
        height = hi[:, 2] - lo[:, 2]
        d = scene.box_dir[i]
        fwd_y = np.where(d > 0, ly, length - ly)  # distance from the car's rear along its heading
        base = scene.box_color[i].astype(np.float32)
        part = scene.box_part[i]
        col = base * (1 + 0.03 * _noise((lx, ly, lz), (r, r, r), seed + 15, 3, 0.5, 3.0))[:, None]
        # Footprints per face: along Y/Z on side faces, X/Z on front/back, X/Y on top.
        s_side_y, s_side_z = _footprints(r, uy, uz, ux)
        s_fb_x, s_fb_z = _footprints(r, ux, uz, uy)
        side = face == 0
        fb = face == 1
        top = face == 2
        # Side faces: wheels (dark discs) and a dark sill on bodies/vans; windows on cabins/vans.
        wheel = np.zeros_like(lx)
        for wheel_y in (np.float32(0.75), length - np.float32(0.75)):  # axle positions from the box end
            rr = np.sqrt((ly - wheel_y) ** 2 + (lz + np.float32(0.05)) ** 2)
            wheel = np.maximum(wheel, _box1(rr, -1.0, 0.38, np.maximum(s_side_y, s_side_z)))
        sill = _box1(lz, -1.0, 0.12, s_side_z)
        dark = np.maximum(wheel * (part != 1), sill * (part != 1) * 0.6)
        cab_win = (_box1(lz, 0.08, height - 0.08, s_side_z) * _box1(ly, 0.25, length - 0.25, s_side_y)
                   * (1 - _box1(ly, length / 2 - 0.06, length / 2 + 0.06, s_side_y)))
        van_win = _box1(lz, 1.0, height - 0.35, s_side_z) * _box1(fwd_y, length - 1.6, length - 0.3, s_side_y)
        glass = np.where(part == 1, cab_win, np.where(part == 2, van_win, 0.0))
        sidecol = col * (1 - dark[:, None]) + np.float32(0.06) * dark[:, None]
        sidecol = sidecol * (1 - glass[:, None]) + np.float32(0.12) * glass[:, None]
        # Front/back: lights near the outer corners of bodies/vans, windows on cabins/vans.
        front = np.where(d > 0, ly > length / 2, ly < length / 2)
        lamp = (_box1(lx, 0.12, 0.45, s_fb_x) + _box1(lx, width - 0.45, width - 0.12, s_fb_x)) \
            * _box1(lz, height - 0.35, height - 0.12, s_fb_z)
        lamp = np.where(part == 1, 0.0, np.clip(lamp, 0, 1))
        lamp_col = np.where(front[:, None], np.array([0.95, 0.93, 0.8], np.float32), np.array([0.75, 0.08, 0.06], np.float32))
        fb_glass = np.where(part == 1, _box1(lz, 0.06, height - 0.06, s_fb_z) * _box1(lx, 0.1, width - 0.1, s_fb_x),
                            np.where(part == 2, _box1(lz, height - 0.95, height - 0.3, s_fb_z)
                                     * _box1(lx, 0.12, width - 0.12, s_fb_x) * front, 0.0))
        fbcol = col * (1 - lamp[:, None]) + lamp_col * lamp[:, None]
        fbcol = fbcol * (1 - fb_glass[:, None]) + np.float32(0.12) * fb_glass[:, None]
        # Top: plain body colour (cabin roof, bonnet, boot).
        col = np.where(side[:, None], sidecol, np.where(fb[:, None], fbcol, col))
        nx = np.where(side, np.where(np.abs(lx) < np.abs(lx - width), -1.0, 1.0), 0.0)
        ny = np.where(fb, np.where(np.abs(ly) < np.abs(ly - length), -1.0, 1.0), 0.0)
        nz = np.where(top, 1.0, 0.0)
        rgb[idx] = col * _shade(nx, ny, nz)[:, None].astype(np.float32)
        lab[idx] = LABEL_CAR
    return np.clip(rgb, 0, 1), lab


# --------------------------------------------------------------------------- video


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


class _State:
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


def _flow_to(scene: Scene, a: _State, b: _State):
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
    cover = _object_tiles(scene, b.cam, b.time)
    valid[idx] = True
    # (u2, v2 >= 0 here, so truncation is floor.)
    tile = (v2[idx].astype(np.int32) // _TILE) * cover.shape[1] + u2[idx].astype(np.int32) // _TILE
    idx = idx[cover.ravel()[tile]]
    if idx.size:
        zi = z2[idx]
        limit = zi * np.float32(1 - VIS_RTOL) - np.float32(1e-4)
        valid[idx] = cast(scene, b.cam, u2[idx], v2[idx], b.time, limit=limit).kind == K_SKY
    return np.stack([flow_u, flow_v]), valid


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
        vv, uu = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        self.u, self.v = uu.ravel(), vv.ravel()
        self.tiles = _Tiles(self.u, self.v, self.width, self.height)

    def camera(self, t: int) -> Camera:
        return self.path.camera(t / self.fps, self.width, self.height)

    def track(self, t0: int, t1: int, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Exact correspondences: where the surface points seen through sub-pixel ``points [N, 2]``
        (x, y) of frame ``t0`` are in frame ``t1``, and whether they are visible there.

        Rays are cast through the exact points (no pixel grid, no interpolation) and the hit points
        are moved and projected as the ground-truth flow is (:func:`_flow_to`, any frame distance).
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
        state = _State(self.scene, cam, cast(self.scene, cam, u, v, time), u, v, time)
        flow, valid = _flow_to(self.scene, state, _Viewpoint(self.camera(int(t1)), int(t1) / self.fps))
        return pts + flow.T.astype(np.float64), valid

    def frames(self) -> Iterator[Frame]:
        h, w = self.height, self.width
        prev: Optional[_State] = None
        for t in range(self.n):
            time = t / self.fps
            cam = self.camera(t)
            hits = cast(self.scene, cam, self.u, self.v, time, self.tiles)
            rgb, lab = shade(self.scene, cam, hits, time)
            depth = np.where(hits.kind == K_SKY, np.float32(SKY_DEPTH), hits.s).astype(np.float32)
            frame = Frame(t, (rgb * 255 + 0.5).astype(np.uint8).reshape(h, w, 3), depth.reshape(h, w),
                          lab.reshape(h, w))
            state = _State(self.scene, cam, hits, self.u, self.v, time) if self.flow else None
            if prev is not None:
                fwd, vf = _flow_to(self.scene, prev, state)
                bwd, vb = _flow_to(self.scene, state, prev)
                frame.fwd, frame.valid_fwd = fwd.reshape(2, h, w), vf.reshape(h, w)
                frame.bwd, frame.valid_bwd = bwd.reshape(2, h, w), vb.reshape(h, w)
            prev = state
            yield frame


class _Viewpoint:
    """The camera and time of a frame: all that :func:`_flow_to` reads of its target state."""

    def __init__(self, cam: Camera, time: float):
        self.cam, self.time = cam, time


def render_video(seed: int, frames: int, size=(640, 360), fps: float = 10.0) -> Video:
    """Render a whole video with ground truth in memory (deterministic by ``seed``); see :class:`Video`."""
    r = Renderer(seed, frames, size, fps)
    t, (w, h) = r.n, (r.width, r.height)
    out = Video(np.empty((t, h, w, 3), np.uint8), np.empty((t, h, w), np.float32), np.empty((t, h, w), np.uint8),
                np.empty((t - 1, 2, h, w), np.float32), np.empty((t - 1, 2, h, w), np.float32),
                np.empty((t - 1, h, w), bool), np.empty((t - 1, h, w), bool), r.fps, r.seed)
    for fr in r.frames():
        out.rgb[fr.t], out.depth[fr.t], out.labels[fr.t] = fr.rgb, fr.depth, fr.labels
        if fr.t:
            out.fwd[fr.t - 1], out.bwd[fr.t - 1] = fr.fwd, fr.bwd
            out.valid_fwd[fr.t - 1], out.valid_bwd[fr.t - 1] = fr.valid_fwd, fr.valid_bwd
    return out
