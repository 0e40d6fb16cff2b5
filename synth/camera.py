"""The ego camera: one frame's pinhole camera and the smooth trajectory it drives along the street."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from synth.constants import LANE_W

HFOV_DEG = 70.0  # horizontal field of view


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
        return (
            r[0, 0] * a + r[1, 0] * b + r[2, 0],
            r[0, 1] * a + r[1, 1] * b + r[2, 1],
            r[0, 2] * a + r[1, 2] * b + r[2, 2],
        )

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
            v0=float(rng.uniform(7.0, 13.0)),
            v_amp=float(rng.uniform(0.0, 1.5)),
            v_period=float(rng.uniform(6.0, 15.0)),
            v_phase=float(rng.uniform(0, 2 * math.pi)),
            lane_x=LANE_W / 2,
            changes=changes,
            weave=(float(rng.uniform(0.05, 0.25)), float(rng.uniform(4.0, 9.0)), float(rng.uniform(0, 2 * math.pi))),
            yaw_jit=[
                (float(rng.uniform(0.002, 0.006)), float(rng.uniform(0.7, 3.0)), float(rng.uniform(0, 2 * math.pi)))
                for _ in range(2)
            ],
            pitch0=float(rng.uniform(-0.05, -0.02)),
            pitch_jit=[
                (float(rng.uniform(0.001, 0.004)), float(rng.uniform(0.4, 2.0)), float(rng.uniform(0, 2 * math.pi)))
                for _ in range(2)
            ],
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
