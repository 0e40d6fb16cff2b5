"""Sample pipeline throughput (k = 6, two 224 views, positives) vs the decode-only floor.

One worker's view (one process, one thread, as in a DataLoader worker): a clip is two 1280x720
JPEG frames (the synthetic world rendered at 720p, encoded at quality 95) plus 5 forward and 5
backward flows at 1/8 resolution (90x160, the world's exact flow area-averaged into shard units).

- floor:    decoding the two JPEGs (simplejpeg, as the shard reader);
- pipeline: decoding + ``SampleBuilder`` (crops, flips, colour jitter, grayscale, blur, solarize,
            normalisation, flow chaining over 5 steps, FB masks, positives) = one training sample;
- parts:    the augmentation alone and the positives alone (for the breakdown).

Methods are interleaved over rounds; the median rate of each is reported, with ratios from this
one run (goal: pipeline / floor >= 0.8).

    .venv/bin/python bench/bench_pipeline.py                   # ~30 s
    .venv/bin/python bench/bench_pipeline.py --samples 200 --rounds 7 --flow-resolution full
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=60, help="samples per method per round (default 60)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--k", type=int, default=6, help="clip length (default 6)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--flow-resolution", default="coarse", choices=["coarse", "full"])
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality of the test frames (default 95)")
    args = ap.parse_args(argv)

    import cv2
    import simplejpeg
    import torch

    from flow.ops import full_flow_to_shard
    from pixpro_of.data.augment import BYOL_VIEW1, BYOL_VIEW2, apply_view, draw_view_params, to_normalized_float
    from pixpro_of.data.pipeline import SampleBuilder, SampleConfig, frame_tensor
    from pixpro_of.model.encoder import c5_size
    from pixpro_of.positives import compute_positives
    from pixpro_of.synth import render_video

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
    builder = SampleBuilder(cfg, F)
    decoded = [simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs]
    print(f"frames {decoded[0].shape[1]}x{decoded[0].shape[0]}, JPEG {sum(map(len, jpegs)) / 2 / 1024:.0f} KiB each, "
          f"k={args.k}, flows {tuple(fwd.shape)} per direction, views {args.image_size}px, F={F}, "
          f"flow_resolution={args.flow_resolution}")

    def decode():
        return [simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs]

    def floor(rng):
        decode()

    def pipeline(rng):
        f1, f2 = decode()
        builder({"frame1": f1, "frame2": f2, "fwd": fwd, "bwd": bwd, "video": "bench", "t": 0, "k": args.k}, rng)

    def augment_only(rng):
        for aug, frame in ((BYOL_VIEW1, decoded[0]), (BYOL_VIEW2, decoded[1])):
            p = draw_view_params(rng, frame.shape[:2], aug)
            to_normalized_float(apply_view(frame_tensor(frame), p, args.image_size))

    box = torch.tensor([[100.0, 50.0, 700.0, 500.0]], dtype=torch.float64)
    flip = torch.tensor([True])
    fwd_t, bwd_t = torch.from_numpy(fwd)[None], torch.from_numpy(bwd)[None]

    def positives_only(rng):
        compute_positives(box, flip, box, ~flip, (720, 1280), F, cfg.positive_config(), fwd_t, bwd_t)

    methods = {"floor (decode 2 JPEGs)": floor, "pipeline (decode + sample)": pipeline,
               "  part: augment 2 views": augment_only, "  part: positives (k-1 = %d steps)" % n: positives_only}
    rates = {m: [] for m in methods}
    rng = np.random.default_rng(0)
    for fn in methods.values():  # warm-up
        fn(rng)
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            for _ in range(args.samples):
                fn(rng)
            rates[name].append(args.samples / (time.perf_counter() - t0))
    med = {m: statistics.median(r) for m, r in rates.items()}
    for m, r in med.items():
        print(f"{m:38s} {r:8.1f} samples/s  ({1000 / r:6.2f} ms/sample)")
    ratio = med["pipeline (decode + sample)"] / med["floor (decode 2 JPEGs)"]
    print(f"pipeline / decode-only floor = {ratio:.3f}  (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
