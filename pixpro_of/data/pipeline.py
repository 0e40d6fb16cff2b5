"""From a clip to a training sample: two augmented views and their positive-pair matrices.

``SampleBuilder(cfg, feature_size)(clip, rng)`` takes the ARCHITECTURE.md clip dict (``frame1``,
``frame2`` uint8 [H, W, 3] — or JPEG bytes —, ``fwd``/``bwd`` float32 [k−1, 2, h8, w8], ``video``,
``t``, ``k``) and returns::

    view1, view2   float32 [3, S, S], ImageNet-normalised (view 1 from frame t, view 2 from t+k−1)
    pos12, pos21   bool [F·F, F·F]   positives (rows: view-1 cells / view-2 cells)
    box1, box2     float32 [4]       crop boxes (left, top, width, height) in frame pixels
    flip1, flip2   bool
    mask_ratio     float             fraction of flow pixels the FB mask rejects (0 for k = 1),
                                     over every flow-grid pixel (``mask_ratio_stride`` = 1, the
                                     default) or every s-th one per axis (s > 1: only the needed
                                     pixels are chained; positives unchanged); mask_ratio_fwd /
                                     mask_ratio_bwd per direction (the seed's mask_ratio/fwd, /bwd),
                                     mask_ratio = their mean
    frame_hw       (H, W)            original frame size
    video, t, k

With ``defer_positives=True`` the sample has no ``pos12``/``pos21``/``mask_ratio`` and needs no
flow: the caller computes them for the whole batch with :func:`batch_positives` (e.g. on the GPU
from flows estimated on the fly, the seed's no-storage mode: :mod:`pixpro_of.data.online_flow`).
A clip with ``frames`` (uint8 [k, H, W, 3], every frame of the clip) passes them on as the
sample's ``frames`` tensor (the same layout), for that flow estimation; otherwise a clip's stored
flows pass on as ``fwd``/``bwd`` tensors, so that the positives of the batch can be computed on
the training device (``data.positives_on=device``: ~2 ms less CPU work per k = 6 sample in the
DataLoader workers).

Randomness: every draw (crops, flips, jitter, grayscale, blur, solarize) comes from the ``rng``
argument, in a fixed order, so a sample is a pure function of (clip, rng state).

The GPU seam: :func:`frame_tensor` (decode: numpy / JPEG bytes → uint8 [3, H, W], on ``device``) and
:func:`pixpro_of.data.augment.apply_view` (tensor ops) are the only pixel work; both run unchanged on
CUDA tensors (``torchvision.io.decode_jpeg(device='cuda')``). Positives need only boxes, flips and
the 1/8 flows (:func:`pixpro_of.positives.compute_positives`, batched).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch

from pixpro_of.data.augment import BYOL_VIEW1, BYOL_VIEW2, apply_view, draw_view_params, to_normalized_float
from plumbing.errors import UserError
from pixpro_of.positives import FLOW_RESOLUTIONS, MASK_MODES, POSITIVE_RULES, PositiveConfig, compute_positives


@dataclass
class SampleConfig:
    """Sample settings; defaults are the seed's (docs/original-system.md §2.4–2.8)."""

    image_size: int = 224  # side S of both views (--image-size)
    crop_scale: Tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (--crop)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range (--crop-ratio)
    pos_ratio: float = 0.7  # positive when distance / max bin diagonal < pos_ratio (--pixpro-pos-ratio)
    mask: str = "seed"  # occlusion mask: "seed" FB check (§2.6), "unflow", or "none"
    alpha1: float = 0.01  # FB-mask α1 (--alpha1)
    alpha2: float = 0.5  # FB-mask α2 (--alpha2); "unflow": px² at full resolution
    positive_rule: str = "pixel"  # "pixel" (the seed fork) or "normalized" (original PixPro)
    flow_resolution: str = "coarse"  # chain/mask on the 1/8 grid, or "full" (seed-exact, ~64x slower)
    mask_ratio_stride: int = 1  # 1: mask_ratio over every flow-grid pixel; s > 1: every s-th per axis (cheaper)
    defer_positives: bool = False  # True: samples carry no pos12/pos21 (flow computed later, e.g. RAFT on GPU)

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad field."""
        if int(self.image_size) < 32:
            raise UserError(f"sample.image_size must be >= 32, got {self.image_size}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"sample.crop_scale must satisfy 0 < min <= max <= 1, got {tuple(self.crop_scale)}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise UserError(f"sample.crop_ratio must satisfy 0 < min <= max, got {tuple(self.crop_ratio)}")
        if not self.pos_ratio > 0:
            raise UserError(f"sample.pos_ratio must be > 0, got {self.pos_ratio}")
        if self.mask not in MASK_MODES:
            raise UserError(f"sample.mask must be one of {', '.join(MASK_MODES)}, got {self.mask!r}")
        if self.alpha1 < 0 or self.alpha2 < 0:
            raise UserError(f"sample.alpha1 and sample.alpha2 must be >= 0, got {self.alpha1}, {self.alpha2}")
        if self.positive_rule not in POSITIVE_RULES:
            raise UserError(f"sample.positive_rule must be one of {', '.join(POSITIVE_RULES)}, got {self.positive_rule!r}")
        if int(self.mask_ratio_stride) < 1:
            raise UserError(f"sample.mask_ratio_stride must be >= 1, got {self.mask_ratio_stride}")
        if self.flow_resolution not in FLOW_RESOLUTIONS:
            raise UserError(f"sample.flow_resolution must be one of {', '.join(FLOW_RESOLUTIONS)}, got {self.flow_resolution!r}")

    def positive_config(self) -> PositiveConfig:
        return PositiveConfig(pos_ratio=self.pos_ratio, mask=self.mask, alpha1=self.alpha1, alpha2=self.alpha2,
                              positive_rule=self.positive_rule, flow_resolution=self.flow_resolution,
                              mask_ratio_stride=int(self.mask_ratio_stride))


def frame_tensor(frame: Union[np.ndarray, bytes, torch.Tensor], device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Decode seam: a uint8 [H, W, 3] array, uint8 [3, H, W] tensor or JPEG bytes → uint8 [3, H, W].

    JPEG bytes are decoded with simplejpeg on CPU (as the shard reader does) and with
    ``torchvision.io.decode_jpeg(device=...)`` (nvJPEG) on other devices.
    """
    if isinstance(frame, (bytes, bytearray, memoryview)):
        if torch.device(device).type == "cpu":
            import simplejpeg

            return torch.from_numpy(simplejpeg.decode_jpeg(bytes(frame), colorspace="RGB")).permute(2, 0, 1)
        import torchvision.io

        data = torch.frombuffer(bytearray(frame), dtype=torch.uint8)
        return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=device)
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame should be a uint8 array [H, W, 3], got {frame.dtype} {frame.shape}")
        return torch.from_numpy(frame).permute(2, 0, 1).to(device)
    if isinstance(frame, torch.Tensor) and frame.dtype == torch.uint8 and frame.ndim == 3 and frame.shape[0] == 3:
        return frame.to(device)
    raise ValueError(f"frame should be a uint8 [H, W, 3] array, a uint8 [3, H, W] tensor or JPEG bytes, got {type(frame).__name__}")


