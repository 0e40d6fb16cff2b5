"""PixPro training step vs the bare two-view encoder forward/backward plus momentum forward (CPU).

- bare:   online encoder forward + backward on view 1 and view 2 (separately, BN per view) and the
          momentum encoder's forward on both views (no grad) — the unavoidable work of any
          two-view momentum method with this backbone;
- pixpro: the whole PixPro step without the optimiser: momentum update, forward of both branches
          (encoders, projectors, PPM, both loss terms with 7x7 positive matrices) and backward;
- +lars:  the same plus the LARS step on all online parameters.

Methods are interleaved per iteration and the median time of each is reported; the overhead
``pixpro / bare − 1`` is measured in this one run (goal: <= 10 %), first with the C allocator as the
process started, then (``--malloc both``, the default) again after telling glibc to keep freed
memory mapped (:func:`keep_freed_memory`; a process setting, not a change to the model). Also
printed: the multiply-accumulates of the bare step and what the projector and the PPM add to it,
from the shapes (:func:`step_macs`) — the overhead the heads would cost at the encoder's MAC rate —
and the minor page faults per step of each method (memory the allocator gave back to the OS and
maps again: both views' graphs are alive at once in the PixPro step, one at a time in the bare one).

    .venv/bin/python bench/bench_step.py                          # resnet18, batch 8, 224 px, ~80 s
    .venv/bin/python bench/bench_step.py --arch resnet50 --batch 8 --iters 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from pixpro_of.train.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, keep_freed_memory


def step_macs(model, batch: int, image_size: int):
    """Multiply-accumulates of one step, from the shapes: ``(bare, projector, ppm)``.

    - encoder forward ``E``: sum over its convolutions of ``out.numel() · in/groups · kh · kw``
      (measured with forward hooks on one forward pass); the backward of a convolution is two
      products of the same size (input and weight gradients), except the first convolution's input
      gradient, which is not needed. ``bare = 2 views · (3E − E_conv1) + 2 · E`` (momentum forward);
    - projector per view ``P = B·F²·(C5·hidden + hidden·out)``: ``8P`` (online forward and both
      gradients of both views, ``3·2P``, plus the momentum forward of both, ``2P``);
    - PPM per view ``B·(F²·d·d + 2·F⁴·d)`` (value transform and the two similarity products,
      ``layers = 1``), online only: ``3·2`` times that.

    BN, ReLU, pooling, normalisation and the loss are not counted (element-wise, a few % of time).
    """
    import torch
    from torch import nn

    convs = []
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out: convs.append(
                out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            )
        )
        for m in model.encoder.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model.encoder.eval()(torch.zeros(batch, 3, image_size, image_size))
    finally:
        model.encoder.train()
        for h in hooks:
            h.remove()
    enc, first = sum(convs), convs[0]
    f2 = model.feature_size(image_size) ** 2
    lin1, lin2 = model.projector.linear1, model.projector.linear2
    proj = batch * f2 * (lin1.in_channels * lin1.out_channels + lin2.in_channels * lin2.out_channels)
    d = lin2.out_channels
    vt = model.ppm.value_transform
    vt_macs = d * d if isinstance(vt, nn.Conv2d) else sum(p.numel() for p in vt.parameters() if p.ndim > 1)
    ppm = batch * (f2 * vt_macs + 2 * f2 * f2 * d)
    return 2 * (3 * enc - first) + 2 * enc, 8 * proj, 6 * ppm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_step", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=6, help="timed iterations per method (default 6)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--malloc",
        default="both",
        choices=["default", "keep", "both"],
        help="measure with the allocator as started, after keep_freed_memory(), or both in turn (default both)",
    )
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
    print(
        f"{args.arch}, batch {B}, {S}px views (C5 {F}x{F}), {args.threads} thread(s), "
        f"{sum(p.numel() for m in model.online_modules() for p in m.parameters()) / 1e6:.1f} M online parameters"
    )
    bare_macs, proj_macs, ppm_macs = step_macs(model, B, S)
    print(
        f"MACs per step (from the shapes): bare {bare_macs / 1e9:.1f} G; the PixPro step adds projector "
        f"{proj_macs / 1e9:.2f} G ({proj_macs / bare_macs:.1%} of bare) + PPM {ppm_macs / 1e9:.2f} G "
        f"({ppm_macs / bare_macs:.1%}) = +{(proj_macs + ppm_macs) / bare_macs:.1%} at the encoder's MAC rate"
    )

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

    methods = {
        "bare (2-view encoder fwd/bwd + momentum fwd)": bare,
        "pixpro step (no optimiser)": pixpro,
        "pixpro step + LARS": pixpro_lars,
    }

    def measure(label: str) -> None:
        times = {m: [] for m in methods}
        faults = {m: [] for m in methods}
        for _ in range(args.warmup):
            for fn in methods.values():
                fn()
        for _ in range(args.iters):
            for name, fn in methods.items():
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        med = {m: statistics.median(t) for m, t in times.items()}
        print(f"-- {label}")
        for m, t in med.items():
            print(
                f"{m:46s} {t * 1000:9.1f} ms/step  {B / t:7.2f} img/s  "
                f"{statistics.median(faults[m]):8.0f} page faults/step"
            )
        base = med["bare (2-view encoder fwd/bwd + momentum fwd)"]
        print(
            f"PixPro overhead vs bare: {med['pixpro step (no optimiser)'] / base - 1:+.1%} (goal <= +10%; "
            f"+{(proj_macs + ppm_macs) / bare_macs:.1%} from the heads' MACs at the encoder's rate); "
            f"with LARS: {med['pixpro step + LARS'] / base - 1:+.1%}"
        )

    if args.malloc in ("default", "both"):
        measure("allocator as the process started (glibc defaults unless MALLOC_* is set)")
    if args.malloc in ("keep", "both"):
        if keep_freed_memory():
            measure(
                f"glibc mallopt: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
                f"{TRIM_THRESHOLD >> 30} GiB (freed memory stays mapped)"
            )
        else:
            print("-- (not glibc: --malloc keep skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
