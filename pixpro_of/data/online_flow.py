"""Flow estimated on the fly for a batch of clips (the seed's no-storage mode, docs/original-system.md §2.5)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from flow.estimators import FlowEstimator


class ClipFlow:
    """Forward and backward flows of a batch of clips from ``estimator`` (see the module docstring)."""

    def __init__(self, estimator: FlowEstimator, chunk: int = 32):
        if int(chunk) < 1:
            raise ValueError(f"chunk should be >= 1 pairs, got {chunk}")
        self.estimator = estimator
        self.chunk = int(chunk)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``frames`` uint8 ``[B, k, H, W, 3]`` (k >= 2) → ``(fwd, bwd)`` ``[B, k−1, 2, h8, w8]``."""
        if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames should be uint8 [B, k, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        b, k, h, w, _ = frames.shape
        if k < 2:
            raise ValueError(f"flow needs clips of at least 2 frames, got k={k}")
        n = b * (k - 1)
        earlier = frames[:, :-1].reshape(n, h, w, 3)
        later = frames[:, 1:].reshape(n, h, w, 3)
        # All forward pairs, then all backward pairs: one stream of 2n pairs cut into chunks.
        src = torch.cat([earlier, later], 0)
        dst = torch.cat([later, earlier], 0)
        out = []
        for i in range(0, 2 * n, self.chunk):
            out.append(self.estimator(src[i : i + self.chunk], dst[i : i + self.chunk]).low)
        low = torch.cat(out, 0)
        h8, w8 = low.shape[-2:]
        fwd = low[:n].reshape(b, k - 1, 2, h8, w8)
        bwd = low[n:].reshape(b, k - 1, 2, h8, w8)
        return fwd, bwd


def positives_on_the_fly(batch, flow: ClipFlow, cfg, feature_size: int) -> Dict[str, torch.Tensor]:
    """Positives of a collated :class:`~pixpro_of.data.pipeline.Batch` whose ``frames`` are on the
    device: :func:`pixpro_of.data.pipeline.batch_positives` with flows from ``flow``; ``cfg`` the
    positive settings (a :class:`~pixpro_of.config.PositiveConfig`, e.g. ``cfg.data``). Returns its
    dict (``pos12``, ``pos21``, ``mask_ratio`` …); k = 1 batches need no flow."""
    from pixpro_of.data.pipeline import batch_positives

    frames = batch.frames
    if frames is None:
        raise ValueError(
            "the batch has no frames: build its samples with carry='frames' from clips read with all_frames=True"
        )
    if frames.shape[1] < 2:
        return batch_positives(batch, None, None, cfg, feature_size)
    fwd, bwd = flow(frames)
    return batch_positives(batch, fwd, bwd, cfg, feature_size)