class SampleBuilder:
    """Callable clip → sample (see the module docstring); ``feature_size`` is F (7 at 224)."""

    def __init__(self, cfg: SampleConfig, feature_size: int = 7):
        cfg.validate()
        if int(feature_size) < 1:
            raise UserError(f"feature_size must be >= 1, got {feature_size}")
        self.cfg = cfg
        self.feature_size = int(feature_size)
        self.pos_cfg = cfg.positive_config()

    def _where(self, clip: dict) -> str:
        return f"clip (video {clip.get('video', '?')!r}, t={clip.get('t', '?')}, k={clip.get('k', '?')})"

    def __call__(self, clip: dict, rng: np.random.Generator) -> Dict[str, object]:
        try:
            f1 = frame_tensor(clip["frame1"])
            f2 = frame_tensor(clip["frame2"])
        except (KeyError, ValueError) as exc:
            raise UserError(f"{self._where(clip)}: bad frame: {exc}") from None
        if f1.shape != f2.shape:
            raise UserError(f"{self._where(clip)}: frame1 {tuple(f1.shape)} and frame2 {tuple(f2.shape)} differ in size")
        H, W = int(f1.shape[1]), int(f1.shape[2])
        fwd = clip.get("fwd")
        bwd = clip.get("bwd")
        k = int(clip.get("k", 1))
        n = 0 if fwd is None else int(np.shape(fwd)[0])
        if k > 1 and not self.cfg.defer_positives and (fwd is None or bwd is None or n != k - 1 or np.shape(bwd) != np.shape(fwd)):
            raise UserError(f"{self._where(clip)}: needs fwd and bwd of shape [{k - 1}, 2, h8, w8], "
                            f"got {None if fwd is None else tuple(np.shape(fwd))} and {None if bwd is None else tuple(np.shape(bwd))}")
        S = int(self.cfg.image_size)
        p1 = draw_view_params(rng, (H, W), BYOL_VIEW1, self.cfg.crop_scale, self.cfg.crop_ratio)
        p2 = draw_view_params(rng, (H, W), BYOL_VIEW2, self.cfg.crop_scale, self.cfg.crop_ratio)
        view1 = to_normalized_float(apply_view(f1, p1, S))
        view2 = to_normalized_float(apply_view(f2, p2, S))
        box1 = torch.tensor([p1.box], dtype=torch.float64)
        box2 = torch.tensor([p2.box], dtype=torch.float64)
        flip1 = torch.tensor([p1.flip])
        flip2 = torch.tensor([p2.flip])
        out = {
            "view1": view1, "view2": view2,
            "box1": box1[0].float(), "box2": box2[0].float(),
            "flip1": bool(p1.flip), "flip2": bool(p2.flip),
            "video": clip.get("video", ""), "t": int(clip.get("t", 0)), "k": k,
            "frame_hw": (H, W),
        }
        has_flow = k > 1 and fwd is not None and bwd is not None
        if has_flow:
            fwd_t = torch.as_tensor(np.asarray(fwd, dtype=np.float32))
            bwd_t = torch.as_tensor(np.asarray(bwd, dtype=np.float32))
        if self.cfg.defer_positives:
            if clip.get("frames") is not None:
                out["frames"] = torch.from_numpy(np.ascontiguousarray(clip["frames"]))
            elif has_flow:
                out["fwd"], out["bwd"] = fwd_t, bwd_t
            return out
        if k > 1:
            try:
                pos = compute_positives(box1, flip1, box2, flip2, (H, W), self.feature_size, self.pos_cfg,
                                        fwd_t[None], bwd_t[None])
            except ValueError as exc:
                raise UserError(f"{self._where(clip)}: {exc}") from None
        else:
            pos = compute_positives(box1, flip1, box2, flip2, (H, W), self.feature_size, self.pos_cfg)
        out.update(pos12=pos["pos12"][0], pos21=pos["pos21"][0], mask_ratio=float(pos["mask_ratio"][0]),
                   mask_ratio_fwd=float(pos["mask_ratio_fwd"][0]), mask_ratio_bwd=float(pos["mask_ratio_bwd"][0]))
        return out


