"""Benchmark: ``hdf5_tools flow`` end to end (JPEG decode, flow, float16 write) into shards.

Packs synthetic videos into two shards, then fills their flows with one process and with
``mpirun -np N`` (one thread per rank), and prints pairs/s of each and the speed-up ratio from this
one run. The work is balanced by pairs and every shard has a single writer, so the ratio shows the
cost of the distribution (frame and flow messages between ranks) on top of the flow itself.

Usage: ``python bench/bench_flow_compute.py [--videos 4] [--video-frames 12] [--size 640x360] [--np 2]
[--model dis] [--weights PATH]``. The default run takes well under a minute with DIS.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def build(folder: Path, videos: int, frames: int, size) -> int:
    import simplejpeg

    from hdf5_tools import schema
    from synth import render_video

    folder.mkdir(parents=True)
    pairs = 0
    shards = [schema.create_shard(folder / f"shard-{i}.h5") for i in range(2)]
    for v in range(videos):
        rgb = render_video(100 + v, frames, size=size).rgb
        jpegs = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=90, colorspace="RGB") for f in rgb]
        schema.add_video(
            shards[v % 2],
            f"video{v:03d}",
            jpegs,
            split="train",
            height=size[1],
            width=size[0],
            fps=10.0,
            source="synth",
        )
        pairs += frames - 1
    for h5 in shards:
        h5.close()
    return pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--video-frames", dest="frames", type=int, default=12, help="frames per video")
    p.add_argument("--size", default="640x360")
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--model", default="dis", choices=["dis", "raft-small", "raft-large"])
    p.add_argument("--weights")
    a = p.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_flow_compute_"))
    try:
        pairs = build(tmp / "src", a.videos, a.frames, size)
        shutil.copytree(tmp / "src", tmp / "mpi")
        args = ["--model", a.model, "--threads", "1", "--no-progress"] + (["--weights", a.weights] if a.weights else [])
        env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "hdf5_tools", "flow", str(tmp / "src"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        t1 = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(r.stderr)
        t0 = time.perf_counter()
        r2 = subprocess.run(
            [
                "mpirun",
                "-np",
                str(a.np),
                "--oversubscribe",
                sys.executable,
                "-m",
                "hdf5_tools",
                "flow",
                str(tmp / "mpi"),
                *args,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        t2 = time.perf_counter() - t0
        if r2.returncode:
            raise SystemExit(r2.stdout + r2.stderr)
        inner1 = [float(x) for x in re.findall(r"\(([\d.]+) pairs/s\)", r.stdout)]
        print(f"{pairs} pairs ({2 * pairs} flows) of {a.size} frames, {a.model}, {a.videos} videos in 2 shards")
        print(
            f"1 process      : {pairs / t1:6.2f} pairs/s wall incl. start-up ({t1:.1f} s); in-loop "
            f"{inner1[0]:.2f} pairs/s"
        )
        print(
            f"mpirun -np {a.np}   : {pairs / t2:6.2f} pairs/s wall incl. start-up ({t2:.1f} s); per rank: "
            + "; ".join(
                sorted(re.findall(r"rank \d+: \d+ pair\(s\) with \S+ in [\d.]+ s \([\d.]+ pairs/s\)", r2.stdout))
            )
        )
        print(
            f"ratio mpirun -np {a.np} / 1 process throughput: {t1 / t2:.2f} (load average {os.getloadavg()[0]:.2f}, "
            f"{os.cpu_count()} cores)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
