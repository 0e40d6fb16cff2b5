"""``python -m flow viz``: PNG pictures of flows, occlusion masks and composite flows.

    python -m flow viz SHARD --video NAME --t 10 --k 6 --out pics/      # from a shard's stored flows
    python -m flow viz --flo pair.flo [--frame img.jpg] --out pics/    # a Middlebury .flo file

From a shard it writes, for the clip (t, k) (frames t and t+k-1, the k-1 adjacent flows chained at
full resolution as the trainer does):

- ``frame_first.png``, ``frame_last.png``: frames t and t+k-1;
- ``flow_fwd.png``, ``flow_bwd.png``: composite flow t -> t+k-1 and back, colour-coded with
  ``torchvision.utils.flow_to_image`` (hue = direction, saturation = magnitude / max magnitude);
- ``mask_fwd_<mode>.png``, ``mask_bwd_<mode>.png``: FB-consistency masks (white = valid, black =
  occluded or leaving the frame) for ``--mask seed|unflow|both``;
- ``overlay_fwd.png``: the forward flow's colours blended over frame t, occluded pixels darkened;
- ``panel.png``: all of the above in one picture (two rows).
Every PNG is written under a temporary name and renamed into place.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from flow.errors import UserError


@dataclass
class VizConfig:
    """Options of ``flow viz``."""

    shard: Optional[str]
    video: Optional[str]
    t: int
    k: int
    out: str
    masks: List[str]
    flo: Optional[str] = None
    frame: Optional[str] = None


def flow_colors(flow: torch.Tensor) -> np.ndarray:
    """Colour-code a flow ``[2, H, W]`` (pixels) to uint8 ``[H, W, 3]`` (torchvision's colour wheel)."""
    from torchvision.utils import flow_to_image

    img = flow_to_image(flow.float().unsqueeze(0))[0]
    return img.permute(1, 2, 0).contiguous().numpy()


def mask_picture(mask: torch.Tensor) -> np.ndarray:
    """Bool ``[H, W]`` (True = valid) to a uint8 ``[H, W, 3]`` picture: white valid, black invalid."""
    m = mask.numpy().astype(np.uint8) * 255
    return np.repeat(m[:, :, None], 3, axis=2)


def overlay(frame: np.ndarray, colors: np.ndarray, mask: Optional[torch.Tensor] = None, alpha: float = 0.5) -> np.ndarray:
    """Blend flow colours over a frame (uint8 [H, W, 3]); pixels with ``mask`` False are darkened."""
    out = (1 - alpha) * frame.astype(np.float32) + alpha * colors.astype(np.float32)
    if mask is not None:
        out[~mask.numpy()] *= 0.25
    return out.round().clip(0, 255).astype(np.uint8)


def panel(images: List[np.ndarray], cols: int, pad: int = 4) -> np.ndarray:
    """Tile same-size uint8 [H, W, 3] pictures into a grid with ``cols`` columns (grey padding)."""
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), 96, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    return out


def save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    Image.fromarray(img).save(tmp)
    os.replace(tmp, path)


def clip_pictures(frames: np.ndarray, fwd8: np.ndarray, bwd8: np.ndarray, masks: List[str]) -> Dict[str, np.ndarray]:
    """Pictures of a clip: frames uint8 [2, H, W, 3] (first, last), flows [k-1, 2, h8, w8] in shard units."""
    from flow.ops import chain_backward, chain_flows, fb_consistency, shard_flow_to_full

    h, w = frames.shape[1:3]
    f = shard_flow_to_full(torch.from_numpy(fwd8), (h, w)).unsqueeze(0)  # [1, k-1, 2, H, W]
    b = shard_flow_to_full(torch.from_numpy(bwd8), (h, w)).unsqueeze(0)
    cf, cb = chain_flows(f), chain_backward(b)
    out = {"frame_first": frames[0], "frame_last": frames[1], "flow_fwd": flow_colors(cf[0]), "flow_bwd": flow_colors(cb[0])}
    first_mask = None
    for mode in masks:
        mf_, mb_ = fb_consistency(cf, cb, mode)[0], fb_consistency(cb, cf, mode)[0]
        out[f"mask_fwd_{mode}"] = mask_picture(mf_)
        out[f"mask_bwd_{mode}"] = mask_picture(mb_)
        first_mask = mf_ if first_mask is None else first_mask
    out["overlay_fwd"] = overlay(frames[0], out["flow_fwd"], first_mask)
    return out


