"""``python -m pixpro_of viz pairs``: a PNG of one sample's two views with lines between positive cells.

The picture users check first: top row, view 1 (frame t) and view 2 (frame t+k−1) as the network
sees them (de-normalised), with a line from each view-1 cell centre to every view-2 cell it is
positive with (``pos12``; colour = query cell); view-1 cells without any positive (masked by the
flow check, or with no partner in view 2) are crossed out. Bottom row: the two original frames with
the crop boxes (the box's flipped side is drawn thicker).

Sources: ``--shards FILE [FILE ...] --video I --t T`` (the HDF5 clip reader) or ``--synthetic SEED``
(a clip of the synthetic world with its exact flow stored at 1/8 resolution, as in shards).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import List, Optional, Sequence

import click
import numpy as np

from plumbing.atomic import atomic_open
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.parse import checked, parse_wxh


def _options(f):
    """The options of ``viz pairs``."""
    options = [
        click.option(
            "--shards",
            multiple=True,
            metavar="FILE",
            help="HDF5 shard files to read the clip from (--shards a.h5 b.h5 or --shards a.h5 --shards b.h5)",
        ),
        click.option(
            "--synthetic", type=int, default=None, metavar="SEED", help="render a synthetic-world clip with this seed"
        ),
        click.option("--video", type=int, default=0, show_default=True, help="video index in the shards"),
        click.option("--t", type=int, default=None, help="first frame of the clip (default: random)"),
        click.option(
            "--frames",
            "k",
            type=int,
            default=6,
            show_default=True,
            help="clip length k in frames; 1 = both views from one frame",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="augmentation seed"),
        click.option("--image-size", type=int, default=224, show_default=True, help="view side in pixels"),
        click.option(
            "--feature-size", type=int, default=None, help="cell grid side F (default: C5 size for --image-size)"
        ),
        click.option(
            "--mask",
            type=click.Choice(["seed", "unflow", "none"]),
            default="seed",
            show_default=True,
            help="occlusion mask",
        ),
        click.option(
            "--pos-ratio", type=float, default=0.7, show_default=True, help="positive threshold in bin diagonals"
        ),
        click.option("--size", default="640x360", show_default=True, help="synthetic frame size WIDTHxHEIGHT"),
        click.option("--out", required=True, help="PNG file to write"),
        click.argument("more_shards", nargs=-1, metavar="[FILE]..."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _synthetic_clip(seed: int, k: int, size: str, t: Optional[int], rng: np.random.Generator) -> dict:
    import torch

    from flow.ops import full_flow_to_shard
    from synth import render_video

    w, h = checked(parse_wxh, size, "--size")
    if w < 64 or h < 64:
        raise UserError(f"--size must be at least 64x64, got {size!r}")
    frames = max(k, 2) + 2
    video = render_video(seed, frames, size=(w, h))
    t = int(rng.integers(0, frames - k + 1)) if t is None else t
    if not 0 <= t <= frames - k:
        raise UserError(f"--t must be in 0..{frames - k} for a synthetic clip of {frames} frames, got {t}")
    fwd = full_flow_to_shard(torch.from_numpy(video.fwd[t : t + k - 1])).numpy()
    bwd = full_flow_to_shard(torch.from_numpy(video.bwd[t : t + k - 1])).numpy()
    return {
        "frame1": video.rgb[t],
        "frame2": video.rgb[t + k - 1],
        "fwd": fwd,
        "bwd": bwd,
        "video": f"synthetic-{seed}",
        "t": t,
        "k": k,
    }


def _shard_clip(paths: Sequence[str], video: int, k: int, t: Optional[int], rng: np.random.Generator) -> dict:
    from pixpro_of.data.shards import ShardClipDataset

    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"--shards: no such file: {path}")
    ds = ShardClipDataset(list(paths), k)
    if not 0 <= video < ds.num_videos:
        raise UserError(f"--video must be in 0..{ds.num_videos - 1}, got {video}")
    n = ds.num_frames(video)
    t = int(rng.integers(0, n - k + 1)) if t is None else t
    if not 0 <= t <= n - k:
        raise UserError(f"--t must be in 0..{n - k} for video {video} ({n} frames, k={k}), got {t}")
    return ds.get_clip(video, t)


def draw_pairs(sample: dict, clip: dict, feature_size: int):
    """The picture (a PIL image) of ``sample`` (from :class:`SampleBuilder`) and its ``clip``."""
    from PIL import Image, ImageDraw

    from pixpro_of.data.augment import denormalize_to_uint8
    from pixpro_of.data.pipeline import frame_tensor

    S = sample["view1"].shape[-1]
    F = feature_size
    scale = max(1, 448 // S)
    v1 = Image.fromarray(denormalize_to_uint8(sample["view1"]).permute(1, 2, 0).numpy()).resize(
        (S * scale, S * scale), Image.NEAREST
    )
    v2 = Image.fromarray(denormalize_to_uint8(sample["view2"]).permute(1, 2, 0).numpy()).resize(
        (S * scale, S * scale), Image.NEAREST
    )
    gap = 16
    top_w = 2 * S * scale + gap
    f1 = frame_tensor(clip["frame1"]).permute(1, 2, 0).numpy()
    f2 = frame_tensor(clip["frame2"]).permute(1, 2, 0).numpy()
    H, W = f1.shape[:2]
    fs = (top_w - gap) / 2 / W
    fw, fh = int(round(W * fs)), int(round(H * fs))
    canvas = Image.new("RGB", (top_w, S * scale + gap + fh + 24), (255, 255, 255))
    canvas.paste(v1, (0, 0))
    canvas.paste(v2, (S * scale + gap, 0))
    canvas.paste(Image.fromarray(f1).resize((fw, fh), Image.BILINEAR), (0, S * scale + gap))
    canvas.paste(Image.fromarray(f2).resize((fw, fh), Image.BILINEAR), (fw + gap, S * scale + gap))
    d = ImageDraw.Draw(canvas)

    def centre(i: int, x0: int):
        v, u = divmod(i, F)
        return x0 + (u + 0.5) * S * scale / F, (v + 0.5) * S * scale / F

    pos = sample["pos12"].numpy()
    rng = np.random.default_rng(0)
    colours = [tuple(int(c) for c in rng.integers(40, 256, 3)) for _ in range(F * F)]
    for i in range(F * F):
        a = centre(i, 0)
        js = np.nonzero(pos[i])[0]
        if len(js) == 0:
            r = 4
            d.line([(a[0] - r, a[1] - r), (a[0] + r, a[1] + r)], fill=(255, 0, 0), width=2)
            d.line([(a[0] - r, a[1] + r), (a[0] + r, a[1] - r)], fill=(255, 0, 0), width=2)
            continue
        d.ellipse([a[0] - 3, a[1] - 3, a[0] + 3, a[1] + 3], fill=colours[i])
        for j in js:
            b = centre(int(j), S * scale + gap)
            d.line([a, b], fill=colours[i], width=1)
    for box, flip, x0, colour in (
        (sample["box1"], sample["flip1"], 0, (0, 200, 255)),
        (sample["box2"], sample["flip2"], fw + gap, (255, 160, 0)),
    ):
        left, top, w, h = [float(x) * fs for x in box]
        y0 = S * scale + gap
        d.rectangle([x0 + left, y0 + top, x0 + left + w, y0 + top + h], outline=colour, width=2)
        edge = x0 + left + (w if flip else 0)  # the side that becomes the view's left edge
        d.line([(edge, y0 + top), (edge, y0 + top + h)], fill=colour, width=5)
    n = int(pos.sum())
    flips = "".join(f"  view{i} {'flipped' if sample[f'flip{i}'] else 'not flipped'}" for i in (1, 2))
    caption = (
        f"{sample['video']} t={sample['t']} k={sample['k']}{flips}  positives 1->2: {n}  "
        f"queries without positives: {int((pos.sum(1) == 0).sum())}/{F * F}  mask ratio {sample['mask_ratio']:.3f}"
    )
    d.text((4, S * scale + gap + fh + 6), caption, fill=(0, 0, 0))
    return canvas


@cli_command(
    "pairs",
    epilog="Examples: python -m pixpro_of viz pairs --synthetic 2 --frames 3 --out pairs.png; "
    "python -m pixpro_of viz pairs --shards shards/*.h5 --video 0 --t 0 --frames 6 --out pairs.png",
)
@_options
def command(more_shards, **opts) -> int:
    """A PNG of one sample's two views with lines between positive cells.

    The clip comes from HDF5 shards (--shards FILE..., --video, --t) or the synthetic world (--synthetic SEED).
    """
    args = SimpleNamespace(**opts)
    args.shards = list(args.shards) + list(more_shards)
    if bool(args.shards) == (args.synthetic is not None):
        raise UserError("give either --shards FILE... or --synthetic SEED")
    from pixpro_of.data.pipeline import SampleBuilder, SampleConfig
    from pixpro_of.model.encoder import c5_size

    if args.k < 1:
        raise UserError(f"--frames must be >= 1, got {args.k}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UserError(f"--out: directory does not exist: {out_dir}")
    if not args.out.lower().endswith(".png"):
        raise UserError(f"--out must end in .png, got {args.out}")
    rng = np.random.default_rng(args.seed)
    if args.synthetic is not None:
        clip = _synthetic_clip(args.synthetic, args.k, args.size, args.t, rng)
    else:
        clip = _shard_clip(args.shards, args.video, args.k, args.t, rng)
    F = args.feature_size or c5_size(args.image_size)
    builder = SampleBuilder(SampleConfig(image_size=args.image_size, mask=args.mask, pos_ratio=args.pos_ratio), F)
    sample = builder(clip, rng)
    image = draw_pairs(sample, clip, F)
    with atomic_open(args.out, "wb") as fh:
        image.save(fh, format="PNG")
    print(
        f"wrote {args.out}: {int(sample['pos12'].sum())} positive pairs view1->view2, "
        f"{int(sample['pos21'].sum())} view2->view1, mask ratio {sample['mask_ratio']:.3f}"
    )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return call(command, argv, "pixpro_of viz pairs")
