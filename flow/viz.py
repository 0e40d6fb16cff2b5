"""Flow pictures: colour-coded flows, validity masks, overlays, panels; ``python -m flow viz``.

    python -m flow viz --flo pair.flo [--frame img.jpg] --out pics/    # a Middlebury .flo file

The drawing functions take arrays (flows ``[2, H, W]`` in pixels, masks ``[H, W]`` True = valid,
frames uint8 ``[H, W, 3]``); :func:`clip_pictures` draws a clip's composite flows and FB masks
(``hdf5_tools viz`` reads a clip from a shard and calls it). Every PNG is written under a
temporary name and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import click
import numpy as np
import torch

from plumbing.atomic import atomic_open
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


@dataclass
class VizConfig:
    """Options of ``python -m flow viz``."""

    flo: Optional[str]
    out: str
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


def overlay(
    frame: np.ndarray, colors: np.ndarray, mask: Optional[torch.Tensor] = None, alpha: float = 0.5
) -> np.ndarray:
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
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return out


def save_png(path: Path, img: np.ndarray) -> None:
    """Write a uint8 picture as a PNG, atomically."""
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(img).save(f, format="PNG")


def save_pictures(pics: Dict[str, np.ndarray], out) -> List[Path]:
    """Write each picture as ``OUT/NAME.png`` (atomically); returns the paths in order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img in pics.items():
        save_png(out / f"{name}.png", img)
        written.append(out / f"{name}.png")
    return written


def clip_pictures(frames: np.ndarray, fwd8: np.ndarray, bwd8: np.ndarray, masks: List[str]) -> Dict[str, np.ndarray]:
    """Pictures of a clip: frames uint8 [2, H, W, 3] (first, last), flows [k-1, 2, h8, w8] in shard units."""
    from flow.ops import chain_backward, chain_flows, fb_consistency, shard_flow_to_full

    h, w = frames.shape[1:3]
    f = shard_flow_to_full(torch.from_numpy(fwd8), (h, w)).unsqueeze(0)  # [1, k-1, 2, H, W]
    b = shard_flow_to_full(torch.from_numpy(bwd8), (h, w)).unsqueeze(0)
    cf, cb = chain_flows(f), chain_backward(b)
    out = {
        "frame_first": frames[0],
        "frame_last": frames[1],
        "flow_fwd": flow_colors(cf[0]),
        "flow_bwd": flow_colors(cb[0]),
    }
    first_mask = None
    for mode in masks:
        mf_, mb_ = fb_consistency(cf, cb, mode)[0], fb_consistency(cb, cf, mode)[0]
        out[f"mask_fwd_{mode}"] = mask_picture(mf_)
        out[f"mask_bwd_{mode}"] = mask_picture(mb_)
        first_mask = mf_ if first_mask is None else first_mask
    out["overlay_fwd"] = overlay(frames[0], out["flow_fwd"], first_mask)
    return out


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
            raise UserError(
                f"{cfg.frame}: image is {frame.shape[1]}x{frame.shape[0]}, the flow is {flow.shape[2]}x{flow.shape[1]}"
            )
        out["overlay"] = overlay(frame, out["flow"])
    return out


def run(cfg: VizConfig) -> List[Path]:
    if cfg.flo is None:
        raise UserError("--flo FILE is required (pictures of a shard clip: 'hdf5_tools viz SHARD --video NAME')")
    return save_pictures(viz_flo(cfg), cfg.out)


@cli_command("viz", epilog="Example: python -m flow viz --flo pair.flo --frame frame.png --out pics/")
@click.option("--flo", required=True, help="the .flo file to draw")
@click.option("--frame", default=None, help="an image to overlay the flow on")
@click.option("--out", required=True, help="output folder for the PNGs")
def command(flo, frame, out) -> int:
    """PNG pictures of a Middlebury .flo file (a shard clip's flows and masks: 'hdf5_tools viz')."""
    for w in run(VizConfig(flo=flo, out=out, frame=frame)):
        print(w)
    return 0


def main(argv=None) -> int:
    return call(command, argv, "python -m flow viz")
