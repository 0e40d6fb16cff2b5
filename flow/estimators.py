"""Optical-flow estimators behind one interface: RAFT (torchvision) and OpenCV DIS."""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from flow.ops import full_flow_to_shard
from plumbing.errors import UserError

MODELS = ("raft-small", "raft-large", "dis")
DIS_PRESETS = ("ultrafast", "fast", "medium")
AMP_DTYPES = {None: None, "none": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FlowResult:
    """Flow for a batch of pairs: ``full`` [B, 2, H, W] (pixels), ``low`` [B, 2, ceil(H/8), ceil(W/8)] (1/8 px)."""

    full: torch.Tensor
    low: torch.Tensor


def to_float_chw(images: Union[np.ndarray, torch.Tensor], name: str = "images", device=None) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` (numpy or torch) or float ``[B, 3, H, W]`` (0..255) → float32 ``[B, 3, H, W]``.

    uint8 input is moved to ``device`` before the conversion (4x less to transfer).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} should be a numpy array or torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{name} of dtype uint8 should have shape [B, H, W, 3], got {tuple(images.shape)}")
        return images.to(device).permute(0, 3, 1, 2).float()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"float {name} should have shape [B, 3, H, W] with values in 0..255, got {tuple(images.shape)}"
        )
    return images.to(device).float()


def to_uint8_hwc(images: Union[np.ndarray, torch.Tensor], name: str = "images") -> np.ndarray:
    """Any accepted image batch → uint8 numpy ``[B, H, W, 3]``."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{name} of dtype uint8 should have shape [B, H, W, 3], got {tuple(images.shape)}")
        return images
    x = to_float_chw(images, name)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class FlowEstimator(abc.ABC):
    """Base class: ``est(img1, img2) -> FlowResult``. ``name`` is one of :data:`MODELS`."""

    name: str = ""
    device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def __call__(self, img1, img2) -> FlowResult:
        """Flow from ``img1`` to ``img2`` (batches of the same shape)."""

    @staticmethod
    def _check_pair(img1, img2) -> None:
        if tuple(img1.shape) != tuple(img2.shape):
            raise ValueError(
                f"img1 and img2 should have the same shape, got {tuple(img1.shape)} and {tuple(img2.shape)}"
            )


class RaftEstimator(FlowEstimator):
    """torchvision RAFT, ``iters`` refinement steps (12 like the seed), optional autocast.

    ``weights=None`` keeps torchvision's random initialisation (tests and benchmarks only).
    ``amp``: None (fp32, the seed's setting), ``"bf16"`` or ``"fp16"`` autocast for the encoders and
    update block; the correlation volume stays fp32 as in the official implementation.
    """

    def __init__(self, small: bool, weights=None, device="cpu", iters: int = 12, amp: Optional[str] = None):
        from torchvision.models.optical_flow import raft_large, raft_small

        from flow.raft_weights import load_raft_state, read_checkpoint

        if amp not in AMP_DTYPES:
            raise UserError(f"amp should be one of bf16, fp16, fp32, got {amp!r}")
        if iters < 1:
            raise UserError(f"iters should be >= 1, got {iters}")
        self.name = "raft-small" if small else "raft-large"
        self.small = small
        self.iters = int(iters)
        self.amp_dtype = AMP_DTYPES[amp]
        self.device = torch.device(device)
        self.model = (raft_small if small else raft_large)(weights=None, progress=False)
        self.layout = None
        if weights is not None:
            state = read_checkpoint(weights)
            self.layout = load_raft_state(self.model, state, small, source=str(weights))
        self.model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def __call__(self, img1, img2) -> FlowResult:
        from torchvision.models.optical_flow._utils import make_coords_grid, upsample_flow

        self._check_pair(img1, img2)
        x1 = to_float_chw(img1, "img1", self.device)
        x2 = to_float_chw(img2, "img2", self.device)
        b, _, h, w = x1.shape
        ph, pw = 8 * math.ceil(h / 8), 8 * math.ceil(w / 8)
        if ph < 128 or pw < 128:
            raise UserError(
                f"RAFT needs frames of at least 128x128 pixels (torchvision's correlation pyramid), got {w}x{h}"
            )
        x = torch.cat([x1, x2], 0) * (2.0 / 255.0) - 1.0
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        m = self.model
        with self._autocast():
            fmaps = m.feature_encoder(x)
        fmap1, fmap2 = fmaps.float().chunk(2, 0)
        m.corr_block.build_pyramid(fmap1, fmap2)
        with self._autocast():
            ctx = m.context_encoder(x[:b])
            hdim = m.update_block.hidden_state_size
            hidden, context = torch.split(ctx, [hdim, ctx.shape[1] - hdim], dim=1)
            hidden = torch.tanh(hidden)
            context = F.relu(context)
        coords0 = make_coords_grid(b, ph // 8, pw // 8).to(self.device)
        coords1 = coords0.clone()
        for _ in range(self.iters):
            corr = m.corr_block.index_pyramid(centroids_coords=coords1)
            with self._autocast():
                hidden, delta = m.update_block(hidden, context, corr, coords1 - coords0)
            coords1 = coords1 + delta.float()
        low = coords1 - coords0
        up_mask = None
        if m.mask_predictor is not None:
            with self._autocast():
                up_mask = m.mask_predictor(hidden)
            up_mask = up_mask.float()
        full = upsample_flow(low, up_mask=up_mask)[:, :, :h, :w]
        return FlowResult(full=full.float().contiguous(), low=low.float().contiguous())


class DisEstimator(FlowEstimator):
    """OpenCV DIS optical flow (``ultrafast``, ``fast`` or ``medium`` preset) on grey images, CPU only."""

    def __init__(self, preset: str = "medium", threads: Optional[int] = None):
        import cv2

        if preset not in DIS_PRESETS:
            raise UserError(f"DIS preset should be one of {', '.join(DIS_PRESETS)}, got {preset!r}")
        self.name = "dis"
        self.preset = preset
        self.device = torch.device("cpu")
        code = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }[preset]
        self._dis = cv2.DISOpticalFlow_create(code)
        if threads is not None:
            cv2.setNumThreads(int(threads))

    def __call__(self, img1, img2) -> FlowResult:
        import cv2

        self._check_pair(img1, img2)
        a = to_uint8_hwc(img1, "img1")
        c = to_uint8_hwc(img2, "img2")
        flows = []
        for i in range(a.shape[0]):
            g1 = cv2.cvtColor(a[i], cv2.COLOR_RGB2GRAY)
            g2 = cv2.cvtColor(c[i], cv2.COLOR_RGB2GRAY)
            f = self._dis.calc(g1, g2, None)  # [H, W, 2] float32
            flows.append(torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))))
        full = torch.stack(flows, 0)
        return FlowResult(full=full, low=full_flow_to_shard(full))


def make_estimator(
    name: str,
    weights=None,
    device="cpu",
    iters: int = 12,
    amp: Optional[str] = None,
    dis_preset: str = "medium",
    threads: Optional[int] = None,
) -> FlowEstimator:
    """Build an estimator by name: ``"raft-small"``, ``"raft-large"`` or ``"dis"``.

    ``weights``: local checkpoint path for RAFT (official or torchvision layout), None = random
    initialisation; must be None for DIS. ``device``: torch device for RAFT. ``iters``: RAFT updates.
    ``amp``: None/"fp32", "bf16" or "fp16" (RAFT). ``dis_preset``: ultrafast/fast/medium.
    """
    if name not in MODELS:
        raise UserError(f"model should be one of {', '.join(MODELS)}, got {name!r}")
    if name == "dis":
        if weights is not None:
            raise UserError(f"--weights is not used by the DIS estimator (got {os.fspath(weights)})")
        return DisEstimator(dis_preset, threads)
    return RaftEstimator(name == "raft-small", weights, device, iters, amp)
