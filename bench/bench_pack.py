"""``hdf5_tools pack`` throughput vs ``cp -r`` of the same source bytes.

Source: a generated BDD-like frame-folder tree (1280x720 JPEGs, ``--video-frames`` per video; with
``--flows`` also the seed's per-video fp32 ``.pth`` flow files, which pack converts to float16
chunks). Each round copies the source with ``cp -r`` and packs it (``-j``), into fresh folders on
the same file system, both from a warm page cache and without a final sync; the outputs are
deleted between rounds and ``sync`` runs (untimed) before each copy or pack. Reports MB/s of
source bytes for both and their ratio per round (median).
Pack's time includes parsing every JPEG header, CRC32 of every frame and flow chunk, and the
whole-file CRC32 written to the manifest.

    .venv/bin/python bench/bench_pack.py                 # ~30-60 s
    .venv/bin/python bench/bench_pack.py --flows --rounds 5 -j 2
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/pixpro_bench_shards", help="where data is generated (reused)")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--video-frames", dest="frames", type=int, default=400, help="frames per video")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("-j", "--jobs", type=int, default=1)
    ap.add_argument("--flows", action="store_true", help="also pack the seed .pth flows (and cp them)")
    a = ap.parse_args(argv)

    from hdf5_tools import fake_sources
    from hdf5_tools.pack import PackConfig, pack

    work = Path(a.workdir)
    info = fake_sources.make_bdd_like(work / "src", videos=a.videos, frames=a.frames)
    src = work / "src"
    src_bytes = info["jpeg_bytes"] + (info["flow_bytes"] if a.flows else 0)
    print(
        f"source: {a.videos} videos x {a.frames} frames 1280x720, {src_bytes / 1e6:.0f} MB "
        f"({'JPEG + seed .pth flows' if a.flows else 'JPEG only'})"
    )
    # Warm the page cache.
    for p in list((src / "images").rglob("*.jpg")) + (list((src / "flow").rglob("*.pth")) if a.flows else []):
        p.read_bytes()

    def run_cp():
        dst = work / "cp-out"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", str(src / "images"), str(dst)], check=True)
        if a.flows:
            subprocess.run(["cp", "-r", str(src / "flow"), str(dst)], check=True)
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        shutil.rmtree(dst)
        return wall, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)

    def run_pack():
        out = work / "pack-out"
        shutil.rmtree(out, ignore_errors=True)
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        pack(
            PackConfig(
                src=str(src),
                out=str(out),
                nodes=1,
                shard_size=8 << 30,
                jobs=a.jobs,
                flows=str(src / "flow") if a.flows else None,
                progress=False,
            )
        )
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        shutil.rmtree(out)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        return wall, cpu if a.jobs == 1 else float("nan")

    mb = src_bytes / 1e6
    rates = {"cp": [], "pack": []}
    cpu = {"cp": [], "pack": []}
    ratios = []
    for r in range(a.rounds):
        order = (("cp", run_cp), ("pack", run_pack)) if r % 2 == 0 else (("pack", run_pack), ("cp", run_cp))
        for name, fn in order:
            os.sync()  # start each run with no dirty pages from the previous one (untimed)
            wall, c = fn()
            rates[name].append(mb / wall)
            cpu[name].append(c)
        ratios.append(rates["pack"][-1] / rates["cp"][-1])
        print(f"round {r + 1}: cp {rates['cp'][-1]:.0f} MB/s, pack {rates['pack'][-1]:.0f} MB/s", file=sys.stderr)
    med = statistics.median
    print(
        f"pack (-j {a.jobs}) {med(rates['pack']):.0f} MB/s, cp -r {med(rates['cp']):.0f} MB/s "
        f"(median of {a.rounds} rounds, order alternated)"
    )
    print(
        f"  ratio pack/cp wall-clock MB/s {med(ratios):.2f}   (goal >= 0.8; per round: "
        f"{', '.join(f'{x:.2f}' for x in ratios)})"
    )
    if a.jobs == 1:
        print(
            f"  CPU seconds (user+sys): pack {med(cpu['pack']):.2f} s, cp {med(cpu['cp']):.2f} s -> "
            f"CPU-bound ratio cp/pack {med(cpu['cp']) / med(cpu['pack']):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
