"""Shading: the colour and Cityscapes label of every ray hit, one step per kind of surface."""

from __future__ import annotations

from typing import Tuple

import numpy as np

from synth.camera import Camera
from synth.constants import (
    LABEL_BUILDING,
    LABEL_CAR,
    LABEL_POLE,
    LABEL_ROAD,
    LABEL_SIDEWALK,
    LABEL_SKY,
    LABEL_VEGETATION,
    ROAD_HALF,
)
from synth.raycast import K_BOX, K_CYL, K_FACADE, K_GROUND, K_SKY, K_SPHERE, Hits
from synth.scene import Scene
from synth.textures import box1, building_color, footprints, noise, pulses, road_color, sidewalk_color

AA = 1.5  # texture prefilter width, in pixel footprints

_SUN = np.array([0.45, -0.35, 0.82])
_SUN = _SUN / np.linalg.norm(_SUN)


def _lambert(nx, ny, nz):
    """Lambert + ambient brightness (float32) for unit normals (arrays or floats)."""
    sun = _SUN.astype(np.float32)
    return np.float32(0.62) + np.float32(0.45) * np.maximum(nx * sun[0] + ny * sun[1] + nz * sun[2], np.float32(0))


class _View:
    """The hits of one frame as the shading steps read them: unit ray directions, hit points, footprints."""

    def __init__(self, scene: Scene, cam: Camera, hits: Hits):
        self.hits = hits
        self.dx, self.dy, self.dz = hits.d
        self.norm = np.sqrt(self.dx * self.dx + self.dy * self.dy + self.dz * self.dz)
        self.seed = scene.tex_seed
        self.cxw, self.cyw, self.czw = (float(c) for c in cam.pos)
        self.f = np.float32(cam.f)

    def select(self, idx: np.ndarray):
        """Depths, unit directions (ux, uy, uz) and footprint radius ``r`` (metres) of the hits ``idx``."""
        s = self.hits.s[idx]
        nn = self.norm[idx]
        ux, uy, uz = self.dx[idx] / nn, self.dy[idx] / nn, self.dz[idx] / nn
        r = np.float32(AA) * s * nn / self.f
        return s, (ux, uy, uz), r

    def gather(self, kind: int):
        """``(idx, s, (ux, uy, uz), r)`` of every hit of ``kind``."""
        idx = np.nonzero(self.hits.kind == kind)[0]
        return (idx,) + self.select(idx)

    def point(self, idx: np.ndarray, s: np.ndarray):
        """World hit points (x, y, z), float32, of the hits ``idx`` at depths ``s``."""
        return (
            np.float32(self.cxw) + s * self.dx[idx],
            np.float32(self.cyw) + s * self.dy[idx],
            np.float32(self.czw) + s * self.dz[idx],
        )


def shade(scene: Scene, cam: Camera, hits: Hits, time: float) -> Tuple[np.ndarray, np.ndarray]:
    """Colour (float32 [P, 3], 0..1) and Cityscapes label (uint8 [P]) of every hit."""
    view = _View(scene, cam, hits)
    n = view.dx.shape[0]
    rgb = np.zeros((n, 3), np.float32)
    lab = np.zeros(n, np.uint8)
    for step in _steps(scene, view, time):
        if step is not None:
            idx, col, label = step
            rgb[idx] = col
            lab[idx] = label
    return np.clip(rgb, 0, 1), lab


def _steps(scene: Scene, view: _View, time: float):
    """One shading step per kind of surface, run in turn: each gives ``(hit indices, colours, labels)``
    or None when no ray hit that kind."""
    yield _sky(scene, view)
    yield _ground(view)
    for side in (0, 1):
        yield _facade(scene, view, side)
    yield _cylinders(scene, view)
    yield _spheres(scene, view)
    yield _cars(scene, view, time)


def _sky(scene: Scene, view: _View):
    """Sky: gradient + clouds, functions of the direction only."""
    idx, _, (ux, uy, uz), _ = view.gather(K_SKY)
    if not idx.size:
        return None
    e = np.clip(uz * 3.0, 0, 1)[:, None]
    col = scene.sky_horizon * (1 - e) + scene.sky_top * e
    sig = np.float32(AA) / view.f
    cl = noise((ux, uy, uz), (sig, sig, sig), view.seed + 1, 6, 0.6, 4.0)
    cloud = np.clip(cl * 0.9 + 0.1, 0, 1) * np.clip(uz * 8.0, 0, 1)
    return idx, (col * (1 - 0.7 * cloud[:, None]) + 0.95 * 0.7 * cloud[:, None]).astype(np.float32), LABEL_SKY


def _ground(view: _View):
    """Ground: road with markings, sidewalks with paving."""
    idx, s, (ux, uy, uz), r = view.gather(K_GROUND)
    if not idx.size:
        return None
    x, y, _ = view.point(idx, s)
    sx, sy = footprints(r, ux, uy, uz)
    road = np.abs(x) < ROAD_HALF
    col = np.empty((idx.size, 3), np.float32)
    sub = np.nonzero(road)[0]
    if sub.size:
        col[sub] = road_color(x[sub], y[sub], sx[sub], sy[sub], view.seed)
    sub = np.nonzero(~road)[0]
    if sub.size:
        col[sub] = sidewalk_color(x[sub], y[sub], sx[sub], sy[sub], view.seed)
    return idx, col * _lambert(0, 0, 1), np.where(road, LABEL_ROAD, LABEL_SIDEWALK)