def collate(samples: Sequence[dict]) -> Dict[str, object]:
    """Batch samples: tensors are stacked (``view*`` [B, 3, S, S], ``pos*`` [B, F·F, F·F], ``box*``
    [B, 4]); ``flip*`` → bool [B], ``mask_ratio{,_fwd,_bwd}`` → float32 [B], ``t``/``k`` → int64 [B];
    ``video`` → list of str; ``frame_hw`` → int64 [B, 2]. ``pos*``/``mask_ratio`` only when the
    samples have them (not with ``defer_positives``); ``frames`` → uint8 [B, k, H, W, 3] and
    ``fwd``/``bwd`` → float32 [B, k−1, 2, h8, w8] when they have them (``defer_positives``)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    out: Dict[str, object] = {}
    keys = ("view1", "view2", "pos12", "pos21", "box1", "box2") if "pos12" in samples[0] else ("view1", "view2", "box1", "box2")
    for extra in ("frames", "fwd", "bwd"):
        if extra in samples[0]:
            keys += (extra,)
    for key in keys:
        out[key] = torch.stack([s[key] for s in samples])
    out["flip1"] = torch.tensor([s["flip1"] for s in samples], dtype=torch.bool)
    out["flip2"] = torch.tensor([s["flip2"] for s in samples], dtype=torch.bool)
    for key in ("mask_ratio", "mask_ratio_fwd", "mask_ratio_bwd"):
        if key in samples[0]:
            out[key] = torch.tensor([s[key] for s in samples], dtype=torch.float32)
    out["frame_hw"] = torch.tensor([s["frame_hw"] for s in samples], dtype=torch.int64)
    out["t"] = torch.tensor([s["t"] for s in samples], dtype=torch.int64)
    out["k"] = torch.tensor([s["k"] for s in samples], dtype=torch.int64)
    out["video"] = [s["video"] for s in samples]
    return out


def batch_positives(batch: dict, fwd, bwd, cfg: SampleConfig, feature_size: int) -> Dict[str, torch.Tensor]:
    """Positives for a collated batch made with ``defer_positives=True``.

    ``fwd``/``bwd``: ``[B, k−1, 2, h, w]`` flows in time order (full resolution or 1/8 shard units,
    any device), or None for k = 1. All frames of the batch must share one size. Returns
    :func:`pixpro_of.positives.compute_positives`'s dict (``pos12``, ``pos21``, ``mask_ratio`` …)
    on the flows' device.
    """
    hw = batch["frame_hw"]
    if not bool((hw == hw[0]).all()):
        raise ValueError(f"batch_positives needs one frame size per batch, got {sorted(set(map(tuple, hw.tolist())))}")
    device = fwd.device if fwd is not None else batch["box1"].device
    frame_hw = (int(hw[0, 0]), int(hw[0, 1]))
    return compute_positives(batch["box1"].to(device, torch.float64), batch["flip1"].to(device),
                             batch["box2"].to(device, torch.float64), batch["flip2"].to(device),
                             frame_hw, feature_size, cfg.positive_config(), fwd, bwd)
