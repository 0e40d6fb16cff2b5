"""The scene of one video: street, façades, poles, trees and cars, sampled from the video's seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from synth.camera import CameraPath
from synth.constants import FAR, LABEL_POLE, LABEL_VEGETATION, LANE_W, ROAD_HALF


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


_BUILDING_COLORS = np.array(
    [
        [0.62, 0.36, 0.28],
        [0.78, 0.72, 0.60],
        [0.60, 0.60, 0.62],
        [0.85, 0.82, 0.76],
        [0.55, 0.45, 0.38],
        [0.70, 0.56, 0.42],
        [0.45, 0.50, 0.55],
        [0.80, 0.66, 0.52],
    ]
)
_CAR_COLORS = np.array(
    [
        [0.80, 0.80, 0.82],
        [0.12, 0.12, 0.14],
        [0.60, 0.08, 0.08],
        [0.15, 0.22, 0.50],
        [0.45, 0.47, 0.50],
        [0.85, 0.85, 0.80],
        [0.20, 0.35, 0.25],
        [0.70, 0.55, 0.15],
        [0.30, 0.30, 0.33],
    ]
)


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
        for x2, y2, v2, l2, w2, _, _ in cars:
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
    for x, y0, vy, length, width, kind, d in cars:
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
        seg_y=[s[0] for s in seg],
        seg_h=[s[1] for s in seg],
        seg_kind=[s[2] for s in seg],
        seg_color=[s[3] for s in seg],
        seg_win=[s[4] for s in seg],
        cyl_x=np.array(cx, float),
        cyl_y=np.array(cy, float),
        cyl_r=np.array(cr, float),
        cyl_h=np.array(ch, float),
        cyl_label=np.array(cl, np.uint8),
        sph_c=np.array(sc, float).reshape(-1, 3),
        sph_r=np.array(sr, float),
        sph_tone=np.array(st, float),
        box_lo=np.array(lo, float).reshape(-1, 3),
        box_hi=np.array(hi, float).reshape(-1, 3),
        box_vy=np.array(vys, float),
        box_color=np.array(colors, float).reshape(-1, 3),
        box_part=np.array(parts, int),
        box_dir=np.array(dirs, int),
        sky_top=np.clip(sky_top, 0, 1),
        sky_horizon=np.clip(sky_h, 0, 1),
        tex_seed=int(rng.integers(1 << 30)),
    )
