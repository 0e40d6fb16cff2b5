"""Procedural textures of surface coordinates, prefiltered to the pixel footprint (nothing aliases)."""

from __future__ import annotations

import math

import numpy as np

from synth.constants import LANE_W, ROAD_HALF


def box1(x, a, b, w):
    """Box-filtered indicator of the interval [a, b] at x, filter width w (arrays)."""
    w = np.maximum(w, np.float32(1e-6))
    return (np.clip(x + w / 2, a, b) - np.clip(x - w / 2, a, b)) / w


def pulses(x, period, duty, w, offset=0.0):
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


def noise(coords, sigmas, rng_seed: int, n: int, k_min: float, k_max: float):
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


def footprints(r, du, dv, dn):
    """Footprint std along in-plane unit axes (a, b) with ray components du=a·d̂, dv=b·d̂, dn=n·d̂."""
    inv = 1.0 / np.maximum(np.abs(dn), np.float32(1e-3))
    return r * np.sqrt(np.maximum(1 - dv * dv, 0)) * inv, r * np.sqrt(np.maximum(1 - du * du, 0)) * inv


def road_color(x, y, sx, sy, seed):
    """Asphalt with lane markings: white edge lines, dashed white lane dividers, a double yellow centre line."""
    ax = np.abs(x)
    g = (
        0.36
        + 0.035 * noise((x, y), (sx, sy), seed + 2, 6, 0.15, 3.0)
        + 0.03 * noise((x, y), (sx, sy), seed + 3, 2, 0.02, 0.12)
    )
    white = box1(ax, ROAD_HALF - 0.4, ROAD_HALF - 0.25, sx) + box1(ax, LANE_W - 0.07, LANE_W + 0.07, sx) * pulses(
        y, 9.0, 0.35, sy
    )
    yellow = box1(ax, 0.08, 0.2, sx)  # the markings never overlap, so their weights just add
    g *= 1 - white - yellow
    white *= np.float32(0.86)
    return np.stack(
        [
            g + white + np.float32(0.85) * yellow,
            g + white + np.float32(0.68) * yellow,
            g * np.float32(1.04) + white + np.float32(0.18) * yellow,
        ],
        1,
    )


def sidewalk_color(x, y, sx, sy, seed):
    """Paving slabs (0.75 m) with dark joints and a light kerb stripe along the road edge."""
    ax = np.abs(x)
    pav = 0.56 + 0.03 * noise((x, y), (sx, sy), seed + 4, 4, 0.3, 2.0)
    pav *= 1 - 0.25 * (1 - pulses(ax - ROAD_HALF, 0.75, 0.9, sx) * pulses(y, 0.75, 0.9, sy))
    kerb = box1(ax, ROAD_HALF, ROAD_HALF + 0.3, sx)
    pav *= 1 - kerb
    kerb *= np.float32(0.72)
    return np.stack([pav + kerb, pav * np.float32(0.98) + kerb, pav * np.float32(0.94) + kerb], 1)


def building_color(scene, side, seg, y, z, sy, sz, seed):
    """Façade wall with a window grid from the first floor up and a darker shop band below 3 m."""
    base = scene.seg_color[side][seg].astype(np.float32)
    win = scene.seg_win[side][seg].astype(np.float32)
    wall = 1 + 0.06 * noise((y, z), (sy, sz), seed + 5 + side, 5, 0.3, 4.0)
    wy = pulses(y, win[:, 0], win[:, 2], sy, offset=scene.seg_y[side][seg].astype(np.float32) + 0.5)
    wz = pulses(z, win[:, 1], win[:, 3], sz, offset=np.float32(0.9)) * (z > 3.2)
    windows = (wy * wz)[:, None]
    glass = np.float32(0.18) + 0.05 * noise((y, z), (sy, sz), seed + 7, 2, 0.05, 0.2)[:, None]
    col = base * wall[:, None] * (1 - windows) + glass * np.array([0.9, 1.0, 1.15], np.float32) * windows
    shop = box1(z, 0.0, 3.0, sz)[:, None] * np.float32(0.35)
    return col * (1 - shop) + shop * np.float32(0.25) * base
