"""PixPro training step vs the bare two-view encoder forward/backward plus momentum forward (CPU).

- bare:   online encoder forward + backward on view 1 and view 2 (separately, BN per view) and the
          momentum encoder's forward on both views (no grad) — the unavoidable work of any
          two-view momentum method with this backbone;
- pixpro: the whole PixPro step without the optimiser: momentum update, forward of both branches
          (encoders, projectors, PPM, both loss terms with 7x7 positive matrices) and backward;
- +lars:  the same plus the LARS step on all online parameters.

Methods are interleaved per iteration and the median time of each is reported; the overhead
``pixpro / bare − 1`` is measured in this one run (goal: <= 10 %).

    .venv/bin/python bench/bench_step.py                          # resnet18, batch 8, 224 px, ~40 s
    .venv/bin/python bench/bench_step.py --arch resnet50 --batch 8 --iters 5
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_step", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=6, help="timed iterations per method (default 6)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)

    import torch

    from pixpro_of.model import ModelConfig, PixPro, momentum_at
    from pixpro_of.optim import LARS, param_groups

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PixPro(ModelConfig(arch=args.arch)).train()
    opt = LARS(param_groups(model.online_modules(), 1e-5), lr=0.1)
    B, S = args.batch, args.image_size
    F = model.feature_size(S)
    v1, v2 = torch.randn(B, 3, S, S), torch.randn(B, 3, S, S)
    g = torch.Generator().manual_seed(0)
    pos12 = torch.rand(B, F * F, F * F, generator=g) < 0.05
    pos21 = torch.rand(B, F * F, F * F, generator=g) < 0.05
    print(f"{args.arch}, batch {B}, {S}px views (C5 {F}x{F}), {args.threads} thread(s), "
          f"{sum(p.numel() for m in model.online_modules() for p in m.parameters()) / 1e6:.1f} M online parameters")

    def bare():
        for v in (v1, v2):
            model.encoder(v).mean().backward()
        with torch.no_grad():
            model.encoder_k(v1)
            model.encoder_k(v2)
        model.zero_grad(set_to_none=True)

    step = [0]

    def pixpro():
        model.momentum_update(momentum_at(step[0], 1000))
        loss, _ = model(v1, v2, pos12, pos21)
        loss.backward()
        model.zero_grad(set_to_none=True)
        step[0] += 1

    def pixpro_lars():
        model.momentum_update(momentum_at(step[0], 1000))
        loss, _ = model(v1, v2, pos12, pos21)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step[0] += 1

    methods = {"bare (2-view encoder fwd/bwd + momentum fwd)": bare, "pixpro step (no optimiser)": pixpro,
               "pixpro step + LARS": pixpro_lars}
    times = {m: [] for m in methods}
    for _ in range(args.warmup):
        for fn in methods.values():
            fn()
    for _ in range(args.iters):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    for m, t in med.items():
        print(f"{m:46s} {t * 1000:9.1f} ms/step  {B / t:7.2f} img/s")
    base = med["bare (2-view encoder fwd/bwd + momentum fwd)"]
    print(f"PixPro overhead vs bare: {med['pixpro step (no optimiser)'] / base - 1:+.1%} (goal <= +10%); "
          f"with LARS: {med['pixpro step + LARS'] / base - 1:+.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