def _decode(data: bytes, where: str) -> np.ndarray:
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except Exception as exc:
        raise UserError(f"{where}: cannot decode JPEG ({exc})") from None


def viz_shard(cfg: VizConfig) -> Dict[str, np.ndarray]:
    from hdf5_tools import schema

    if cfg.video is None:
        raise UserError("--video is required with a shard")
    if cfg.k < 2:
        raise UserError(f"--k should be >= 2 (a clip with flow), got {cfg.k}")
    with schema.open_shard(cfg.shard, "r") as h5:
        info = schema.video_info(h5, cfg.video)
        last = cfg.t + cfg.k - 1
        if cfg.t < 0 or last >= info.num_frames:
            raise UserError(f"{os.path.basename(cfg.shard)}: video {cfg.video!r} has {info.num_frames} frames; "
                            f"--t {cfg.t} --k {cfg.k} needs frames {cfg.t}..{last}")
        frames = np.stack([_decode(schema.read_frame_jpeg(h5, cfg.video, i), f"{cfg.shard}: video {cfg.video!r} frame {i}")
                           for i in (cfg.t, last)])
        if frames.shape[1:3] != (info.height, info.width):
            raise UserError(f"{os.path.basename(cfg.shard)}: video {cfg.video!r} frames are {frames.shape[2]}x{frames.shape[1]}, "
                            f"the video's table says {info.width}x{info.height}")
        fwd, bwd = schema.read_flows(h5, cfg.video, cfg.t, cfg.k - 1)
    return clip_pictures(frames, fwd, bwd, cfg.masks)


def viz_flo(cfg: VizConfig) -> Dict[str, np.ndarray]:
    from flow.io import read_flo

    flow = torch.from_numpy(read_flo(cfg.flo))
    out = {"flow": flow_colors(flow)}
    if cfg.frame:
        from PIL import Image

        try:
            frame = np.asarray(Image.open(cfg.frame).convert("RGB"))
        except OSError as exc:
            raise UserError(f"{cfg.frame}: cannot read image ({exc})") from None
        if frame.shape[:2] != tuple(flow.shape[1:]):
            raise UserError(f"{cfg.frame}: image is {frame.shape[1]}x{frame.shape[0]}, the flow is "
                            f"{flow.shape[2]}x{flow.shape[1]}")
        out["overlay"] = overlay(frame, out["flow"])
    return out


def run(cfg: VizConfig) -> List[Path]:
    if (cfg.shard is None) == (cfg.flo is None):
        raise UserError("give either a SHARD (with --video) or --flo FILE")
    pics = viz_shard(cfg) if cfg.shard is not None else viz_flo(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img in pics.items():
        save_png(out / f"{name}.png", img)
        written.append(out / f"{name}.png")
    if cfg.shard is not None:
        save_png(out / "panel.png", panel(list(pics.values()), cols=(len(pics) + 1) // 2))
        written.append(out / "panel.png")
    return written


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m flow viz", description="PNG pictures of flows, occlusion masks and "
                                                                        "composite flows over k frames.")
    p.add_argument("shard", nargs="?", help="a shard with flows (see 'python -m flow compute')")
    p.add_argument("--video", help="video name in the shard")
    p.add_argument("--t", type=int, default=0, help="first frame of the clip (0-based, default 0)")
    p.add_argument("--k", type=int, default=2, help="clip length in frames: flow t -> t+k-1 (default 2)")
    p.add_argument("--mask", choices=["seed", "unflow", "both"], default="both", help="FB mask mode(s) to draw")
    p.add_argument("--flo", help="draw a Middlebury .flo file instead of a shard clip")
    p.add_argument("--frame", help="with --flo: an image to overlay the flow on")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    a = p.parse_args(argv)
    masks = ["seed", "unflow"] if a.mask == "both" else [a.mask]
    written = run(VizConfig(shard=a.shard, video=a.video, t=a.t, k=a.k, out=a.out, masks=masks, flo=a.flo, frame=a.frame))
    for w in written:
        print(w)
    return 0
