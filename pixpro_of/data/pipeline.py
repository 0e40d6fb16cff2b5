"""From a clip to a training sample and a typed batch: two augmented views and their positive pairs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from pixpro_of.config import PositiveConfig, SampleConfig  # noqa: F401 - SampleConfig re-exported
from pixpro_of.data.augment import BYOL_VIEW1, BYOL_VIEW2, apply_view, draw_view_params, to_normalized_float
from pixpro_of.data.device_views import pack_view_params
from pixpro_of.positives import compute_positives
from plumbing.errors import UserError

CARRY = ("positives", "flows", "frames")  # what a sample carries for its positives (see the module docstring)
VIEWS = ("worker", "device")  # where the views are built (data.decode_on; see the module docstring)


def frame_tensor(
    frame: Union[np.ndarray, bytes, torch.Tensor], device: Union[str, torch.device] = "cpu"
) -> torch.Tensor:
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
    raise ValueError(
        f"frame should be a uint8 [H, W, 3] array, a uint8 [3, H, W] tensor or JPEG bytes, got {type(frame).__name__}"
    )


def jpeg_of(frame) -> bytes:
    """A frame given as JPEG bytes, as bytes (``data.decode_on=device`` needs the reader's bytes)."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame)
    raise ValueError(
        f"views built on the device need JPEG bytes from the reader (data.decode_on=device), got {type(frame).__name__}"
    )


def jpeg_size(data: bytes) -> tuple:
    """(H, W) of JPEG bytes from their header (nothing decoded)."""
    import simplejpeg

    try:
        h, w = simplejpeg.decode_jpeg_header(data)[:2]
    except Exception as exc:  # noqa: BLE001 - simplejpeg raises ValueError/RuntimeError on damage
        raise ValueError(
            f"cannot read the JPEG header ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        ) from None
    return int(h), int(w)


class SampleBuilder:
    """Callable clip → sample (see the module docstring); ``feature_size`` is F (7 at 224)."""

    def __init__(self, cfg: SampleConfig, feature_size: int = 7, carry: str = "positives", views: str = "worker"):
        cfg.validate()
        if int(feature_size) < 1:
            raise UserError(f"feature_size must be >= 1, got {feature_size}")
        if carry not in CARRY:
            raise ValueError(f"carry should be one of {CARRY}, got {carry!r}")
        if views not in VIEWS:
            raise ValueError(f"views should be one of {VIEWS}, got {views!r}")
        if views == "device" and carry == "frames":
            raise ValueError("views built on the device need the stored flows (carry 'positives' or 'flows')")
        # data.flow_source=none: positives of zero flow and no mask (the crop geometry alone)
        self.no_flow = getattr(cfg, "flow_source", "shards") == "none"
        if self.no_flow and carry != "positives":
            raise ValueError("data.flow_source=none computes the positives in the workers (carry 'positives')")
        self.cfg = cfg
        self.feature_size = int(feature_size)
        self.carry = carry
        self.views = views

    def _where(self, clip: dict) -> str:
        return f"clip (video {clip.get('video', '?')!r}, t={clip.get('t', '?')}, k={clip.get('k', '?')})"

    def __call__(self, clip: dict, rng: np.random.Generator) -> Dict[str, object]:
        try:
            if self.views == "device":
                f1, f2 = jpeg_of(clip["frame1"]), jpeg_of(clip["frame2"])
                s1, s2 = (3,) + jpeg_size(f1), (3,) + jpeg_size(f2)
            else:
                f1, f2 = frame_tensor(clip["frame1"]), frame_tensor(clip["frame2"])
                s1, s2 = tuple(f1.shape), tuple(f2.shape)
        except (KeyError, ValueError) as exc:
            raise UserError(f"{self._where(clip)}: bad frame: {exc}") from None
        if s1 != s2:
            raise UserError(f"{self._where(clip)}: frame1 {s1} and frame2 {s2} differ in size")
        H, W = int(s1[1]), int(s1[2])
        fwd = clip.get("fwd")
        bwd = clip.get("bwd")
        k = int(clip.get("k", 1))
        n = 0 if fwd is None else int(np.shape(fwd)[0])
        if (
            k > 1
            and self.carry != "frames"
            and not self.no_flow
            and (fwd is None or bwd is None or n != k - 1 or np.shape(bwd) != np.shape(fwd))
        ):
            raise UserError(
                f"{self._where(clip)}: needs fwd and bwd of shape [{k - 1}, 2, h8, w8], "
                f"got {None if fwd is None else tuple(np.shape(fwd))} and "
                f"{None if bwd is None else tuple(np.shape(bwd))}"
            )
        S = int(self.cfg.image_size)
        p1 = draw_view_params(rng, (H, W), BYOL_VIEW1, self.cfg.crop_scale, self.cfg.crop_ratio)
        p2 = draw_view_params(rng, (H, W), BYOL_VIEW2, self.cfg.crop_scale, self.cfg.crop_ratio)
        if self.views == "device":  # the device decodes and builds the views (device_views)
            pixels: Dict[str, object] = {
                "jpeg1": f1,
                "jpeg2": f2,
                "params1": pack_view_params(p1),
                "params2": pack_view_params(p2),
            }
        else:
            pixels = {
                "view1": to_normalized_float(apply_view(f1, p1, S)),
                "view2": to_normalized_float(apply_view(f2, p2, S)),
            }
        box1 = torch.tensor([p1.box], dtype=torch.float64)
        box2 = torch.tensor([p2.box], dtype=torch.float64)
        flip1 = torch.tensor([p1.flip])
        flip2 = torch.tensor([p2.flip])
        out = {
            **pixels,
            "box1": box1[0].float(),
            "box2": box2[0].float(),
            "flip1": bool(p1.flip),
            "flip2": bool(p2.flip),
            "video": clip.get("video", ""),
            "t": int(clip.get("t", 0)),
            "k": k,
            "frame_hw": (H, W),
        }
        if self.carry == "frames":
            frames = clip.get("frames")
            if frames is None or np.shape(frames)[0] != k:
                raise UserError(
                    f"{self._where(clip)}: needs every frame of the clip (frames [{k}, H, W, 3]) for flow "
                    f"on the fly, got {None if frames is None else tuple(np.shape(frames))}"
                )
            out["frames"] = torch.from_numpy(np.ascontiguousarray(frames))
            return out
        if k > 1 and not self.no_flow:
            fwd_t = torch.as_tensor(np.asarray(fwd, dtype=np.float32))
            bwd_t = torch.as_tensor(np.asarray(bwd, dtype=np.float32))
            if self.carry == "flows":
                out["fwd"], out["bwd"] = fwd_t, bwd_t
                return out
            try:
                pos = compute_positives(
                    box1, flip1, box2, flip2, (H, W), self.feature_size, self.cfg, fwd_t[None], bwd_t[None]
                )
            except ValueError as exc:
                raise UserError(f"{self._where(clip)}: {exc}") from None
        elif self.carry == "flows":
            return out  # k = 1: no flow, the device computes the same-frame positives
        else:
            pos = compute_positives(box1, flip1, box2, flip2, (H, W), self.feature_size, self.cfg)
        out.update(
            pos12=pos["pos12"][0],
            pos21=pos["pos21"][0],
            mask_ratio=float(pos["mask_ratio"][0]),
            mask_ratio_fwd=float(pos["mask_ratio_fwd"][0]),
            mask_ratio_bwd=float(pos["mask_ratio_bwd"][0]),
        )
        return out


@dataclass
class Batch:
    """A collated batch (:func:`collate`); the trainer's only view of the data.

    ``view1``, ``view2`` float32 [B, 3, S, S]; ``pos12``, ``pos21`` bool [B, F·F, F·F] and
    ``mask_ratio{,_fwd,_bwd}`` float32 [B] once the positives are known (from the workers, or
    filled in on the device by the positives strategy, :mod:`pixpro_of.data.strategy`);
    ``box1``, ``box2`` [B, 4], ``flip1``, ``flip2`` bool [B], ``frame_hw`` int64 [B, 2], ``t``,
    ``k`` int64 [B], ``video`` list of str; what the device needs for the positives: ``fwd``,
    ``bwd`` float32 [B, k−1, 2, h8, w8] (stored flows) or ``frames`` uint8 [B, k, H, W, 3].
    With the views built on the device (``data.decode_on=device``) the views are None until the
    views stage (:class:`pixpro_of.data.strategy.ViewsOnDevice`) fills them from ``jpeg_bytes``
    (uint8 [N], every JPEG of the batch; stays in host memory, the decoder reads it there),
    ``jpeg_spans`` (int64 [B, 2, 2], (start, length) of the view-1 / view-2 frame) and
    ``params1``/``params2`` (float64 [B, P], the packed view draws,
    :data:`pixpro_of.data.device_views.PARAM_COLUMNS`).
    Fields a source does not give (e.g. a test double's) stay None.
    """

    view1: Optional[torch.Tensor] = None
    view2: Optional[torch.Tensor] = None
    pos12: Optional[torch.Tensor] = None
    pos21: Optional[torch.Tensor] = None
    mask_ratio: Optional[torch.Tensor] = None
    mask_ratio_fwd: Optional[torch.Tensor] = None
    mask_ratio_bwd: Optional[torch.Tensor] = None
    box1: Optional[torch.Tensor] = None
    box2: Optional[torch.Tensor] = None
    flip1: Optional[torch.Tensor] = None
    flip2: Optional[torch.Tensor] = None
    frame_hw: Optional[torch.Tensor] = None
    t: Optional[torch.Tensor] = None
    k: Optional[torch.Tensor] = None
    video: List[str] = field(default_factory=list)
    fwd: Optional[torch.Tensor] = None
    bwd: Optional[torch.Tensor] = None
    frames: Optional[torch.Tensor] = None
    jpeg_bytes: Optional[torch.Tensor] = None
    jpeg_spans: Optional[torch.Tensor] = None
    params1: Optional[torch.Tensor] = None
    params2: Optional[torch.Tensor] = None

    HOST_FIELDS = ("jpeg_bytes", "jpeg_spans")  # read on the host (the decoder's input): never moved

    def to(self, device: Union[str, torch.device], channels_last: bool = False) -> "Batch":
        """The batch with every tensor on ``device`` (views channels-last if asked), except the
        :attr:`HOST_FIELDS`."""
        moved: Dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if torch.is_tensor(v) and f.name not in self.HOST_FIELDS:
                v = v.to(device, non_blocking=True)
                if channels_last and f.name in ("view1", "view2") and v.ndim == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            moved[f.name] = v
        return Batch(**moved)

    def pin_memory(self) -> "Batch":
        """The batch with its tensors in page-locked memory (the DataLoader calls this with
        ``pin_memory=True``, so the copies to the GPU can be asynchronous)."""
        return Batch(
            **{
                f.name: (v.pin_memory() if torch.is_tensor(v) else v)
                for f in fields(self)
                for v in (getattr(self, f.name),)
            }
        )

    def with_positives(self, pos: Dict[str, torch.Tensor]) -> "Batch":
        """The batch with ``pos12``, ``pos21`` and ``mask_ratio{,_fwd,_bwd}`` from
        :func:`pixpro_of.positives.compute_positives`'s dict (mask ratios as float32)."""
        return replace(
            self,
            pos12=pos["pos12"],
            pos21=pos["pos21"],
            mask_ratio=pos["mask_ratio"].float(),
            mask_ratio_fwd=pos["mask_ratio_fwd"].float(),
            mask_ratio_bwd=pos["mask_ratio_bwd"].float(),
        )


def collate(samples: Sequence[dict]) -> Batch:
    """Batch samples into a :class:`Batch`: tensors are stacked (``view*`` [B, 3, S, S], ``pos*``
    [B, F·F, F·F], ``box*`` [B, 4], ``fwd``/``bwd``, ``frames``, ``params*``); JPEG bytes
    (``jpeg1``/``jpeg2``) are joined into ``jpeg_bytes`` with ``jpeg_spans``; ``flip*`` → bool [B],
    ``mask_ratio{,_fwd,_bwd}`` → float32 [B], ``t``/``k`` → int64 [B]; ``video`` → list of str;
    ``frame_hw`` → int64 [B, 2]. What the samples carry decides which fields are set."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    first = samples[0]
    out: Dict[str, Any] = {}
    for key in ("view1", "view2", "pos12", "pos21", "box1", "box2", "frames", "fwd", "bwd", "params1", "params2"):
        if key in first:
            out[key] = torch.stack([s[key] for s in samples])
    if "jpeg1" in first:  # one host buffer for the batch's JPEGs: one shared-memory tensor, not 2·B
        blobs = [s[key] for s in samples for key in ("jpeg1", "jpeg2")]
        lengths = torch.tensor([len(b) for b in blobs], dtype=torch.int64)
        starts = torch.cumsum(lengths, 0) - lengths
        out["jpeg_bytes"] = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
        out["jpeg_spans"] = torch.stack([starts, lengths], 1).view(len(samples), 2, 2)
    out["flip1"] = torch.tensor([s["flip1"] for s in samples], dtype=torch.bool)
    out["flip2"] = torch.tensor([s["flip2"] for s in samples], dtype=torch.bool)
    for key in ("mask_ratio", "mask_ratio_fwd", "mask_ratio_bwd"):
        if key in first:
            out[key] = torch.tensor([s[key] for s in samples], dtype=torch.float32)
    out["frame_hw"] = torch.tensor([s["frame_hw"] for s in samples], dtype=torch.int64)
    out["t"] = torch.tensor([s["t"] for s in samples], dtype=torch.int64)
    out["k"] = torch.tensor([s["k"] for s in samples], dtype=torch.int64)
    out["video"] = [s["video"] for s in samples]
    return Batch(**out)


def batch_positives(
    batch: Batch, fwd: Optional[torch.Tensor], bwd: Optional[torch.Tensor], cfg: PositiveConfig, feature_size: int
) -> Dict[str, torch.Tensor]:
    """Positives of a collated batch whose samples did not compute them.

    ``fwd``/``bwd``: ``[B, k−1, 2, h, w]`` flows in time order (full resolution or 1/8 shard units,
    any device), or None for k = 1. All frames of the batch must share one size. Returns
    :func:`pixpro_of.positives.compute_positives`'s dict (``pos12``, ``pos21``, ``mask_ratio`` …)
    on the flows' device.
    """
    if batch.box1 is None or batch.frame_hw is None:
        raise ValueError("batch_positives needs the batch's crop boxes, flips and frame sizes")
    hw = batch.frame_hw
    if not bool((hw == hw[0]).all()):
        raise ValueError(f"batch_positives needs one frame size per batch, got {sorted(set(map(tuple, hw.tolist())))}")
    device = fwd.device if fwd is not None else batch.box1.device
    frame_hw = (int(hw[0, 0]), int(hw[0, 1]))
    return compute_positives(
        batch.box1.to(device, torch.float64),
        batch.flip1.to(device),
        batch.box2.to(device, torch.float64),
        batch.flip2.to(device),
        frame_hw,
        feature_size,
        cfg,
        fwd,
        bwd,
    )