def _facade(scene: Scene, view: _View, side: int):
    """Façades of one side (0 = left): buildings with windows and a ground-floor band, or hedges."""
    hits = view.hits
    sel = np.nonzero((hits.kind == K_FACADE) & (hits.index == side))[0]
    if not sel.size:
        return None
    s, (ux, uy, uz), r = view.select(sel)
    _, y, z = view.point(sel, s)
    sy, sz = footprints(r, uy, uz, ux)
    seg = np.clip(np.searchsorted(scene.seg_y[side], y) - 1, 0, len(scene.seg_h[side]) - 1)
    hedge = scene.seg_kind[side][seg] == 1
    col = np.empty((sel.size, 3), np.float32)
    sub = np.nonzero(~hedge)[0]
    if sub.size:
        col[sub] = building_color(scene, side, seg[sub], y[sub], z[sub], sy[sub], sz[sub], view.seed)
    sub = np.nonzero(hedge)[0]
    if sub.size:
        leaf = 1 + 0.25 * noise((y[sub], z[sub]), (sy[sub], sz[sub]), view.seed + 9, 8, 0.8, 6.0)
        col[sub] = scene.seg_color[side][seg[sub]].astype(np.float32) * leaf[:, None]
    return sel, col * _lambert(1.0 if side == 0 else -1.0, 0, 0), np.where(hedge, LABEL_VEGETATION, LABEL_BUILDING)


def _cylinders(scene: Scene, view: _View):
    """Cylinders: metal poles with bands, bark trunks."""
    idx, s, (ux, uy, uz), r = view.gather(K_CYL)
    if not idx.size:
        return None
    i = view.hits.index[idx]
    x, y, z = view.point(idx, s)
    px = x - scene.cyl_x[i].astype(np.float32)
    py = y - scene.cyl_y[i].astype(np.float32)
    rad = scene.cyl_r[i].astype(np.float32)
    nx, ny = px / rad, py / rad
    arc = np.arctan2(ny, nx) * rad
    dn = np.abs(nx * ux + ny * uy)
    sz = r
    sa = r / np.maximum(dn, np.float32(0.05))
    pole = scene.cyl_label[i] == LABEL_POLE
    metal = 0.5 + 0.08 * pulses(z, 1.3, 0.5, sz)
    pcol = np.stack([metal, metal, metal * 1.05], 1)
    bark = 0.8 + 0.2 * noise((arc, z), (sa, sz), view.seed + 11, 4, 1.0, 6.0)
    tcol = bark[:, None] * np.array([0.36, 0.27, 0.18], np.float32)
    return idx, np.where(pole[:, None], pcol, tcol) * _lambert(nx, ny, 0)[:, None], scene.cyl_label[i]


def _spheres(scene: Scene, view: _View):
    """Spheres: tree crowns."""
    idx, s, (ux, uy, uz), r = view.gather(K_SPHERE)
    if not idx.size:
        return None
    i = view.hits.index[idx]
    c = scene.sph_c[i].astype(np.float32)
    x, y, z = view.point(idx, s)
    px, py, pz = x - c[:, 0], y - c[:, 1], z - c[:, 2]
    rad = scene.sph_r[i].astype(np.float32)
    nx, ny, nz = px / rad, py / rad, pz / rad
    dn = np.abs(nx * ux + ny * uy + nz * uz)
    sg = r / np.maximum(dn, np.float32(0.1))
    leaf = 1 + 0.35 * noise((px, py, pz), (sg, sg, sg), view.seed + 13, 9, 0.7, 5.0)
    tone = scene.sph_tone[i].astype(np.float32)
    base = np.stack([0.20 + 0.04 * tone, 0.40 + 0.06 * tone, 0.13 + 0.02 * tone], 1)
    return idx, base * leaf[:, None] * _lambert(nx, ny, nz)[:, None], LABEL_VEGETATION


