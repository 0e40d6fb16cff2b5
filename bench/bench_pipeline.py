"""Sample pipeline throughput (k = 6, two 224 views, positives) vs the decode-only floor.

One worker's view (one process, one thread, as in a DataLoader worker): a clip is two 1280x720
JPEG frames (the synthetic world rendered at 720p, encoded at quality 95) plus 5 forward and 5
backward flows at 1/8 resolution (90x160, the world's exact flow area-averaged into shard units).

- floor:    decoding the two JPEGs (simplejpeg, as the shard reader);
- pipeline: decoding + ``SampleBuilder`` (crops, flips, colour jitter, grayscale, blur, solarize,
            normalisation, flow chaining over 5 steps, FB masks, positives) = one training sample;
- deferred: the same with ``SampleBuilder(carry="flows")`` (the worker leaves the positives to the
            batch, computed later on the training device), measured in the same run;
- parts:    the augmentation alone and the positives alone (for the breakdown), each timed right
            after decoding the two frames (untimed), so that the caches are as cold as inside the
            pipeline; what the parts do not explain (draws, small tensors, Python) is printed too;
- baseline: the same pipeline and parts with ``pixpro_of/data/augment.py``, ``pipeline.py`` and
            ``positives.py`` as they were at git revision ``--baseline`` (default: the commit before
            the issue-6 speed-up), loaded from ``git show`` — so before/after come from one run.

Methods are interleaved over rounds; the median of each is reported, as wall-clock rate and as
thread CPU time (``time.thread_time``, steadier on a shared, loaded machine), with the ratios
from this one run (goal: pipeline / floor >= 0.8).

    .venv/bin/python bench/bench_pipeline.py                   # ~40 s
    .venv/bin/python bench/bench_pipeline.py --samples 200 --rounds 7 --no-baseline
    .venv/bin/python bench/bench_pipeline.py --defer-positives       # worker without positives (GPU later)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

# The last revision before the CPU fast paths (crop-first LUT colour ops, sparse flow chaining).
BASELINE_REV = "016264747aa699828a965176d765945493e56d10"
_ROOT = Path(__file__).resolve().parents[1]


def load_baseline(rev: str):
    """``(augment, positives, pipeline)`` modules as they were at git revision ``rev``."""
    mods = {}
    for name, path in (
        ("augment", "pixpro_of/data/augment.py"),
        ("positives", "pixpro_of/positives.py"),
        ("pipeline", "pixpro_of/data/pipeline.py"),
    ):
        src = subprocess.run(
            ["git", "-C", str(_ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
        ).stdout
        src = src.replace("from pixpro_of.data.augment import", "from _baseline_augment import")
        src = src.replace("from pixpro_of.positives import", "from _baseline_positives import")
        mod = types.ModuleType(f"_baseline_{name}")
        sys.modules[mod.__name__] = mod  # dataclasses look their module up
        exec(compile(src, f"{rev[:10]}:{path}", "exec"), mod.__dict__)
        mods[name] = mod
    return mods["augment"], mods["positives"], mods["pipeline"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40, help="samples per method per round (default 40)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--frames", dest="k", type=int, default=6, help="clip length k (default 6)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--flow-resolution", default="coarse", choices=["coarse", "full"])
    ap.add_argument(
        "--defer-positives",
        action="store_true",
        help="SampleBuilder carry='flows': the worker skips positives (computed per batch later, e.g. on GPU)",
    )
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality of the test frames (default 95)")
    ap.add_argument(
        "--baseline", default=BASELINE_REV, help="git revision of the 'before' code (default: %(default).10s)"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the before/after comparison")
    args = ap.parse_args(argv)

    import cv2
    import simplejpeg
    import torch

    from flow.ops import full_flow_to_shard
    from pixpro_of.data.augment import BYOL_VIEW1, BYOL_VIEW2, apply_view, draw_view_params, to_normalized_float
    from pixpro_of.data.pipeline import SampleBuilder, SampleConfig, frame_tensor
    from pixpro_of.model.encoder import c5_size
    from pixpro_of.positives import compute_positives
    from synth import render_video

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    video = render_video(11, 2, size=(1280, 720))
    jpegs = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=args.quality, colorspace="RGB") for f in video.rgb]
    f8 = full_flow_to_shard(torch.from_numpy(video.fwd)).numpy()
    b8 = full_flow_to_shard(torch.from_numpy(video.bwd)).numpy()
    n = args.k - 1
    fwd = np.repeat(f8, n, axis=0)[:n]
    bwd = np.repeat(b8, n, axis=0)[:n]
    cfg = SampleConfig(image_size=args.image_size, flow_resolution=args.flow_resolution)
    F = c5_size(args.image_size)
    builder = SampleBuilder(cfg, F, carry="flows" if args.defer_positives else "positives")
    decoded = [simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs]
    H, W = decoded[0].shape[:2]
    print(
        f"frames {decoded[0].shape[1]}x{decoded[0].shape[0]}, JPEG {sum(map(len, jpegs)) / 2 / 1024:.0f} KiB each, "
        f"k={args.k}, flows {tuple(fwd.shape)} per direction, views {args.image_size}px, F={F}, "
        f"flow_resolution={args.flow_resolution}, defer_positives={args.defer_positives}"
    )
    fwd_t, bwd_t = torch.from_numpy(fwd)[None], torch.from_numpy(bwd)[None]
    clip = {"fwd": fwd, "bwd": bwd, "video": "bench", "t": 0, "k": args.k}

    def decode():
        return [simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs]

    def timed(fn):
        """A method that times all of ``fn(rng)``; returns (wall, thread CPU) seconds."""

        def run(rng):
            t0, c0 = time.perf_counter(), time.thread_time()
            fn(rng)
            return time.perf_counter() - t0, time.thread_time() - c0

        return run

    def after_decode(prepare, fn):
        """A part: decode the two frames and run ``prepare(rng)`` untimed, then time ``fn(frames,
        prepared)``. Timing a part right after a decode leaves the caches as the pipeline leaves
        them: the decoder writes 2 x 2.7 MiB, more than a core's L2, so a part that reuses the same
        frames or flows in a tight loop (hot in cache) runs ~0.5-1 ms/sample faster than inside the
        pipeline."""

        def run(rng):
            frames = decode()
            arg = prepare(rng)
            t0, c0 = time.perf_counter(), time.thread_time()
            fn(frames, arg)
            return time.perf_counter() - t0, time.thread_time() - c0

        return run

    def make(builder_, augment_mod, pos_fn, pos_cfg):
        def pipeline(rng):
            f1, f2 = decode()
            builder_({**clip, "frame1": f1, "frame2": f2}, rng)

        def augment_only(frames, rng):  # draws, crops, colour, blur, normalisation of both views
            for aug, frame in ((augment_mod.BYOL_VIEW1, frames[0]), (augment_mod.BYOL_VIEW2, frames[1])):
                p = augment_mod.draw_view_params(rng, frame.shape[:2], aug)
                augment_mod.to_normalized_float(augment_mod.apply_view(frame_tensor(frame), p, args.image_size))

        def boxes(rng):  # the two views' boxes and flips, drawn as the pipeline draws them
            ps = [
                augment_mod.draw_view_params(rng, (H, W), aug)
                for aug in (augment_mod.BYOL_VIEW1, augment_mod.BYOL_VIEW2)
            ]
            return [(torch.tensor([p.box], dtype=torch.float64), torch.tensor([p.flip])) for p in ps]

        def positives_only(frames, bf):
            (box1, flip1), (box2, flip2) = bf
            pos_fn(box1, flip1, box2, flip2, (H, W), F, pos_cfg, fwd_t, bwd_t)

        return timed(pipeline), after_decode(lambda rng: rng, augment_only), after_decode(boxes, positives_only)

    this = types.SimpleNamespace(
        BYOL_VIEW1=BYOL_VIEW1,
        BYOL_VIEW2=BYOL_VIEW2,
        draw_view_params=draw_view_params,
        apply_view=apply_view,
        to_normalized_float=to_normalized_float,
    )
    pipe, aug, pos = make(builder, this, compute_positives, cfg)
    floor, main, deferred = "floor (decode 2 JPEGs)", "pipeline (decode + sample)", "pipeline, positives deferred"
    methods = {floor: timed(lambda rng: decode()), main: pipe}
    if not args.defer_positives:  # the same worker passing the flows on (positives per batch, later)
        methods[deferred] = make(SampleBuilder(cfg, F, carry="flows"), this, compute_positives, cfg)[0]
    methods.update({"  part: augment 2 views": aug, f"  part: positives (k-1 = {n} steps)": pos})
    if not args.no_baseline:
        try:
            old_aug, old_pos, old_pipe = load_baseline(args.baseline)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"(no baseline: cannot load revision {args.baseline[:10]}: {exc})")
        else:
            old_cfg = old_pipe.SampleConfig(
                image_size=args.image_size, flow_resolution=args.flow_resolution, defer_positives=args.defer_positives
            )
            b_pipe, b_aug, b_pos = make(
                old_pipe.SampleBuilder(old_cfg, F), old_aug, old_pos.compute_positives, old_cfg.positive_config()
            )
            methods.update(
                {"baseline pipeline": b_pipe, "  baseline part: augment": b_aug, "  baseline part: positives": b_pos}
            )
            if not args.defer_positives:
                old_deferred = old_pipe.SampleConfig(
                    image_size=args.image_size, flow_resolution=args.flow_resolution, defer_positives=True
                )
                methods["baseline pipeline, deferred"] = make(
                    old_pipe.SampleBuilder(old_deferred, F),
                    old_aug,
                    old_pos.compute_positives,
                    old_cfg.positive_config(),
                )[0]
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    rng = np.random.default_rng(0)
    for fn in methods.values():  # warm-up
        fn(rng)
    for _ in range(args.rounds):
        for name, fn in methods.items():
            tw = tc = 0.0
            for _ in range(args.samples):
                dw, dc = fn(rng)
                tw, tc = tw + dw, tc + dc
            wall[name].append(tw / args.samples)
            cpu[name].append(tc / args.samples)
    w = {m: statistics.median(r) for m, r in wall.items()}
    c = {m: statistics.median(r) for m, r in cpu.items()}
    print(
        f"{'':38s} {'wall: samples/s':>16s} {'ms/sample':>10s}   {'CPU ms/sample':>13s}   (parts: timed after a decode)"
    )
    for m in methods:
        print(f"{m:38s} {1 / w[m]:16.1f} {1000 * w[m]:10.2f}   {1000 * c[m]:13.2f}")
    aug_name, pos_name = "  part: augment 2 views", f"  part: positives (k-1 = {n} steps)"
    rest = {main: (aug_name,) if args.defer_positives else (aug_name, pos_name), deferred: (aug_name,)}
    for name, parts in rest.items():
        if name in w:
            minus = " - ".join(p.strip().split(" (")[0].replace("part: ", "") for p in parts)
            print(
                f"{name:30s} - floor - {minus:22s}"
                f" = {1000 * (w[name] - w[floor] - sum(w[p] for p in parts)):5.2f} ms wall, "
                f"{1000 * (c[name] - c[floor] - sum(c[p] for p in parts)):5.2f} ms CPU (draws, tensors, Python)"
            )
    for name in (main, deferred, "baseline pipeline", "baseline pipeline, deferred"):
        if name in w:
            print(
                f"{name:30s} / decode-only floor = {w[floor] / w[name]:.3f} wall, {c[floor] / c[name]:.3f} CPU time"
                f"  (goal >= 0.8)"
            )
    if "baseline pipeline" in w:
        print(
            f"speed-up of the sample work (pipeline - floor): "
            f"{(w['baseline pipeline'] - w[floor]) / (w[main] - w[floor]):.2f}x wall, "
            f"{(c['baseline pipeline'] - c[floor]) / (c[main] - c[floor]):.2f}x CPU time"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
