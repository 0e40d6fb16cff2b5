"""Clip read + decode throughput from shards vs the seed's layout vs a decode-only floor (k=6).

Layouts, all from one generated BDD-like tree (1280x720 JPEGs, 400 frames per video, seed .pth
flows [399, 2, 90, 160] float32) in the page cache, one process, one core:

- seed:   the two endpoint JPEG files read and decoded, and both whole per-video .pth flow files
          ``torch.load``-ed and sliced (the seed's ``load_flow``; it also read the frames between
          the endpoints, which this leaves out in the seed's favour);
- shards: ``ShardClipDataset.get_clip`` (index lookup, CRC checks on JPEGs and flow chunks,
          decode of both frames, k-1 fwd + k-1 bwd float16 chunks -> float32);
- floor:  decoding the same two JPEGs from bytes already in memory.

Bytes read per sample are measured as the process's ``rchar`` (bytes through read syscalls) per
clip. Methods are interleaved over rounds and the median rate of each is reported, with ratios
measured in this one run. Also reported: flow bytes stored per pair per direction vs the seed's fp32.

    .venv/bin/python bench/bench_shards.py                  # ~1 minute
    .venv/bin/python bench/bench_shards.py --videos 4 --clips 400 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def seed_clip(root: Path, video: str, t: int, k: int, nframes: int):
    """The seed's sample: endpoint JPEG files decoded, whole flow files loaded and sliced."""
    import simplejpeg
    import torch

    img = root / "images" / "train" / video
    f1 = simplejpeg.decode_jpeg((img / f"{t + 1:05d}.jpg").read_bytes())
    f2 = simplejpeg.decode_jpeg((img / f"{t + k:05d}.jpg").read_bytes())
    fwd_all = torch.load(root / "flow" / "train" / "forward" / f"{video}.pth", map_location="cpu")
    bwd_all = torch.load(root / "flow" / "train" / "backward" / f"{video}.pth", map_location="cpu")
    num_flow, F = nframes - 1, k - 1
    fwd = fwd_all[t : t + F]
    bwd = bwd_all[num_flow - t - F : num_flow - t]  # reverse-time file: flows t+F -> t
    return f1, f2, fwd, bwd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/pixpro_bench_shards", help="where data is generated (reused)")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--video-frames", dest="frames", type=int, default=400, help="frames per video")
    ap.add_argument("--frames", dest="k", type=int, default=6, help="clip length k")
    ap.add_argument("--clips", type=int, default=120, help="clips per round (the seed layout reads every 4th)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-crc", action="store_true", help="read shards without CRC checks")
    a = ap.parse_args(argv)

    import simplejpeg
    import torch

    torch.set_num_threads(1)
    from hdf5_tools import fake_sources, schema
    from hdf5_tools.pack import PackConfig, pack
    from hdf5_tools.reader import ShardReader
    from pixpro_of.data import ShardClipDataset

    work = Path(a.workdir)
    t0 = time.perf_counter()
    info = fake_sources.make_bdd_like(work / "src", videos=a.videos, frames=a.frames)
    out = work / f"shards-{a.videos}-{a.frames}"
    if not (out / "manifest.json").exists():
        pack(PackConfig(src=str(work / "src"), out=str(out), nodes=1, flows=str(work / "src" / "flow"), progress=False))
    print(
        f"data: {a.videos} videos x {a.frames} frames 1280x720, JPEG {info['jpeg_bytes'] / 1e6:.0f} MB, "
        f"seed flows {info['flow_bytes'] / 1e6:.0f} MB (prepared in {time.perf_counter() - t0:.0f} s)"
    )

    m_paths = sorted(str(p) for p in out.glob("shard-*.h5"))
    ds = ShardClipDataset(m_paths, k=a.k, check_crc=not a.no_crc)
    names = [ds.video_name(i) for i in range(ds.num_videos)]
    rng = np.random.default_rng(0)

    def draws(n):
        vs = rng.integers(0, ds.num_videos, n)
        return [(int(v), int(rng.integers(0, ds.num_frames(v) - a.k + 1))) for v in vs]

    # Warm the page cache for every file involved.
    for p in list((work / "src").rglob("*.pth")) + [Path(p) for p in m_paths]:
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass
    for v, t in draws(20):
        ds.get_clip(v, t)
        seed_clip(work / "src", names[v], t, a.k, ds.num_frames(v))

    rates = {"seed": [], "shards": [], "floor": []}
    bytes_per = {"seed": [], "shards": []}
    pc = time.perf_counter
    readers = {}
    for r in range(a.rounds):
        items = draws(a.clips)
        blobs = []  # decode floor input: the same two JPEGs per clip, already in memory
        for v, t in items:
            if ds.shard_of(v) not in readers:
                readers[ds.shard_of(v)] = ShardReader(ds.shard_of(v))
            reader = readers[ds.shard_of(v)]
            blobs.append((reader.jpeg(names[v], t), reader.jpeg(names[v], t + a.k - 1)))
        spent = {"seed": 0.0, "shards": 0.0, "floor": 0.0}
        read = {"seed": 0, "shards": 0}
        keep = [ds.get_clip(*items[0])]  # untimed: re-grow the heap after the last seed block
        # Shards and floor interleaved clip by clip (alternating which goes first), so machine
        # noise hits both alike; both keep their two decoded frames alive like a real consumer.
        for i, ((v, t), (b1, b2)) in enumerate(zip(items, blobs)):
            for method in ("shards", "floor") if i % 2 == 0 else ("floor", "shards"):
                if method == "shards":
                    c0, t0 = rchar(), pc()
                    keep[:] = [ds.get_clip(v, t)]
                    spent["shards"] += pc() - t0
                    read["shards"] += rchar() - c0
                else:
                    t0 = pc()
                    keep[:] = [
                        simplejpeg.decode_jpeg(b1, colorspace="RGB"),
                        simplejpeg.decode_jpeg(b2, colorspace="RGB"),
                    ]
                    spent["floor"] += pc() - t0
        # The seed layout in its own block (its 92 MB loads disturb the allocator for what follows).
        n_seed = (len(items) + 3) // 4
        for v, t in items[:n_seed]:
            c0, t0 = rchar(), pc()
            keep[:] = [seed_clip(work / "src", names[v], t, a.k, ds.num_frames(v))]
            spent["seed"] += pc() - t0
            read["seed"] += rchar() - c0
        keep.clear()
        for key, n in (("shards", len(items)), ("floor", len(items)), ("seed", n_seed)):
            rates[key].append(n / spent[key])
        bytes_per["shards"].append(read["shards"] / len(items))
        bytes_per["seed"].append(read["seed"] / n_seed)
        print(
            f"round {r + 1}: shards {rates['shards'][-1]:.1f} clips/s, floor {rates['floor'][-1]:.1f}, "
            f"seed {rates['seed'][-1]:.1f}",
            file=sys.stderr,
        )

    # Ratios per round (each round's methods ran interleaved), then the median over rounds.
    r_seed = statistics.median(s / z for s, z in zip(rates["shards"], rates["seed"]))
    r_floor = statistics.median(s / f for s, f in zip(rates["shards"], rates["floor"]))
    med = {k: statistics.median(v) for k, v in rates.items()}
    b = {k: statistics.median(v) for k, v in bytes_per.items()}
    print(
        f"clip read+decode (k={a.k}, 1280x720, one process, warm cache, median of {a.rounds} rounds; "
        f"CRC checks {'off' if a.no_crc else 'on'}):"
    )
    print(f"  shards       {med['shards']:8.1f} clips/s   {b['shards'] / 1e6:8.2f} MB read per clip")
    print(f"  seed layout  {med['seed']:8.1f} clips/s   {b['seed'] / 1e6:8.2f} MB read per clip")
    print(f"  decode floor {med['floor']:8.1f} clips/s")
    print(f"  ratio shards/seed throughput   {r_seed:6.2f}x   (goal >= 5)")
    print(f"  ratio seed/shards bytes read   {b['seed'] / b['shards']:6.1f}x   (goal >= 50)")
    print(f"  ratio shards/decode floor      {r_floor:6.3f}    (goal >= 0.85)")

    # Flow bytes stored per pair per direction.
    with schema.open_shard(m_paths[0]) as h5:
        v = schema.list_videos(h5)[0]
        stored = schema.storage_bytes(h5, v.name)["flow_fwd"] / v.num_pairs
    pth = work / "src" / "flow" / "train" / "forward" / f"{v.name}.pth"
    seed_per = pth.stat().st_size / v.num_pairs
    print(
        f"flow bytes per pair per direction: shard {stored:.0f} B (float16, uncompressed), seed .pth "
        f"{seed_per:.0f} B (float32): ratio {stored / seed_per:.4f} (goal <= 0.5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
