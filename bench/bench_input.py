"""Samples/s fed per GPU: CPU DataLoader workers vs the device input path vs the training step, in one run.

One process = one GPU. The data is the synthetic world packed into a shard (``hdf5_tools pack``,
1280x720 JPEGs at quality 95 and the exact flows at 1/8 by default; generated once into
``--workdir`` and reused), read through the trainer's own loader (``SampleSet``, ``EpochBatches``,
``make_loader``: per-sample RNG, ``--workers`` processes, prefetch 2, pinned memory on CUDA). Every
batch ends complete on ``--device``: views and positives (positives on the device from the stored
flows, as the GPU presets pixpro_k2/pixpro_k6 do).

- (a) CPU workers:  ``data.decode_on=worker``: N workers decode both JPEGs and build both views;
                    the main process moves the batch to the device and computes the positives;
- (b) device path:  ``data.decode_on=device``: N workers read the JPEG bytes and the flows and draw
                    the views' parameters; the main process decodes the batch on the device
                    (torchvision/nvJPEG, ``--chunk`` frames per call), builds both views there and
                    computes the positives (pixpro_of/data/device_views.py);
                    also shown: the device stage alone (one batch of bytes in host memory, decoded
                    and augmented again and again) and the workers alone (bytes, no device work);
- (c) training step: the PixPro step alone (momentum update, both branches on both views, loss,
                    backward, LARS) on random views: ResNet-50 at 224 px, batch 64, in
                    the precision of `--preset` (default pixpro_k6: fp32, TF32 on CUDA).

Reported: the median over ``--rounds`` interleaved rounds of ``--batches`` timed batches each
(after one untimed batch that starts the workers), and the ratios input / step (goal on a GPU:
>= 1.2, so the GPU never waits) and the device path's rate (goal >= 1000 samples/s per GPU). The
device path shares its GPU with the step; the rate of the two in series is printed too.

    python bench/bench_input.py --device cuda --workers 12           # a GPU node (12 cores per GPU)
    python bench/bench_input.py --device cpu --workers 2 --arch resnet18 --image-size 64 --batch 8
    python bench/bench_input.py --smoke                              # CPU, tiny, a few seconds (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

ARCHS = ("resnet18", "resnet34", "resnet50")


def ensure_shards(workdir: Path, videos: int, frames: int, width: int, height: int, jobs: int) -> Path:
    """The synthetic world packed into ``workdir`` (reused when there already); the manifest path."""
    from hdf5_tools.pack import PackConfig, pack

    out = workdir / f"synth-{videos}x{frames}-{width}x{height}"
    manifest = out / "manifest.json"
    if not manifest.exists():
        pack(
            PackConfig(
                src=f"synth:videos={videos},frames={frames},size={width}x{height},seed=0",
                out=str(out),
                nodes=1,
                jobs=jobs,
                progress=False,
            )
        )
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_input", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="where the device path and the step run (default cuda)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers per GPU (default 4)")
    ap.add_argument("--arch", default="resnet50", choices=ARCHS)
    ap.add_argument("--batch", type=int, default=64, help="samples per GPU per step (default 64)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--k", type=int, default=6, help="clip length (default 6)")
    ap.add_argument(
        "--preset",
        default="pixpro_k6",
        help="training preset whose precision (optim.precision, optim.tf32) is measured (default pixpro_k6)",
    )
    ap.add_argument(
        "--precision", default=None, choices=["fp32", "bf16", "fp16"], help="override the preset's optim.precision"
    )
    ap.add_argument(
        "--tf32", default=None, choices=["on", "off"], help="override the preset's optim.tf32 (fp32 on CUDA)"
    )
    ap.add_argument("--frame-size", default="1280x720", help="WxH of the synthetic frames (default 1280x720)")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--video-frames", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=64, help="frames decoded per call on the device (data.decode_chunk)")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per method per round (default 10)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pixpro_bench_input"))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, a few seconds (what CI runs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.workers, args.arch, args.batch, args.image_size, args.k = "cpu", 1, "resnet18", 4, 64, 2
        args.frame_size, args.videos, args.video_frames, args.chunk = "128x96", 4, 3, 3
        args.batches, args.rounds = 2, 1
    for name in ("workers", "batch", "k", "videos", "chunk", "batches", "rounds"):
        if getattr(args, name) < (0 if name == "workers" else 1):
            ap.error(f"--{name} must be >= {0 if name == 'workers' else 1}")
    if args.video_frames < args.k:
        ap.error(f"--video-frames must be >= --k = {args.k}")

    import numpy as np
    import torch

    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("bench_input: no CUDA device here, skipped (--device cpu or --smoke run it on the CPU)")
            return 0
        name = torch.cuda.get_device_name(dev)
        torch.backends.cudnn.benchmark = True
    else:
        name = "CPU"
    from pixpro_of.config import load_config
    from pixpro_of.train.precision import set_tf32

    preset = load_config(args.preset).optim  # the step runs in the training run's own precision
    precision = args.precision or preset.precision
    tf32 = preset.tf32 if args.tf32 is None else args.tf32 == "on"
    set_tf32(tf32)

    from hdf5_tools.manifest import shards_for_node
    from pixpro_of.config import SampleConfig
    from pixpro_of.data.pipeline import SampleBuilder, collate
    from pixpro_of.data.shards import ShardClipDataset
    from pixpro_of.data.strategy import FromStoredFlows, ViewsOnDevice
    from pixpro_of.model import ModelConfig, PixPro, momentum_at
    from pixpro_of.optim import LARS, param_groups
    from pixpro_of.train.data import EpochBatches, SampleSet, close_loader_iter, make_loader

    w, h = (int(v) for v in args.frame_size.lower().split("x"))
    t0 = time.perf_counter()
    manifest = ensure_shards(Path(args.workdir), args.videos, args.video_frames, w, h, jobs=min(8, os.cpu_count() or 1))
    made = time.perf_counter() - t0
    paths = shards_for_node(str(manifest), 0, 1)
    B, S = args.batch, args.image_size
    cfg = SampleConfig(image_size=S)
    F = PixPro.feature_size(S)
    positives = FromStoredFlows(cfg, F)
    views = ViewsOnDevice(cfg, dev, chunk=args.chunk, channels_last=True)
    decoded = ShardClipDataset(paths, args.k)
    raw = ShardClipDataset(paths, args.k, decode=False)
    worker_set = SampleSet(decoded, SampleBuilder(cfg, F, carry="flows"), seed=0)
    device_set = SampleSet(raw, SampleBuilder(cfg, F, carry="flows", views="device"), seed=0)
    rng = np.random.default_rng(0)
    n = (args.batches + 1) * B
    vids = rng.integers(0, decoded.num_videos, n)
    order = [(int(v), int(rng.integers(0, decoded.num_frames(int(v)) - args.k + 1))) for v in vids]
    pin = dev.type == "cuda"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def feed(samples, build_views: bool, epoch: int) -> float:
        """samples/s of complete batches on the device through a fresh loader (first batch untimed)."""
        it = iter(make_loader(samples, EpochBatches(order, epoch, B), collate, args.workers, 2, pin, 0, 0))
        try:
            for i in range(args.batches + 1):
                if i == 1:
                    sync()
                    t = time.perf_counter()
                b = next(it).batch.to(dev, channels_last=True)
                if build_views:
                    b = views.complete(b)
                b = positives.complete(b)
            sync()
            return args.batches * B / (time.perf_counter() - t)
        finally:
            close_loader_iter(it)

    host_batch = collate([device_set[(0, i, v, t)] for i, (v, t) in enumerate(order[:B])])

    def device_stage() -> float:
        sync()
        t = time.perf_counter()
        for _ in range(args.batches):
            positives.complete(views.complete(host_batch.to(dev, channels_last=True)))
        sync()
        return args.batches * B / (time.perf_counter() - t)

    def workers_alone(epoch: int) -> float:
        it = iter(make_loader(device_set, EpochBatches(order, epoch, B), collate, args.workers, 2, False, 0, 0))
        try:
            next(it)
            t = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            return args.batches * B / (time.perf_counter() - t)
        finally:
            close_loader_iter(it)

    torch.manual_seed(0)
    model = PixPro(ModelConfig(arch=args.arch)).to(dev, memory_format=torch.channels_last).train()
    opt = LARS(param_groups(model.online_modules(), 1e-5), lr=0.1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    v1 = torch.randn(B, 3, S, S, device=dev).contiguous(memory_format=torch.channels_last)
    v2 = torch.randn(B, 3, S, S, device=dev).contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    pos12 = (torch.rand(B, F * F, F * F, generator=g) < 0.05).to(dev)
    pos21 = pos12.transpose(1, 2).contiguous()
    steps = [0]

    def step_once():
        model.momentum_update(momentum_at(steps[0], 10_000))
        ctx = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            loss, _ = model(v1, v2, pos12, pos21)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        steps[0] += 1

    def train_step() -> float:
        step_once()  # one untimed step per round (cudnn autotuning, allocator)
        sync()
        t = time.perf_counter()
        for _ in range(args.batches):
            step_once()
        sync()
        return args.batches * B / (time.perf_counter() - t)

    rates = {m: [] for m in ("a", "b", "stage", "workers", "c")}
    device_stage()  # warm-up: kernels, allocator
    for r in range(args.rounds):
        rates["a"].append(feed(worker_set, False, r))
        rates["b"].append(feed(device_set, True, r))
        rates["stage"].append(device_stage())
        rates["workers"].append(workers_alone(r))
        rates["c"].append(train_step())
    med = {m: statistics.median(v) for m, v in rates.items()}
    N = args.workers
    print(
        f"device: {name} ({dev.type}); frames {w}x{h} JPEG (synthetic world, {made:.0f} s to make/find), k={args.k}, "
        f"views {S}px, batch {B}, {args.arch} {precision}, {N} workers, decode chunk {args.chunk}, "
        f"median of {args.rounds} rounds x {args.batches} batches"
    )
    print(
        f"(a) CPU workers x{N} (decode + views in the workers, positives on {dev.type}): "
        f"{med['a']:.1f} samples/s per GPU"
    )
    print(
        f"(b) device path (bytes in {N} workers; decode + views + positives on {dev.type}): "
        f"{med['b']:.1f} samples/s per GPU"
    )
    print(
        f"    device stage alone (decode + views + positives of a batch in host memory): {med['stage']:.1f} samples/s"
    )
    print(f"    workers alone (read bytes + flows, draw the views, x{N}): {med['workers']:.1f} samples/s")
    print(
        f"(c) training step ({args.arch} PixPro, {S}px, batch {B}, {precision}"
        f"{' TF32 ' + ('on' if tf32 else 'off') if precision == 'fp32' and dev.type == 'cuda' else ''} "
        f"({args.preset}) on {dev.type}): "
        f"{med['c']:.1f} samples/s per GPU"
    )
    print(
        f"input / step: (a) {med['a'] / med['c']:.2f}x, (b) {med['b'] / med['c']:.2f}x  (goal >= 1.2x: the GPU "
        "never waits)"
    )
    serial = 1.0 / (1.0 / med["stage"] + 1.0 / med["c"])
    print(
        f"device path: {med['b']:.1f} samples/s per GPU (goal >= 1000); device stage and step in series on one "
        f"GPU: {serial:.1f} samples/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
