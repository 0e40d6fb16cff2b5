"""Distributed benchmarks on this machine (issue 7), printed as ratios measured in one run.

1. Allreduce of a ResNet-50-sized gradient (25.6 M float32 = 102 MB) with each backend under
   `mpirun -np 2`: seconds per allreduce and algorithm bandwidth (bytes / time).
2. Training-step time of 2 ranks vs 1 rank at a fixed per-rank batch (SyncBN on, gradient
   averaging), each backend: the ratio is the distributed overhead (goal <= 1.15x).

usage: python bench/bench_dist.py [--numel 25557032] [--reps 5] [--arch resnet18] [--batch 16] [--size 112] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


def _worker_allreduce(backend: str, numel: int, reps: int) -> None:
    from pixpro_of.dist.backend import make_backend

    torch.set_num_threads(1)
    be = make_backend(backend, device="cpu")
    t = torch.ones(numel)
    be.allreduce(t, "sum")  # warm-up (connections, buffers)
    be.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = be.allreduce(t, "sum")
    dt = (time.perf_counter() - t0) / reps
    assert float(out[0]) == be.world_size
    if be.is_main:
        print(json.dumps({"backend": backend, "seconds": dt, "bytes": numel * 4}))
    be.shutdown()


def _worker_step(backend: str, arch: str, batch: int, size: int, steps: int, syncbn: bool = True) -> None:
    import torchvision

    from pixpro_of.dist.backend import make_backend

    torch.set_num_threads(1)
    torch.manual_seed(0)
    be = make_backend(backend, device="cpu")
    net = getattr(torchvision.models, arch)(num_classes=16)
    if syncbn:
        net = be.convert_sync_batchnorm(net)
    be.broadcast_parameters(net)
    model = be.wrap_model(net)
    opt = be.wrap_optimizer(torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), net)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 16, (batch,))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step = sorted(times[1:])[len(times[1:]) // 2]  # median after warm-up
    worst = be.allreduce(torch.tensor([step]), "sum").item() / be.world_size
    if be.is_main:
        print(json.dumps({"backend": backend, "world": be.world_size, "step_s": worst}))
    be.shutdown()


def _run(np_: int, args) -> dict:
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        OMPI_MCA_mpi_yield_when_idle="1",
    )
    if np_ == 1:
        cmd = [sys.executable, __file__] + args
    else:
        cmd = ["mpirun", "-np", str(np_), "--bind-to", "none", sys.executable, __file__] + args
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"benchmark worker failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=25_557_032, help="elements (ResNet-50 has 25,557,032 parameters)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=16, help="per-rank batch")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--no-syncbn", action="store_true", help="plain BN per rank (isolates SyncBN's cost)")
    ap.add_argument("--worker", choices=["allreduce", "step"], help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "allreduce":
        return _worker_allreduce(a.backend, a.numel, a.reps)
    if a.worker == "step":
        return _worker_step(a.backend, a.arch, a.batch, a.size, a.steps, not a.no_syncbn)
    print(f"machine: {os.cpu_count()} cores; 2 ranks share them (CPU tensors)")
    print(f"1. allreduce of {a.numel * 4 / 1e6:.1f} MB (float32) across 2 ranks")
    for be in ("horovod", "ddp"):
        r = _run(2, ["--worker", "allreduce", "--backend", be, "--numel", str(a.numel), "--reps", str(a.reps)])
        print(
            f"   {be:8s} {r['seconds'] * 1e3:8.1f} ms  {r['bytes'] / r['seconds'] / 1e9:6.2f} GB/s algorithm bandwidth"
        )
    print(f"2. step time, {a.arch} {a.size}px, per-rank batch {a.batch}, 2 ranks vs 1 rank (median step)")
    common = [
        "--worker",
        "step",
        "--arch",
        a.arch,
        "--batch",
        str(a.batch),
        "--size",
        str(a.size),
        "--steps",
        str(a.steps),
    ]
    for sync in (True, False):
        extra = [] if sync else ["--no-syncbn"]
        one = _run(1, common + extra + ["--backend", "single"])
        for be in ("horovod", "ddp"):
            two = _run(2, common + extra + ["--backend", be])
            print(
                f"   {be:8s} {'SyncBN ' if sync else 'local BN'} 1 rank {one['step_s'] * 1e3:7.1f} ms   "
                f"2 ranks {two['step_s'] * 1e3:7.1f} ms   ratio {two['step_s'] / one['step_s']:.2f}x (goal <= 1.15x)"
            )


if __name__ == "__main__":
    main()
