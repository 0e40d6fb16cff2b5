"""Benchmark: the synthetic world's generation speed against the issue's goal.

Goal (issue 3): 8 videos x 60 frames at 640x360 with ground truth written in at most 60 s on this
(2-core) machine. By default this renders a 2-video subset and extrapolates linearly to 8 videos
(each video is independent), so it runs in well under a minute; ``--videos 8`` measures the goal
directly. It reports, from one run:

* render-only time per frame (ray casting, shading, exact flow + occlusion both ways),
* the full ``write_dataset`` time (render + JPEG + .mov + .flo + occlusion PNGs [+ Cityscapes]),
* the ratio of the (extrapolated) full time to the 60 s goal (< 1 meets it),
* the CPU time, and the time the goal would take on idle cores (CPU time / workers), since the
  wall time on a shared machine mostly measures the other processes,
* the machine's load average, since other processes share the cores.

Usage: ``python bench/bench_synth.py [--videos 8] [--video-frames 60] [--size 640x360] [--format bdd]
[--workers 1]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from plumbing.parse import parse_wxh
from synth import SynthConfig, write_dataset
from synth.world import Renderer

GOAL_S, GOAL_VIDEOS, GOAL_FRAMES = 60.0, 8, 60


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (parallel workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--video-frames", dest="frames", type=int, default=60, help="frames per video")
    p.add_argument("--size", default="640x360")
    p.add_argument("--format", default="bdd", choices=("bdd", "cityscapes", "all"))
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    size = parse_wxh(args.size)
    load0 = os.getloadavg()[0]

    # 1. Render only (one video, in this process).
    r = Renderer(12345, args.frames, size)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in r.frames():
        pass
    render_wall = (time.perf_counter() - t0) / args.frames
    render_cpu = (time.process_time() - c0) / args.frames

    # 2. The whole dataset writer.
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        cfg = SynthConfig(videos=args.videos, frames=args.frames, size=size, format=args.format, workers=args.workers)
        t0 = time.perf_counter()
        cpu0 = _cpu_seconds()
        write_dataset(tmp / "ds", cfg)
        full = time.perf_counter() - t0
        full_cpu = _cpu_seconds() - cpu0
        nbytes = sum(f.stat().st_size for f in (tmp / "ds").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()[0]

    n_frames = args.videos * args.frames
    per_frame = full / n_frames
    goal_frames = GOAL_VIDEOS * GOAL_FRAMES
    extrapolated = per_frame * goal_frames
    print(
        f"synth benchmark: {args.videos} videos x {args.frames} frames at {size[0]}x{size[1]}, "
        f"format={args.format}, workers={args.workers}, cores={os.cpu_count()}"
    )
    print(f"  render only      : {render_wall * 1000:7.1f} ms/frame wall, {render_cpu * 1000:7.1f} ms/frame CPU")
    print(
        f"  write_dataset    : {full:7.2f} s total, {per_frame * 1000:7.1f} ms/frame, {nbytes / 2**20:.0f} MiB written"
    )
    print(f"  writing overhead : {full_cpu / n_frames / render_cpu:5.2f}x the render-only CPU time per frame")
    print(
        f"  goal ({GOAL_VIDEOS}x{GOAL_FRAMES} frames in {GOAL_S:.0f} s): "
        f"{'measured' if n_frames == goal_frames else 'extrapolated'} {extrapolated:6.1f} s "
        f"-> ratio to goal {extrapolated / GOAL_S:4.2f} ({'meets' if extrapolated <= GOAL_S else 'misses'} it)"
    )
    idle = full_cpu / n_frames * goal_frames / min(args.workers, os.cpu_count() or 1)
    print(
        f"  CPU time         : {full_cpu:7.2f} s ({full_cpu / n_frames * 1000:.1f} ms/frame); on idle cores the goal "
        f"would take ~{idle:5.1f} s -> ratio {idle / GOAL_S:4.2f}"
    )
    print(f"  load average     : {load0:.2f} before, {load1:.2f} after (other processes share the cores)")


if __name__ == "__main__":
    main()
