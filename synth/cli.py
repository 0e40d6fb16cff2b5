"""``python -m synth`` (also ``python -m pixpro_of synth``): render the synthetic driving world to disk.

Example: ``python -m synth --out data/synth --videos 8 --video-frames 60 --size 640x360 --fps 10
--seed 0 --format all``. The layout is documented in :mod:`synth.writers`.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import click

from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.parse import checked, parse_wxh
from synth.writers import FORMATS, SynthConfig, write_dataset

#: Option names of the SynthConfig fields whose name differs from the option's.
OPTION_OF_FIELD = {
    "frames": "--video-frames",
    "write_videos": "--no-videos",
    "write_images": "--no-images",
    "write_flow": "--no-flow",
    "overwrite": "--force",
}


@cli_command(
    "synth",
    epilog="Example: python -m synth --out data/synth --videos 8 --video-frames 60 --size 640x360 "
    "--fps 10 --seed 0 --format all",
)
@click.option("--out", required=True, help="output directory (created atomically; must not exist or be empty)")
@click.option("--videos", type=int, default=8, show_default=True, help="number of videos")
@click.option("--video-frames", type=int, default=60, show_default=True, help="frames per video")
@click.option("--size", default="640x360", show_default=True, help="WIDTHxHEIGHT, up to 1920x1080 (BDD is 1280x720)")
@click.option("--fps", type=float, default=10.0, show_default=True, help="frame rate (as the seed extracted BDD)")
@click.option("--seed", type=int, default=0, show_default=True, help="dataset seed")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="bdd",
    show_default=True,
    help="bdd: videos + JPEG frames + GT flow; cityscapes: leftImg8bit + gtFine; all: both",
)
@click.option("--val-videos", type=int, default=None, help="videos in val (default max(1, videos // 8))")
@click.option("--no-videos", is_flag=True, help="bdd: skip the .mov files")
@click.option("--no-images", is_flag=True, help="bdd: skip the JPEG frames")
@click.option("--no-flow", is_flag=True, help="bdd: skip the ground-truth flow and occlusion files")
@click.option("--cityscapes-every", type=int, default=1, show_default=True, help="cityscapes: write every n-th frame")
@click.option("--jpeg-quality", type=int, default=95, show_default=True)
@click.option("--crf", type=int, default=18, show_default=True, help="libx264 quality, 0..51")
@click.option(
    "--workers",
    type=int,
    default=min(2, os.cpu_count() or 1),
    show_default=True,
    help="videos rendered in parallel processes (min(2, CPU cores))",
)
@click.option("--force", is_flag=True, help="replace a non-empty --out")
@click.option("--quiet", is_flag=True, help="no progress bar")
def command(
    out,
    videos,
    video_frames,
    size,
    fps,
    seed,
    fmt,
    val_videos,
    no_videos,
    no_images,
    no_flow,
    cityscapes_every,
    jpeg_quality,
    crf,
    workers,
    force,
    quiet,
) -> int:
    """Render the synthetic driving world: videos, JPEG frames, GT flow, a Cityscapes-layout tree."""
    cfg = SynthConfig(
        videos=videos,
        frames=video_frames,
        size=checked(parse_wxh, size, "--size"),
        fps=fps,
        seed=seed,
        format=fmt,
        val_videos=val_videos,
        write_videos=not no_videos,
        write_images=not no_images,
        write_flow=not no_flow,
        jpeg_quality=jpeg_quality,
        crf=crf,
        cityscapes_every=cityscapes_every,
        workers=workers,
        overwrite=force,
    )
    try:
        cfg.validate()
    except UserError as exc:  # name the option: the config's field names match the flags
        msg = str(exc)
        field = msg.split(" ", 1)[0]
        raise UserError(f"{OPTION_OF_FIELD.get(field, '--' + field.replace('_', '-'))}: {msg}") from None
    manifest = write_dataset(out, cfg, progress=not quiet)
    n_val = sum(v["split"] == "val" for v in manifest["videos"])
    print(
        f"wrote {len(manifest['videos'])} videos ({len(manifest['videos']) - n_val} train, {n_val} val) "
        f"x {cfg.frames} frames at {cfg.size[0]}x{cfg.size[1]} to {out}"
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "python -m synth")
