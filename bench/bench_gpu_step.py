"""PixPro training throughput vs supervised ResNet training, measured in one run (GPU; runs on CPU too).

- supervised: torchvision ResNet (fc to 1000 classes), cross-entropy on random labels, one SGD
              step: images/s;
- pixpro:     the whole PixPro step (momentum update, both branches on both views, projector, PPM,
              both loss terms on 7x7 positive matrices, backward, LARS step): samples/s (one sample
              = two views).

A PixPro sample costs about 8/3 ≈ 2.7 supervised images of backbone work (two views through the
online encoder forward + backward, 3 units each, and through the momentum encoder forward, 1 unit
each, against 3 units for one supervised image), so the figure of merit is
``pixpro samples/s × 2.7 / supervised images/s`` (goal: >= 0.9).

With ``--raft-pairs N`` it also times RAFT-small (12 iterations) on N frame pairs of
``--raft-size`` (default 1280x720): the cost of ``data.flow_source=raft`` (2·(k−1) pairs per sample).

Precision is the preset's (``--preset``, default ``pixpro_k6``: fp32 with TF32 on CUDA), so the
figures are those of the training run; ``--precision``/``--tf32`` measure another.

Methods are interleaved; the median of ``--iters`` timed steps after ``--warmup`` is reported.

    python bench/bench_gpu_step.py                                   # cuda, resnet50, batch 64, pixpro_k6's precision
    python bench/bench_gpu_step.py --precision bf16                  # the same step under bf16 autocast
    python bench/bench_gpu_step.py --raft-pairs 16
    python bench/bench_gpu_step.py --device cpu --arch resnet18 --batch 2 --iters 2 --warmup 1   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

ARCHS = ("resnet18", "resnet34", "resnet50")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_gpu_step", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="resnet50", choices=ARCHS)
    ap.add_argument("--batch", type=int, default=64, help="samples per step (default 64)")
    ap.add_argument("--image-size", type=int, default=224)
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
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--raft-pairs", type=int, default=0, help="also time RAFT-small on this many pairs (0: skip)")
    ap.add_argument("--raft-size", default="1280x720", help="WxH of the RAFT frames (default 1280x720)")
    args = ap.parse_args(argv)
    from pixpro_of.config import load_config

    preset = load_config(args.preset).optim
    args.precision = args.precision or preset.precision
    tf32 = preset.tf32 if args.tf32 is None else args.tf32 == "on"

    import torch
    import torchvision

    from pixpro_of.model import ModelConfig, PixPro, momentum_at
    from pixpro_of.optim import LARS, param_groups

    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("bench_gpu_step: no CUDA device here, skipped (--device cpu runs it on the CPU)")
            return 0
        name = torch.cuda.get_device_name(dev)
        torch.backends.cudnn.benchmark = True
    else:
        name = "CPU"
    from pixpro_of.train.precision import set_tf32

    set_tf32(tf32)  # as the trainer sets it (optim.tf32)
    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.manual_seed(0)
    B, S = args.batch, args.image_size
    sup = getattr(torchvision.models, args.arch)(weights=None).to(dev, memory_format=fmt).train()
    sup_opt = torch.optim.SGD(sup.parameters(), lr=0.1, momentum=0.9)
    sup_scaler = torch.amp.GradScaler(dev.type, enabled=args.precision == "fp16")
    model = PixPro(ModelConfig(arch=args.arch)).to(dev, memory_format=fmt).train()
    opt = LARS(param_groups(model.online_modules(), 1e-5), lr=0.1)
    scaler = torch.amp.GradScaler(dev.type, enabled=args.precision == "fp16")
    F = model.feature_size(S)
    x = torch.randn(B, 3, S, S, device=dev).contiguous(memory_format=fmt)
    v1 = torch.randn(B, 3, S, S, device=dev).contiguous(memory_format=fmt)
    v2 = torch.randn(B, 3, S, S, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (B,), device=dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    pos12 = (torch.rand(B, F * F, F * F, generator=g) < 0.05).to(dev)
    pos21 = (torch.rand(B, F * F, F * F, generator=g) < 0.05).to(dev)
    step = [0]

    def supervised():
        with autocast():
            loss = torch.nn.functional.cross_entropy(sup(x), y)
        sup_opt.zero_grad(set_to_none=True)
        sup_scaler.scale(loss).backward()
        sup_scaler.step(sup_opt)
        sup_scaler.update()

    def pixpro():
        model.momentum_update(momentum_at(step[0], 10_000))
        with autocast():
            loss, _ = model(v1, v2, pos12, pos21)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step[0] += 1

    methods = {"supervised": supervised, "pixpro": pixpro}
    raft = None
    if args.raft_pairs > 0:
        from flow.estimators import make_estimator

        w, h = (int(v) for v in args.raft_size.lower().split("x"))
        raft = make_estimator("raft-small", weights=None, device=dev, iters=12)
        f1 = torch.randint(0, 256, (args.raft_pairs, h, w, 3), dtype=torch.uint8, device=dev)
        f2 = torch.randint(0, 256, (args.raft_pairs, h, w, 3), dtype=torch.uint8, device=dev)
        methods["raft"] = lambda: raft(f1, f2)

    times = {m: [] for m in methods}
    for _ in range(args.warmup):
        for fn in methods.values():
            fn()
            sync()
    for _ in range(args.iters):
        for m, fn in methods.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    tf32_note = f" (TF32 {'on' if tf32 else 'off'})" if args.precision == "fp32" and dev.type == "cuda" else ""
    print(
        f"device: {name}; {args.arch}, batch {B}, {S}px, precision {args.precision}{tf32_note} ({args.preset}), "
        f"{'contiguous' if args.no_channels_last else 'channels_last'}, median of {args.iters} steps"
    )
    sup_rate = B / med["supervised"]
    pix_rate = B / med["pixpro"]
    print(f"supervised {args.arch}: {med['supervised'] * 1000:8.1f} ms/step  {sup_rate:8.1f} img/s")
    print(f"pixpro step (+LARS):    {med['pixpro'] * 1000:8.1f} ms/step  {pix_rate:8.1f} samples/s (2 views each)")
    print(f"pixpro samples/s x 2.7 / supervised img/s = {pix_rate * 2.7 / sup_rate:.3f} (goal >= 0.9)")
    if raft is not None:
        rate = args.raft_pairs / med["raft"]
        print(
            f"RAFT-small, 12 iters, {args.raft_size}: {rate:.1f} pairs/s "
            f"(flow on the fly at k=6 needs 10 pairs per sample: {rate / 10:.1f} samples/s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
