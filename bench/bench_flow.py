"""Benchmark: flow estimators (pairs/s) and flow operations, measured in one run.

Measures, on frames of the synthetic driving world:

* OpenCV DIS (ultrafast / fast / medium) at 1280x720 on one core (``cv2.setNumThreads(1)``),
* torchvision RAFT-small and RAFT-large (12 iterations, fp32, batch 1, random weights: speed does
  not depend on the weights) on CPU at 640x360 with ``--threads`` torch threads (default 1),
* chaining 5 flows and one FB mask at 720x1280 (what the trainer does per clip with ``--flow_up``),

and prints pairs/s, CPU seconds per pair (the wall time on a shared machine also measures other
processes) and ratios from this one run: RAFT-large / RAFT-small time, RAFT-small / DIS-medium time,
DIS medium / ultrafast time.

GPU run (issue 5: RAFT-small and -large, bf16, batch 8, 1280x720)::

    python bench/bench_flow.py --only raft --device cuda --amp bf16 --batch 8 --raft-size 1280x720 --pairs 8

Usage: ``python bench/bench_flow.py [--pairs 2] [--threads 1] [--only dis|raft|ops]``. The default
run takes about a minute on this 2-core machine.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np
import torch

from plumbing.parse import parse_wxh


def frames(size, n=3, seed=0):
    from synth import render_video

    return render_video(seed, n, size=size).rgb


def timed(fn, reps, sync=None):
    """(wall s, cpu s) per call of fn over ``reps`` calls after one warm-up call."""
    fn()
    if sync:
        sync()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - w0) / reps, (time.process_time() - c0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=2, help="timed calls per estimator (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for RAFT on CPU")
    p.add_argument("--dis-size", default="1280x720")
    p.add_argument("--raft-size", default="640x360")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--batch", type=int, default=1, help="RAFT pairs per call")
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--only", choices=["dis", "raft", "ops"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from flow.estimators import make_estimator

    load0 = os.getloadavg()[0]
    res = {}
    if a.only in (None, "dis"):
        import cv2

        cv2.setNumThreads(1)
        rgb = frames(parse_wxh(a.dis_size))
        for preset in ("ultrafast", "fast", "medium"):
            est = make_estimator("dis", dis_preset=preset, threads=1)
            wall, cpu = timed(functools.partial(est, rgb[0:1], rgb[1:2]), max(a.pairs, 3))
            res[f"dis-{preset}"] = wall
            print(f"DIS {preset:<9} {a.dis_size} 1 core : {1 / wall:7.2f} pairs/s  ({cpu:.3f} CPU s/pair)", flush=True)
    if a.only in (None, "raft"):
        rgb = frames(parse_wxh(a.raft_size))
        amp = None if a.amp == "fp32" else a.amp
        sync = torch.cuda.synchronize if a.device.startswith("cuda") else None
        dev_name = (
            torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else f"CPU, {a.threads} thread(s)"
        )
        x1 = np.repeat(rgb[0:1], a.batch, 0)
        x2 = np.repeat(rgb[1:2], a.batch, 0)
        for name in ("raft-small", "raft-large"):
            est = make_estimator(name, device=a.device, iters=a.iters, amp=amp)
            wall, cpu = timed(functools.partial(est, x1, x2), a.pairs, sync)
            res[name] = wall / a.batch
            print(
                f"{name:<10} {a.raft_size} {a.amp} batch {a.batch} on {dev_name}: {a.batch / wall:7.2f} pairs/s "
                f"({cpu / a.batch:.2f} CPU s/pair)",
                flush=True,
            )
    if a.only in (None, "ops"):
        from flow.ops import chain_backward, chain_flows, fb_consistency

        g = torch.Generator().manual_seed(0)
        fl = torch.randn(1, 5, 2, 720, 1280, generator=g) * 3
        wall_c, _ = timed(lambda: chain_flows(fl), 3)
        cf = chain_flows(fl)
        cb = chain_backward(-fl)
        wall_m, _ = timed(lambda: fb_consistency(cf, cb, "seed"), 3)
        print(
            f"chain_flows 5 x 720x1280: {wall_c * 1e3:.0f} ms; fb_consistency 720x1280: {wall_m * 1e3:.0f} ms "
            f"({torch.get_num_threads()} thread(s))"
        )
    print(f"load average at start {load0:.2f} (2-core machine; other processes share it)")
    if "raft-small" in res and "raft-large" in res:
        print(f"ratio RAFT-large / RAFT-small time per pair: {res['raft-large'] / res['raft-small']:.2f}")
    if "raft-small" in res and "dis-medium" in res:
        print(
            f"ratio RAFT-small ({a.raft_size}) / DIS-medium ({a.dis_size}) time per pair: "
            f"{res['raft-small'] / res['dis-medium']:.2f}"
        )
    if "dis-medium" in res and "dis-ultrafast" in res:
        print(f"ratio DIS medium / ultrafast time per pair: {res['dis-medium'] / res['dis-ultrafast']:.2f}")


if __name__ == "__main__":
    main()