def _cars(scene: Scene, view: _View, time: float):
    """Boxes: cars (body with wheels and lights, cabin with windows) and vans."""
    idx, s, (ux, uy, uz), r = view.gather(K_BOX)
    if not idx.size:
        return None
    i = view.hits.index[idx]
    lo = scene.box_lo[i].astype(np.float32)
    hi = scene.box_hi[i].astype(np.float32)
    lo[:, 1] += (scene.box_vy[i] * time).astype(np.float32)
    hi[:, 1] += (scene.box_vy[i] * time).astype(np.float32)
    p = list(view.point(idx, s))
    # Which face: the coordinate closest to a box boundary (relative to the box size).
    dist = np.stack(
        [np.minimum(np.abs(p[a] - lo[:, a]), np.abs(p[a] - hi[:, a])) / (hi[:, a] - lo[:, a]) for a in range(3)], 1
    )
    face = np.argmin(dist, 1)
    box = _CarBox(
        lx=p[0] - lo[:, 0],
        ly=p[1] - lo[:, 1],
        lz=p[2] - lo[:, 2],
        length=hi[:, 1] - lo[:, 1],
        width=hi[:, 0] - lo[:, 0],
        height=hi[:, 2] - lo[:, 2],
        d=scene.box_dir[i],
        part=scene.box_part[i],
    )
    base = scene.box_color[i].astype(np.float32)
    col = base * (1 + 0.03 * noise((box.lx, box.ly, box.lz), (r, r, r), view.seed + 15, 3, 0.5, 3.0))[:, None]
    side = face == 0
    fb = face == 1
    top = face == 2
    # Footprints per face: along Y/Z on side faces, X/Z on front/back; the top keeps the plain body
    # colour (cabin roof, bonnet, boot).
    sidecol = _car_side(box, col, *footprints(r, uy, uz, ux))
    fbcol = _car_front_back(box, col, *footprints(r, ux, uz, uy))
    col = np.where(side[:, None], sidecol, np.where(fb[:, None], fbcol, col))
    nx = np.where(side, np.where(np.abs(box.lx) < np.abs(box.lx - box.width), -1.0, 1.0), 0.0)
    ny = np.where(fb, np.where(np.abs(box.ly) < np.abs(box.ly - box.length), -1.0, 1.0), 0.0)
    nz = np.where(top, 1.0, 0.0)
    return idx, col * _lambert(nx, ny, nz)[:, None].astype(np.float32), LABEL_CAR


class _CarBox:
    """Hit points in a car box's own frame (``lx, ly, lz`` from its low corner), its size, heading and part."""

    def __init__(self, lx, ly, lz, length, width, height, d, part):
        self.lx, self.ly, self.lz = lx, ly, lz
        self.length, self.width, self.height = length, width, height
        self.d = d  # +1 if the car faces +Y
        self.part = part  # 0 body, 1 cabin, 2 van
        self.fwd_y = np.where(d > 0, ly, length - ly)  # distance from the car's rear along its heading


def _car_side(box: _CarBox, col, s_y, s_z):
    """Side faces: wheels (dark discs) and a dark sill on bodies/vans; windows on cabins/vans."""
    lx, ly, lz, length, height, part = box.lx, box.ly, box.lz, box.length, box.height, box.part
    wheel = np.zeros_like(lx)
    for wheel_y in (np.float32(0.75), length - np.float32(0.75)):  # axle positions from the box end
        rr = np.sqrt((ly - wheel_y) ** 2 + (lz + np.float32(0.05)) ** 2)
        wheel = np.maximum(wheel, box1(rr, -1.0, 0.38, np.maximum(s_y, s_z)))
    sill = box1(lz, -1.0, 0.12, s_z)
    dark = np.maximum(wheel * (part != 1), sill * (part != 1) * 0.6)
    cab_win = (
        box1(lz, 0.08, height - 0.08, s_z)
        * box1(ly, 0.25, length - 0.25, s_y)
        * (1 - box1(ly, length / 2 - 0.06, length / 2 + 0.06, s_y))
    )
    van_win = box1(lz, 1.0, height - 0.35, s_z) * box1(box.fwd_y, length - 1.6, length - 0.3, s_y)
    glass = np.where(part == 1, cab_win, np.where(part == 2, van_win, 0.0))
    sidecol = col * (1 - dark[:, None]) + np.float32(0.06) * dark[:, None]
    return sidecol * (1 - glass[:, None]) + np.float32(0.12) * glass[:, None]


def _car_front_back(box: _CarBox, col, s_x, s_z):
    """Front/back: lights near the outer corners of bodies/vans, windows on cabins/vans."""
    lx, ly, lz, length, width, height, part = box.lx, box.ly, box.lz, box.length, box.width, box.height, box.part
    front = np.where(box.d > 0, ly > length / 2, ly < length / 2)
    lamp = (box1(lx, 0.12, 0.45, s_x) + box1(lx, width - 0.45, width - 0.12, s_x)) * box1(
        lz, height - 0.35, height - 0.12, s_z
    )
    lamp = np.where(part == 1, 0.0, np.clip(lamp, 0, 1))
    lamp_col = np.where(
        front[:, None], np.array([0.95, 0.93, 0.8], np.float32), np.array([0.75, 0.08, 0.06], np.float32)
    )
    fb_glass = np.where(
        part == 1,
        box1(lz, 0.06, height - 0.06, s_z) * box1(lx, 0.1, width - 0.1, s_x),
        np.where(
            part == 2, box1(lz, height - 0.95, height - 0.3, s_z) * box1(lx, 0.12, width - 0.12, s_x) * front, 0.0
        ),
    )
    fbcol = col * (1 - lamp[:, None]) + lamp_col * lamp[:, None]
    return fbcol * (1 - fb_glass[:, None]) + np.float32(0.12) * fb_glass[:, None]
