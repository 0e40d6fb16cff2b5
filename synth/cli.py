"""``python -m pixpro_of synth``: render the synthetic driving world to disk.

Example: ``python -m pixpro_of synth --out data/synth --videos 8 --frames 60 --size 640x360 --fps 10
--seed 0 --format all``. The layout is documented in :mod:`synth.writers`.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Sequence, Tuple

from plumbing.errors import UserError
from synth.writers import FORMATS, SynthConfig, write_dataset


def parse_size(text: str) -> Tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--size: expected WIDTHxHEIGHT such as 640x360, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixpro_of synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (created atomically; must not exist or be empty)")
    p.add_argument("--videos", type=int, default=8, help="number of videos (default 8)")
    p.add_argument("--frames", type=int, default=60, help="frames per video (default 60)")
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT, up to 1920x1080 (default 640x360; BDD is 1280x720)")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate (default 10, as the seed extracted BDD)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--format", choices=FORMATS, default="bdd",
                   help="bdd: videos + JPEG frames + GT flow; cityscapes: leftImg8bit + gtFine; all: both")
    p.add_argument("--val-videos", type=int, default=None, help="videos in val (default max(1, videos // 8))")
    p.add_argument("--no-videos", action="store_true", help="bdd: skip the .mov files")
    p.add_argument("--no-images", action="store_true", help="bdd: skip the JPEG frames")
    p.add_argument("--no-flow", action="store_true", help="bdd: skip the ground-truth flow and occlusion files")
    p.add_argument("--cityscapes-every", type=int, default=1, help="cityscapes: write every n-th frame (default 1)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--crf", type=int, default=18, help="libx264 quality, 0..51 (default 18)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="videos rendered in parallel processes (default: min(2, CPU cores))")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    cfg = SynthConfig(
        videos=args.videos, frames=args.frames, size=parse_size(args.size), fps=args.fps, seed=args.seed,
        format=args.format, val_videos=args.val_videos, write_videos=not args.no_videos,
        write_images=not args.no_images, write_flow=not args.no_flow, jpeg_quality=args.jpeg_quality,
        crf=args.crf, cityscapes_every=args.cityscapes_every, workers=args.workers, overwrite=args.force)
    try:
        cfg.validate()
    except UserError as exc:  # name the option: the config's field names match the flags
        msg = str(exc)
        field = msg.split(" ", 1)[0]
        raise UserError(f"--{field.replace('_', '-')}: {msg}") from None
    manifest = write_dataset(args.out, cfg, progress=not args.quiet)
    n_val = sum(v["split"] == "val" for v in manifest["videos"])
    print(f"wrote {len(manifest['videos'])} videos ({len(manifest['videos']) - n_val} train, {n_val} val) "
          f"x {cfg.frames} frames at {cfg.size[0]}x{cfg.size[1]} to {args.out}")
    return 0
