"""``hdf5_tools viz``: pictures of a shard clip's stored flows, chained over k frames, and FB masks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import click
import numpy as np

from flow.viz import clip_pictures, panel, save_pictures, save_png
from hdf5_tools import schema
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


@dataclass
class ShardVizConfig:
    """Options of ``hdf5_tools viz``."""

    shard: str
    video: str
    t: int
    k: int
    out: str
    masks: List[str]


def _decode(data: bytes, where: str) -> np.ndarray:
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except Exception as exc:
        raise UserError(f"{where}: cannot decode JPEG ({exc})") from None


def clip_from_shard(cfg: ShardVizConfig) -> Dict[str, np.ndarray]:
    """Pictures of the clip (t, k) of ``cfg.video`` in ``cfg.shard``: frames t and t+k-1, its flows chained."""
    if cfg.k < 2:
        raise UserError(f"--frames should be >= 2 (a clip with flow), got {cfg.k}")
    with schema.open_shard(cfg.shard, "r") as h5:
        info = schema.video_info(h5, cfg.video)
        last = cfg.t + cfg.k - 1
        if cfg.t < 0 or last >= info.num_frames:
            raise UserError(
                f"{os.path.basename(cfg.shard)}: video {cfg.video!r} has {info.num_frames} frames; "
                f"--t {cfg.t} --frames {cfg.k} needs frames {cfg.t}..{last}"
            )
        frames = np.stack(
            [
                _decode(schema.read_frame_jpeg(h5, cfg.video, i), f"{cfg.shard}: video {cfg.video!r} frame {i}")
                for i in (cfg.t, last)
            ]
        )
        if frames.shape[1:3] != (info.height, info.width):
            raise UserError(
                f"{os.path.basename(cfg.shard)}: video {cfg.video!r} frames are {frames.shape[2]}x{frames.shape[1]}, "
                f"the video's table says {info.width}x{info.height}"
            )
        fwd, bwd = schema.read_flows(h5, cfg.video, cfg.t, cfg.k - 1)
    return clip_pictures(frames, fwd, bwd, cfg.masks)


def run(cfg: ShardVizConfig) -> List[Path]:
    pics = clip_from_shard(cfg)
    written = save_pictures(pics, cfg.out)
    out = Path(cfg.out)
    save_png(out / "panel.png", panel(list(pics.values()), cols=(len(pics) + 1) // 2))
    written.append(out / "panel.png")
    return written


@cli_command(
    "viz", epilog="Example: hdf5_tools viz shards/shard-n000-00000.h5 --video synth-00000 --t 10 --frames 6 --out pics/"
)
@click.argument("shard")
@click.option("--video", required=True, help="video name in the shard")
@click.option("--t", type=int, default=0, show_default=True, help="first frame of the clip (0-based)")
@click.option("--frames", "k", type=int, default=2, show_default=True, help="clip length k in frames: flow t -> t+k-1")
@click.option(
    "--mask",
    type=click.Choice(["seed", "unflow", "both"]),
    default="both",
    show_default=True,
    help="FB mask mode(s) to draw",
)
@click.option("--out", required=True, help="output folder for the PNGs")
def command(shard, video, t, k, mask, out) -> int:
    """PNG pictures of a shard clip's flows, chained over k frames, and its FB-consistency masks.

    SHARD is a shard with flows (see 'hdf5_tools flow'). Writes into the --out folder, printing each path:
    frame_first.png and frame_last.png (frames t and t+k-1), flow_fwd.png and flow_bwd.png (the
    chained flows: hue = direction, saturation = speed), mask_fwd_MODE.png and mask_bwd_MODE.png
    for each --mask mode (white = consistent, black = occluded or leaving the frame), overlay_fwd.png
    (the forward flow over the first frame, masked by the first mode's mask) and panel.png (all of
    them in one picture).
    """
    masks = ["seed", "unflow"] if mask == "both" else [mask]
    for w in run(ShardVizConfig(shard=shard, video=video, t=t, k=k, out=out, masks=masks)):
        print(w)
    return 0


def main(argv=None) -> int:
    return call(command, argv, "hdf5_tools viz")
