"""The device check: one command on the lent GPU machine, within one lease, that returns numbers.

Runs on that machine as it is (its own ``python3``, torch 2.11 / torchvision 0.26 there; the
pinned 2.14.1 / 0.29.1 here), with the repository on ``PYTHONPATH``, the wheels it lacks
(simplejpeg) carried from ``make gpu-wheels`` and the data packed here beforehand by
``make gpu-check-data`` (``--prepare``): no build, no network, no packing on the device.
``bench/gpu_check.sh`` is the wrapper to call there (it installs the carried wheels first).

Each step runs in its own process under its own time limit (cut to what is left of the budget;
a step with under 15 s left is skipped); the whole plan fits 480 s with the wrapper's share.
Steps (GPU sizes; ``--cpu``: the same code with tiny sizes on the CPU):

  smoke      the self-check of ``launcher submit --smoke`` (pixpro_of/smoke/) as one rank under
             torchrun and launcher.supervise, dist.backend=ddp: the imports, the GPUs, an NCCL
             allreduce, the data's folder and free space, 20 steps of the preset, a stop sent to
             itself (checkpoint, exit 75) and the resume (exit 0, done marker); its lines and
             verdict, and the card, driver, memory, torch / torchvision / CUDA / cuDNN
  input      the device input stage alone: views (nvJPEG decode, crops, colour ops) and positives
             from the stored flows, on pre-collated batches, timed with CUDA events: samples/s
  step_fp32  the real trainer on the k = 6 preset (ResNet-50, 64 samples on one GPU, decode and
             positives on the device) in its own precision (fp32, TF32 on): samples/s, the views
             stage's share, peak memory per sample
  step_bf16  the same in bf16 autocast
  raft       RAFT-small (12 updates) on frame pairs at 1280x720: pairs/s in fp32 and bf16 and
             their agreement (mean end-point difference); random weights (no download there), so
             the flows are not meaningful, only the cost and the bf16-vs-fp32 difference are

Results: at most 8 files under ``--out`` ($OUT): ``summary.txt`` (every figure and the card's
name), ``summary.json`` (the same as data), ``steps.log`` (every step's output).

    python bench/gpu_check.py --dry-run             # the plan and its time budget; imports no torch
    python bench/gpu_check.py --prepare             # here: pack the data into gpu_check_data/
    bash bench/gpu_check.sh --out "$OUT"            # there: the check
    python bench/gpu_check.py --cpu --out /tmp/gc   # here: the whole check end to end on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
TOTAL_BUDGET_S = 480  # one device command (10 minutes) less the start and the transfers' margin
WRAPPER_S = 30  # gpu_check.sh's share: the carried wheels and this tree installed into /tmp
MIN_STEP_S = 15  # a step with less than this left is skipped
MAX_RESULT_FILES = 8
DATA_DIR = ROOT / "gpu_check_data"
WHEEL_DIR = ROOT / "gpu_wheels"

# name, time limit (s), what it measures
STEPS: List[Tuple[str, int, str]] = [
    ("smoke", 170, "the launcher's smoke as 1 rank (ddp, torchrun): imports, GPUs, NCCL, 20 steps, stop + resume"),
    ("input", 55, "device input stage alone (views + positives), CUDA events"),
    ("step_fp32", 90, "trainer, k6 preset, fp32/TF32: samples/s, views share, peak memory/sample"),
    ("step_bf16", 80, "trainer, k6 preset, bf16 autocast: samples/s, peak memory/sample"),
    ("raft", 55, "RAFT-small pairs/s fp32 vs bf16, agreement (random weights)"),
]

# sizes per mode: the GPU check and the CPU proof run
SIZES = {
    "gpu": dict(
        config="pixpro_k6",
        device="cuda",
        batch=64,
        steps=24,
        input_batches=6,
        raft_pairs=8,
        raft_size=(1280, 720),
        extra=[],
    ),
    "cpu": dict(
        config="cpu_small",
        device="cpu",
        batch=2,
        steps=4,
        input_batches=2,
        raft_pairs=2,
        raft_size=(256, 128),
        extra=[
            "data.k=3",
            "data.image_size=64",
            "model.proj_hidden=64",
            "model.proj_dim=32",
            "data.positives_on=device",
            "data.decode_on=device",
            "run.threads=1",
        ],
    ),
}
# the world packed for the check (about 15 MB: within the device tree limit of 64 MiB)
WORLD = dict(videos=32, frames=16, size="512x288", seed=0)
TINY_WORLD = dict(videos=4, frames=6, size="128x96", seed=0)


def plan(budget_s: int = TOTAL_BUDGET_S, only: Optional[List[str]] = None) -> List[Tuple[str, int, str]]:
    """The steps with their time limits for a budget of ``budget_s`` seconds (the wrapper's share
    included): the default limits, scaled down alike when they do not fit."""
    steps = [s for s in STEPS if not only or s[0] in only]
    room = max(0, int(budget_s) - WRAPPER_S)
    total = sum(t for _, t, _ in steps)
    if total <= room:
        return list(steps)
    scale = room / total
    return [(n, int(t * scale), what) for n, t, what in steps]


def print_plan(budget_s: int, only: Optional[List[str]], mode: str) -> None:
    steps = plan(budget_s, only)
    print(
        f"gpu_check plan ({mode}): budget {budget_s} s = wrapper {WRAPPER_S} s (carried wheels, this tree) "
        f"+ steps {sum(t for _, t, _ in steps)} s"
    )
    for i, (name, limit, what) in enumerate(steps, 1):
        print(f"step {i} {name:<10} {limit:>4} s  {what}")
    total = WRAPPER_S + sum(t for _, t, _ in steps)
    print(
        f"total {total} s <= {budget_s} s; results: summary.txt, summary.json, steps.log "
        f"(at most {MAX_RESULT_FILES} files)"
    )


# ----------------------------------------------------------------- preparing the data (here, on CPU)
def prepare(data: Path, world: Dict) -> int:
    from hdf5_tools.pack import PackConfig, pack

    manifest = data / "manifest.json"
    if manifest.exists():
        print(f"gpu_check --prepare: {data} has a manifest already (remove it to pack again)")
        return 0
    src = "synth:videos={videos},frames={frames},size={size},seed={seed}".format(**world)
    t = time.perf_counter()
    pack(PackConfig(src=src, out=str(data), nodes=1, progress=False))
    size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    print(f"gpu_check --prepare: packed {src} into {data} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t:.0f} s")
    return 0


# ----------------------------------------------------------------- the steps (each in its own process)
def _manifest(data: Path) -> str:
    m = data / "manifest.json"
    if not m.exists():
        raise SystemExit(f"gpu_check: no packed data at {m} (make gpu-check-data, or --prepare)")
    return str(m)


def _train_args(sz: Dict, data: Path, run: Path, steps: int, extra: List[str]) -> List[str]:
    return [
        "train",
        "--config",
        sz["config"],
        "--run-dir",
        str(run),
        f"data.shards=[{_manifest(data)}]",
        "data.synthetic=false",
        f"data.batch_size={sz['batch']}",
        f"run.device={sz['device']}",
        f"run.max_steps={steps}",
        f"data.num_workers={_workers(sz)}",
        "checkpoint.every_epochs=0",
        "checkpoint.keep_epochs=[]",
        "log.tensorboard=false",
        "log.every_steps=1",
        *sz["extra"],
        *extra,
    ]


def _workers(sz: Dict) -> int:
    if sz["device"] == "cpu":
        return 1
    return max(1, min((os.cpu_count() or 4) - 2, 12))


def _metrics(run: Path) -> List[Dict[str, str]]:
    import csv

    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _median_after_warmup(rows: List[Dict[str, str]], key: str) -> Optional[float]:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    if not vals:
        return None
    return statistics.median(vals[len(vals) // 3 :] or vals)


def _card(sz: Dict) -> Dict:
    """The card, driver and versions of this machine (the smoke step's first figures)."""
    import platform

    import torch
    import torchvision

    out: Dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpus": os.cpu_count(),
    }
    if sz["device"] == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: torch sees no CUDA device here (--cpu runs the check on the CPU)")
        p = torch.cuda.get_device_properties(0)
        out.update(
            card=torch.cuda.get_device_name(0),
            memory_gib=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            r = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=15
            )
            out["driver"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "?"
    else:
        out.update(card=f"CPU ({platform.processor() or platform.machine()})", memory_gib=None)
    import simplejpeg  # noqa: F401 - carried as a wheel where the image lacks it

    return out


def step_input(sz: Dict, data: Path, work: Path) -> Dict:
    from dataclasses import replace

    import numpy as np
    import torch

    from hdf5_tools.manifest import shards_for_node
    from pixpro_of.config import DataConfig
    from pixpro_of.data.pipeline import SampleBuilder, collate
    from pixpro_of.data.shards import ShardClipDataset
    from pixpro_of.data.strategy import FromStoredFlows, ViewsOnDevice, stage_timer

    dev = torch.device(sz["device"])
    k = 6 if sz["config"] == "pixpro_k6" else 3
    size = 224 if sz["config"] == "pixpro_k6" else 64
    cfg = DataConfig(image_size=size, k=k)
    shards = shards_for_node(_manifest(data), 0, 1)
    raw = ShardClipDataset(shards, k, decode=False)
    builder = SampleBuilder(cfg, 7 if size == 224 else 2, carry="flows", views="device")
    frames = raw.num_frames(0)
    starts = max(1, frames - k + 1)
    batches = []
    for b in range(sz["input_batches"] + 1):  # the first is warm-up
        samples = []
        for i in range(sz["batch"]):
            n = b * sz["batch"] + i
            samples.append(
                builder(raw[(n % raw.num_videos, (n // raw.num_videos) % starts)], np.random.default_rng([0, n]))
            )
        batches.append(collate(samples))
    views = ViewsOnDevice(cfg, dev, chunk=64, channels_last=dev.type == "cuda")
    positives = FromStoredFlows(cfg, 7 if size == 224 else 2)
    times_v, times_all = [], []
    for i, b in enumerate(batches):
        with stage_timer(dev) as whole:
            moved = replace(b.to(dev), params1=b.params1, params2=b.params2)  # draws stay on the host
            done, _ = views.build(moved)
            positives.complete(done)
        if i:
            times_v.append(views.last_seconds)
            times_all.append(whole.seconds)
    per_v, per_all = statistics.median(times_v), statistics.median(times_all)
    return {
        "batch": sz["batch"],
        "views_s_per_batch": round(per_v, 4),
        "input_s_per_batch": round(per_all, 4),
        "views_samples_per_s": round(sz["batch"] / per_v, 1),
        "input_samples_per_s": round(sz["batch"] / per_all, 1),
    }


def _train_in_process(args: List[str]) -> int:
    from pixpro_of.__main__ import main

    return main(args)


def _step_train(sz: Dict, data: Path, work: Path, precision: str) -> Dict:
    import torch

    run = work / f"train_{precision}"
    dev_cuda = sz["device"] == "cuda"
    if dev_cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    rc = _train_in_process(_train_args(sz, data, run, sz["steps"], [f"optim.precision={precision}"]))
    took = time.perf_counter() - t
    rows = _metrics(run)
    if rc != 0 or not rows:
        raise SystemExit(f"gpu_check: the trainer exited {rc} after {len(rows)} steps (log: {run}/logs)")
    step_s = _median_after_warmup(rows, "time/step")
    views_s = _median_after_warmup(rows, "time/views")
    out = {
        "precision": precision,
        "steps": len(rows),
        "batch": sz["batch"],
        "wall_s": round(took, 1),
        "step_s": round(step_s, 4),
        "samples_per_s": round(sz["batch"] / step_s, 1),
        "views_s": round(views_s, 4) if views_s is not None else None,
        "data_wait_s": round(_median_after_warmup(rows, "time/data") or 0.0, 4),
        "last_loss": float(rows[-1]["loss"]),
    }
    if dev_cuda:
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_gib=round(peak / 2**30, 2), peak_mib_per_sample=round(peak / 2**20 / sz["batch"], 1))
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out.update(peak_host_rss_gib=round(peak / 2**30, 2), peak_mib_per_sample=round(peak / 2**20 / sz["batch"], 1))
    return out


def step_step_fp32(sz, data, work):
    return _step_train(sz, data, work, "fp32")


def step_step_bf16(sz, data, work):
    return _step_train(sz, data, work, "bf16")


def step_raft(sz: Dict, data: Path, work: Path) -> Dict:
    import torch
    import torch.nn.functional as F
    from torchvision.models.optical_flow import raft_small

    from hdf5_tools.manifest import shards_for_node
    from pixpro_of.data.shards import ShardClipDataset

    dev = torch.device(sz["device"])
    torch.manual_seed(0)
    model = raft_small(weights=None).to(dev).eval()  # random weights: nothing can be downloaded there
    w, h = sz["raft_size"]
    ds = ShardClipDataset(shards_for_node(_manifest(data), 0, 1), 2)
    frames = []
    for i in range(sz["raft_pairs"]):
        clip = ds[(i % ds.num_videos, 0)]
        pair = [torch.from_numpy(clip[key]).permute(2, 0, 1).float() for key in ("frame1", "frame2")]
        frames.append(torch.stack(pair))
    x = torch.stack(frames).to(dev)  # [N, 2, 3, H, W]
    x = F.interpolate(x.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=True).view(-1, 2, 3, h, w)
    x = x / 127.5 - 1.0

    def run(dtype) -> Tuple[torch.Tensor, float]:
        ctx = torch.autocast(dev.type, dtype=dtype) if dtype is not None else _Null()
        with torch.no_grad(), ctx:
            model(x[:1, 0], x[:1, 1], num_flow_updates=12)  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            flow = model(x[:, 0], x[:, 1], num_flow_updates=12)[-1].float()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return flow, time.perf_counter() - t

    f32, t32 = run(None)
    fbf, tbf = run(torch.bfloat16)
    epe = (f32 - fbf).norm(dim=1)
    return {
        "pairs": sz["raft_pairs"],
        "size": f"{w}x{h}",
        "weights": "random (torchvision raft_small, weights=None)",
        "fp32_pairs_per_s": round(sz["raft_pairs"] / t32, 2),
        "bf16_pairs_per_s": round(sz["raft_pairs"] / tbf, 2),
        "bf16_vs_fp32_mean_epe_px": round(float(epe.mean()), 4),
        "bf16_vs_fp32_max_epe_px": round(float(epe.max()), 4),
        "fp32_mean_flow_px": round(float(f32.norm(dim=1).mean()), 4),
    }


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _torchrun() -> List[str]:
    beside = Path(sys.executable).parent / "torchrun"
    exe = str(beside) if beside.exists() else shutil.which("torchrun")
    if exe is None:
        raise SystemExit("gpu_check: no torchrun beside this Python or on PATH")
    return [exe, "--standalone", "--nproc_per_node=1"]


def step_smoke(sz: Dict, data: Path, work: Path, limit_s: float = 160.0) -> Dict:
    """``python -m pixpro_of smoke`` (the ranks of ``launcher submit --smoke``) as one rank under
    torchrun and launcher.supervise, on the packed data as it is (no job script, no staging)."""
    manifest = _manifest(data)
    out = _card(sz)
    run = work / "smoke"
    gpus = 1 if sz["device"] == "cuda" else 0
    words = [
        "smoke",
        "--run-dir",
        str(run),
        "--ranks",
        "1",
        "--gpus-per-node",
        str(gpus),
        "--config",
        sz["config"],
        "--deadline",
        f"@{time.time() + limit_s:.0f}",
        "dist.backend=ddp",
        f"run.device={sz['device']}",
        f"data.shards=[{manifest}]",
        f"data.num_workers={_workers(sz)}",
        *sz["extra"],
    ]
    cmd = [sys.executable, "-m", "launcher.supervise", "--", *_torchrun(), "-m", "pixpro_of", *words]
    # cwd: not the tree, whose bare pixpro_of (no presets package) would shadow an installed copy under -m
    proc = subprocess.run(
        cmd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=str(work),
    )
    print(proc.stdout[-6000:])
    report = run / "smoke.txt"
    lines = report.read_text().splitlines() if report.exists() else []
    passed = proc.returncode == 0 and bool(lines) and lines[-1].startswith("smoke: PASS")
    out.update(exit=proc.returncode, passed=passed, verdict=lines[-1] if lines else "(no report)", lines=lines)
    return out


STEP_FUNCS = {
    "smoke": step_smoke,
    "input": step_input,
    "step_fp32": step_step_fp32,
    "step_bf16": step_step_bf16,
    "raft": step_raft,
}


def run_one_step(name: str, mode: str, data: Path, work: Path, result: Path, limit_s: float) -> int:
    """In the step's own process: run it and write its figures to ``result`` (JSON); exit 1 when
    they say it did not pass (the smoke's FAIL, whose lines are still the figures)."""
    sz = SIZES[mode]
    if name == "smoke":
        figures = step_smoke(sz, data, work, max(MIN_STEP_S, limit_s - 10))
    else:
        figures = STEP_FUNCS[name](sz, data, work)
    result.write_text(json.dumps(figures))
    return 0 if figures.get("passed", True) else 1


# ----------------------------------------------------------------- the driver
def _line(name: str, figures: Dict) -> str:
    return f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items() if k != "lines")


def drive(args, mode: str) -> int:
    from plumbing.atomic import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    steps = plan(args.budget, args.only)
    deadline = time.monotonic() + args.budget - WRAPPER_S
    summary: Dict = {"mode": mode, "budget_s": args.budget, "steps": {}}
    log_path = out / "steps.log"
    card = "?"
    failed = 0
    t_all = time.monotonic()
    with open(log_path, "a") as log:
        for name, limit, _ in steps:
            left = int(deadline - time.monotonic())
            limit = min(limit, left)
            if limit < MIN_STEP_S:
                summary["steps"][name] = {"status": f"SKIPPED ({left} s of the budget left)"}
                failed = 1
                continue
            result = work / f"{name}.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--step",
                name,
                "--mode",
                mode,
                "--data",
                str(data),
                "--work",
                str(work),
                "--result",
                str(result),
                "--limit",
                str(limit),
            ]
            log.write(f"===== {name} (limit {limit} s): {' '.join(cmd)}\n")
            log.flush()
            t = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                cwd=str(ROOT),
            )
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
            took = round(time.monotonic() - t, 1)
            entry: Dict = {"limit_s": limit, "took_s": took}
            if result.exists():
                entry.update(json.loads(result.read_text()))
            if rc == 0 and result.exists():
                entry["status"] = "PASS"
            else:
                entry["status"] = "FAIL (time limit)" if rc == "timeout" else f"FAIL (exit {rc})"
                failed = 1
            summary["steps"][name] = entry
            if name == "smoke" and entry.get("card"):
                card = entry["card"]
            print(f"[{card}] {_line(name, entry)}", flush=True)
    fp32, inp = summary["steps"].get("step_fp32", {}), summary["steps"].get("input", {})
    if fp32.get("status") == "PASS" and inp.get("status") == "PASS":
        summary["input_over_step"] = round(inp["input_s_per_batch"] / fp32["step_s"], 3)
    if fp32.get("status") == "PASS" and fp32.get("views_s") is not None:
        summary["views_share_of_step_in_training"] = round(fp32["views_s"] / fp32["step_s"], 3)
    summary.update(card=card, total_s=round(time.monotonic() - t_all, 1), passed=not failed)
    lines = [
        f"gpu_check ({mode}) on {card}: {'all steps passed' if not failed else 'some steps FAILED'} "
        f"in {summary['total_s']} s of {args.budget - WRAPPER_S} s"
    ]
    lines += [f"[{card}] {_line(n, e)}" for n, e in summary["steps"].items()]
    lines += [f"[{card}] smoke | {ln}" for ln in summary["steps"].get("smoke", {}).get("lines", [])]
    for key in ("input_over_step", "views_share_of_step_in_training"):
        if key in summary:
            lines.append(f"[{card}] {key}: {summary[key]}")
    atomic_write_text(out / "summary.txt", "\n".join(lines) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(lines[0])
    shutil.rmtree(work, ignore_errors=True)
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="gpu_check",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan with each step's time budget; run nothing")
    ap.add_argument("--prepare", action="store_true", help="pack the data the check reads (here, on the CPU)")
    ap.add_argument("--tiny", action="store_true", help="with --prepare: a tiny world (for --cpu)")
    ap.add_argument("--cpu", action="store_true", help="run the whole check on the CPU with tiny sizes")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="results (default $OUT)")
    ap.add_argument("--data", default=str(DATA_DIR), help=f"the packed data (default {DATA_DIR.name}/)")
    ap.add_argument("--budget", type=int, default=TOTAL_BUDGET_S, help=f"seconds for everything (<= {TOTAL_BUDGET_S})")
    ap.add_argument("--only", default="", help="comma-separated steps (default: all)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="gpu", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=float, default=STEPS[0][1], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = [n for n, _, _ in STEPS]
    args.only = [s for s in args.only.split(",") if s]
    bad = [s for s in args.only if s not in names]
    if bad:
        ap.error(f"--only: unknown step {bad[0]!r} (steps: {', '.join(names)})")
    if not 0 < args.budget <= TOTAL_BUDGET_S:
        ap.error(f"--budget must be in 1..{TOTAL_BUDGET_S} s (one device command), got {args.budget}")
    mode = "cpu" if args.cpu else "gpu"
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:  # the steps' processes (torchrun's ranks too) import the repository; an
        # installed copy comes first (it has the presets as pixpro_of.configs, which the bare tree lacks)
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT)])
    if args.step:
        sys.path.append(str(ROOT))
        return run_one_step(args.step, args.mode, Path(args.data), Path(args.work), Path(args.result), args.limit)
    if args.dry_run:
        print_plan(args.budget, args.only, mode)
        return 0
    sys.path.append(str(ROOT))
    if args.prepare:
        return prepare(Path(args.data), TINY_WORLD if args.tiny else WORLD)
    try:
        return drive(args, mode)
    except OSError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
