"""The measured inputs of the scale model in docs/scale.md, printed as one JSON object.

Measured here (nothing is assumed in this script; docs/scale.md combines these figures with
documented rates and says which is which):

1. The shard format: bytes a shard holds per frame and per flow pair beyond the JPEG bytes and the
   float16 flows, from a real ``hdf5_tools pack`` of the synthetic world at 1280x720 (flows at
   1/8: 90x160), so ``shard bytes = JPEG bytes + pairs x 2 x 57,600 B + overhead``.
2. The model of the k = 6 preset (``configs/train/pixpro_k6.yaml``: ResNet-50, projector, PPM):
   trainable parameters (= float32 gradient bytes allreduced per step), all parameters and
   buffers (online + momentum), and the batch-norm layers SyncBN turns into collectives.
3. The staging copier (``hdf5_tools.stage``): zlib CRC32 rate of one core, and the copier's own
   rate (read, CRC32, write, fsync) copying a file on this machine's disk.
4. JPEG decode of a 1280x720 frame (simplejpeg, one thread): a synthetic-world frame (quality 95,
   as pack encodes), and the same frame re-encoded to about the seed's mean BDD100K frame size
   (~110 KB).

    .venv/bin/python bench/bench_scale.py            # ~1 minute on 2 cores
"""
from __future__ import annotations

import argparse
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
    import h5py

    from hdf5_tools import schema

    out = tmp / "shards"
    r = subprocess.run([sys.executable, "-m", "hdf5_tools.cli", "pack",
                        f"synth:videos={videos},frames={frames},size=1280x720,seed=0", str(out), "--nodes", "1",
                        "--no-progress"], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    files = sorted(out.glob("*.h5"))
    total = sum(f.stat().st_size for f in files)
    jpeg = flow = nframes = npairs = 0
    shape = ()
    for f in files:
        with schema.open_shard(str(f)) as h5:
            videos_in = schema.list_videos(h5)
        reader = schema.ShardReader(str(f), check_crc=False)
        for v in videos_in:
            for t in range(v.num_frames):
                jpeg += len(reader.jpeg(v.name, t))
            fwd, bwd = reader.flows(v.name, 0, v.num_frames - 1, as_stored=True)
            flow += fwd.nbytes + bwd.nbytes
            shape = fwd.shape
            nframes += v.num_frames
            npairs += v.num_frames - 1
        reader.close()
    return {"videos": videos, "frames": nframes, "pairs": npairs, "shard_bytes": total, "jpeg_bytes": jpeg,
            "flow_bytes": flow, "flow_shape_per_direction": list(shape[1:]),
            "flow_bytes_per_pair_both_directions": flow // npairs,
            "overhead_bytes_per_frame": (total - jpeg - flow) / nframes,
            "synthetic_jpeg_bytes_per_frame": jpeg / nframes}


def model_sizes() -> dict:
    import torch

    from pixpro_of.config import load_config
    from pixpro_of.train.trainer import build_model

    cfg = load_config("pixpro_k6")
    model = build_model(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    bn_trainable = sum(1 for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                       and any(p.requires_grad for p in m.parameters()))
    bn_all = sum(1 for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    return {"arch": cfg.model.arch, "trainable_params": trainable, "all_params": params, "buffers": buffers,
            "gradient_bytes_fp32": trainable * 4, "bn_layers_trainable": bn_trainable, "bn_layers_all": bn_all}


def staging_rates(tmp: Path, mb: int) -> dict:
    from hdf5_tools.stage import _copy_checked

    data = os.urandom(16 << 20)
    t0 = time.perf_counter()
    crc, n = 0, 0
    while time.perf_counter() - t0 < 2.0:
        crc = zlib.crc32(data, crc)
        n += len(data)
    crc_rate = n / (time.perf_counter() - t0)
    src = tmp / "src.bin"
    with open(src, "wb") as f:
        for _ in range(mb // 16):
            f.write(os.urandom(16 << 20))
        f.flush()
        os.fsync(f.fileno())
    size = src.stat().st_size
    t0 = time.perf_counter()
    _copy_checked(str(src), str(tmp / "dst.bin"))
    copy_s = time.perf_counter() - t0
    return {"crc32_bytes_per_s_one_core": crc_rate, "copier_bytes": size,
            "copier_bytes_per_s_this_disk": size / copy_s}


def jpeg_decode(tmp: Path) -> dict:
    import simplejpeg

    from hdf5_tools import schema

    f = sorted((tmp / "shards").glob("*.h5"))[0]
    with schema.open_shard(str(f)) as h5:
        v = schema.list_videos(h5)[0]
    reader = schema.ShardReader(str(f), check_crc=False)
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
    return {"synthetic_jpeg_bytes": len(blob), "synthetic_decodes_per_s_one_thread": rate(blob),
            "bdd_sized_jpeg_bytes": len(sized), "bdd_sized_decodes_per_s_one_thread": rate(sized)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--video-frames", dest="frames", type=int, default=12, help="frames per video")
    ap.add_argument("--copy-mb", type=int, default=256)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        tmp = Path(d)
        out = {"shards": shard_overhead(tmp, a.videos, a.frames), "model_k6": model_sizes(),
               "staging": staging_rates(tmp, a.copy_mb), "jpeg_720p": jpeg_decode(tmp)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
