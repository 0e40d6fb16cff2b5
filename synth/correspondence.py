"""Exact positive-pair correspondences from the synthetic world's geometry (no flow field).

``ExactCorrespondence(renderers, starts, ks)`` implements
:class:`pixpro_of.positives.Correspondence` for a batch of clips: sample ``b`` is video
``renderers[b]`` (a :class:`~synth.world.Renderer`), view 1 from frame ``starts[b]``,
view 2 from frame ``starts[b] + ks[b] − 1``. Query points are tracked with
:meth:`Renderer.track` — rays cast through the exact sub-pixel cell centres, hit points moved and
projected into the other frame, visibility tested there — so positives computed with it are the
geometric truth the flow-based positives approximate (the upper bound of an ablation, and the
reference of the precision tests). ``mask_ratio`` is the fraction of the query points that are
not visible in the other frame.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from synth.world import Renderer


class ExactCorrespondence:
    """See the module docstring."""

    def __init__(self, renderers: Sequence[Renderer], starts: Sequence[int], ks: Sequence[int]):
        if not len(renderers) == len(starts) == len(ks):
            raise ValueError(
                f"renderers, starts and ks should have one entry per sample, got "
                f"{len(renderers)}, {len(starts)} and {len(ks)}"
            )
        self.items = [(r, int(t), int(k)) for r, t, k in zip(renderers, starts, ks)]
        for r, t, k in self.items:
            if k < 1 or not 0 <= t <= r.n - k:
                raise ValueError(f"clip t={t}, k={k} does not fit a video of {r.n} frames")
        self._ratio = None

    def _move(self, points: torch.Tensor, forward: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        if points.shape[0] != len(self.items):
            raise ValueError(f"points should have {len(self.items)} rows (one per sample), got {points.shape[0]}")
        pts = points.detach().to("cpu", torch.float64).numpy()
        moved: List[np.ndarray] = []
        valid: List[np.ndarray] = []
        for (r, t, k), p in zip(self.items, pts):
            a, b = (t, t + k - 1) if forward else (t + k - 1, t)
            pos, vis = r.track(a, b, p)
            moved.append(pos)
            valid.append(vis)
        return (
            torch.from_numpy(np.stack(moved)).to(points.device),
            torch.from_numpy(np.stack(valid)).to(points.device),
        )

    def warp_both(self, points1: torch.Tensor, points2: torch.Tensor):
        w1, v1 = self._move(points1, True)
        w2, v2 = self._move(points2, False)
        self._ratio = (1.0 - v1.double().mean(1), 1.0 - v2.double().mean(1))
        return w1, v1, w2, v2

    def mask_ratio(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._ratio is None:
            raise RuntimeError("mask_ratio is known after warp_both")
        return self._ratio
