"""The measured inputs of the scale model in docs/scale.md, printed as one JSON object.

Measured here (nothing is assumed in this script; docs/scale.md combines these figures with
documented rates and says which is which):

1. The shard format: bytes a shard holds per frame and per flow pair beyond the JPEG bytes and the
   float16 flows, from a real ``hdf5_tools pack`` of the synthetic world at 1280x720 (flows at
   1/8: 90x160), so ``shard bytes = JPEG bytes + pairs x 2 x 57,600 B + overhead``.
2. The model of the k = 6 preset (``configs/train/pixpro_k6.yaml``: ResNet-50, projector, PPM):
   trainable parameters (= float32 gradient bytes allreduced per step), all parameters and
   buffers (online + momentum), and the batch-norm layers SyncBN turns into collectives.
3. The staging copier (``hdf5_tools.stage``): the SHA-256 rate of one core (and zlib CRC32's, the
   copier's check before SHA-256), the real ``stage`` copying shard files on this machine's disk
   (read, SHA-256 in a helper thread, write, fsync), and its re-verification of copies already
   there (a requeued job's, by size and SHA-256).
4. JPEG decode of a 1280x720 frame (simplejpeg, one thread): a synthetic-world frame (quality 95,
   as pack encodes), and the same frame re-encoded to about the seed's mean BDD100K frame size
   (~110 KB).

    .venv/bin/python bench/bench_scale.py            # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The seed's BDD100K frames (ffmpeg -q:v 0, 1280x720): 3.1 TB for ~28 M training frames
# (rioyokotalab/PixPro-with-OpticalFlow, dataset_prepare README; the paper's 70k videos x 400 frames).
TARGET_JPEG_BYTES = 110_700
sys.path.insert(0, str(ROOT))


def shard_overhead(tmp: Path, videos: int, frames: int) -> dict:

    from hdf5_tools import schema
    from hdf5_tools.reader import ShardReader

    out = tmp / "shards"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdf5_tools.cli",
            "pack",
            f"synth:videos={videos},frames={frames},size=1280x720,seed=0",
            str(out),
            "--nodes",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    files = sorted(out.glob("*.h5"))
    total = sum(f.stat().st_size for f in files)
    jpeg = flow = nframes = npairs = 0
    shape = ()
    for f in files:
        with schema.open_shard(str(f)) as h5:
            videos_in = schema.list_videos(h5)
        reader = ShardReader(str(f), check_crc=False)
        for v in videos_in:
            for t in range(v.num_frames):
                jpeg += len(reader.jpeg(v.name, t))
            fwd, bwd = reader.flows(v.name, 0, v.num_frames - 1, as_stored=True)
            flow += fwd.nbytes + bwd.nbytes
            shape = fwd.shape
            nframes += v.num_frames
            npairs += v.num_frames - 1
        reader.close()
    return {
        "videos": videos,
        "frames": nframes,
        "pairs": npairs,
        "shard_bytes": total,
        "jpeg_bytes": jpeg,
        "flow_bytes": flow,
        "flow_shape_per_direction": list(shape[1:]),
        "flow_bytes_per_pair_both_directions": flow // npairs,
        "overhead_bytes_per_frame": (total - jpeg - flow) / nframes,
        "synthetic_jpeg_bytes_per_frame": jpeg / nframes,
    }


def model_sizes() -> dict:
    import torch

    from pixpro_of.config import load_config
    from pixpro_of.train.components import build_model

    cfg = load_config("pixpro_k6")
    model = build_model(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    bn_trainable = sum(
        1
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())
    )
    bn_all = sum(1 for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    return {
        "arch": cfg.model.arch,
        "trainable_params": trainable,
        "all_params": params,
        "buffers": buffers,
        "gradient_bytes_fp32": trainable * 4,
        "bn_layers_trainable": bn_trainable,
        "bn_layers_all": bn_all,
    }


def _hash_rate(update, seconds: float = 2.0) -> float:
    """Bytes per second one core feeds ``update`` with 16 MiB blocks of random data."""
    data = os.urandom(16 << 20)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        update(data)
        n += len(data)
    return n / (time.perf_counter() - t0)


def staging_rates(tmp: Path, mb: int) -> dict:
    """The one-core hash rates and the real ``hdf5_tools stage`` copying ``mb`` MB of shard files.

    The shards are random bytes listed in a manifest with their CRC32 and SHA-256 (stage reads
    only the manifest, never the HDF5 contents). The first ``stage`` copies them into a new private
    directory (read, SHA-256 in a helper thread, write, fsync, rename); the second finds them there
    and re-verifies each by size and SHA-256, as a requeued job does with its own copies.
    """
    from hdf5_tools import manifest as mf
    from hdf5_tools.stage import StageConfig, stage

    crc = [0]
    crc_rate = _hash_rate(lambda b: crc.__setitem__(0, zlib.crc32(b, crc[0])))
    sha256_rate = _hash_rate(hashlib.sha256().update)
    src = tmp / "stage-src"
    src.mkdir()
    shard_mb = 64
    entries = []
    for i in range(max(1, mb // shard_mb)):
        f = src / f"shard-{i:05d}.h5"
        with open(f, "wb") as fo:
            for _ in range(shard_mb // 16):
                fo.write(os.urandom(16 << 20))
            fo.flush()
            os.fsync(fo.fileno())
        crc32, sha256 = mf.file_digests(f)
        entries.append(
            mf.ShardEntry(
                file=f.name,
                node=0,
                bytes=f.stat().st_size,
                crc32=crc32,
                sha256=sha256,
                num_videos=0,
                num_frames=0,
                num_pairs=0,
                pairs_present=0,
            )
        )
    mf.write_manifest(src / mf.MANIFEST_NAME, mf.Manifest(nodes=1, shards=entries))
    cfg = StageConfig(manifest=str(src), to=str(tmp / "staged"), node=0, num_nodes=1, run=str(tmp))
    first = stage(cfg)
    t0 = time.perf_counter()
    again = stage(cfg)
    reverify_s = time.perf_counter() - t0
    if first.copied != len(entries) or again.skipped != len(entries) or again.copied:
        raise SystemExit(
            f"stage: expected {len(entries)} copies then {len(entries)} reused, got {first.line()} then {again.line()}"
        )
    return {
        "crc32_bytes_per_s_one_core": crc_rate,
        "sha256_bytes_per_s_one_core": sha256_rate,
        "copier_bytes": first.bytes_copied,
        "copier_bytes_per_s_this_disk": first.bytes_copied / first.seconds,
        "reverify_bytes_per_s_this_disk": first.bytes_copied / reverify_s,
    }


def jpeg_decode(tmp: Path) -> dict:
    import simplejpeg

    from hdf5_tools import schema
    from hdf5_tools.reader import ShardReader

    f = sorted((tmp / "shards").glob("*.h5"))[0]
    with schema.open_shard(str(f)) as h5:
        v = schema.list_videos(h5)[0]
    reader = ShardReader(str(f), check_crc=False)
    blob = bytes(reader.jpeg(v.name, 0))
    reader.close()

    def rate(b):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            simplejpeg.decode_jpeg(b, colorspace="RGB")
            n += 1
        return n / (time.perf_counter() - t0)

    # The seed's mean BDD100K frame size: the synthetic frame re-encoded at the highest quality
    # that fits (or with noise added until it is that large, if the synthetic frame is smaller).
    import numpy as np

    img = simplejpeg.decode_jpeg(blob, colorspace="RGB")
    sized = blob
    if len(blob) > TARGET_JPEG_BYTES:
        for q in range(95, 10, -1):
            sized = simplejpeg.encode_jpeg(img, quality=q, colorspace="RGB")
            if len(sized) <= TARGET_JPEG_BYTES:
                break
    else:
        rng = np.random.default_rng(0)
        for sigma in range(1, 40):
            noisy = np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)
            sized = simplejpeg.encode_jpeg(noisy, quality=95, colorspace="RGB")
            if len(sized) >= TARGET_JPEG_BYTES:
                break
    return {
        "synthetic_jpeg_bytes": len(blob),
        "synthetic_decodes_per_s_one_thread": rate(blob),
        "bdd_sized_jpeg_bytes": len(sized),
        "bdd_sized_decodes_per_s_one_thread": rate(sized),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--video-frames", dest="frames", type=int, default=12, help="frames per video")
    ap.add_argument("--copy-mb", type=int, default=512, help="MiB of shard files the staging copier copies")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        tmp = Path(d)
        out = {
            "shards": shard_overhead(tmp, a.videos, a.frames),
            "model_k6": model_sizes(),
            "staging": staging_rates(tmp, a.copy_mb),
            "jpeg_720p": jpeg_decode(tmp),
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
