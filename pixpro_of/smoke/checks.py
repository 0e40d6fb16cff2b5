"""What each rank of the smoke checks: its imports, GPUs and staged shards (by itself), the allreduce across every
rank, and the trainer's 20 steps with a self-sent stop and the resume. Each returns a record for the report."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

STEPS = 20  # training steps measured before the stop
AFTER_STOP = 4  # steps the resumed trainer runs to finish
RANK_BATCH = 2  # samples per rank (the tiny shard set holds 4 steps of them per node)
MESSAGE_MIB = {"cuda": 256, "cpu": 16}  # the allreduce's message, fixed per device kind


def _version(module: str) -> str:
    import importlib

    mod = importlib.import_module(module)
    return str(getattr(mod, "__version__", "?"))


def required_modules(backend: str) -> List[str]:
    """What the trainer imports on every rank, for ``dist.backend=backend``."""
    mods = ["torch", "torchvision", "h5py"]
    if backend == "horovod":
        mods += ["horovod.torch", "mpi4py"]
    return mods


def probe_imports(backend: str) -> Dict:
    import importlib

    found, missing = {}, {}
    for mod in required_modules(backend):
        try:
            importlib.import_module(mod)  # horovod.torch: the extension built against this torch
            found[mod.split(".")[0]] = _version(mod.split(".")[0])
        except BaseException as exc:  # noqa: BLE001 - an import may fail any way; it is the finding
            missing[mod] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    import platform

    return {"python": sys.executable, "python_version": platform.python_version(), "found": found, "missing": missing}


def probe_gpus() -> Dict:
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [torch.cuda.get_device_name(i) for i in range(n)]
        uuids = [str(getattr(torch.cuda.get_device_properties(i), "uuid", "")) for i in range(n)]
    except BaseException as exc:  # noqa: BLE001
        return {"count": 0, "names": [], "uuids": [], "error": (str(exc).splitlines() or ["?"])[0][:200]}
    return {"count": n, "names": names, "uuids": uuids, "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def probe_scratch(manifest: Optional[str], node: int, nodes: int) -> Dict:
    """The staged shard set of this node: its folder, the shards this node reads, free space there."""
    if not manifest:
        return {"error": "no data.shards manifest was passed (the job's staging block did not run)"}
    folder = os.path.dirname(manifest)
    out: Dict = {"dir": folder, "local_dir": os.environ.get("LAUNCHER_LOCALDIR", "")}
    if not os.path.isfile(manifest):
        out["error"] = f"the staged manifest {manifest} is missing"
        return out
    try:
        from hdf5_tools.manifest import shards_for_node

        shards = shards_for_node(manifest, node % max(nodes, 1), None)
        sizes = [os.path.getsize(s) for s in shards]
        import h5py

        for s in shards:
            with h5py.File(s, "r"):  # opening is the check: the staged copy is a readable HDF5 file
                pass
    except BaseException as exc:  # noqa: BLE001
        out["error"] = f"the staged shards in {folder} cannot be read: {(str(exc).splitlines() or ['?'])[0][:200]}"
        return out
    usage = shutil.disk_usage(folder)
    out.update(shards=len(shards), bytes=sum(sizes), free=usage.free)
    if not shards:
        out["error"] = f"node {node} has no shards in {manifest}"
    return out


def allreduce_check(be, expected: int) -> Dict:
    """Values of a sum over every rank, then the bus bandwidth of a fixed message (rank 0's timing)."""
    import torch

    res: Dict = {"world": be.world_size, "library": _library(be)}
    if be.world_size != expected:
        res["error"] = f"rank {be.rank} sees world size {be.world_size}, the job has {expected} ranks"
        return res
    n = be.world_size
    t = be.to_collective(torch.full((1024,), float(be.rank + 1)))
    got = be.to_host(be.allreduce(t, op="sum"))
    want = n * (n + 1) / 2
    if not torch.all(got == want):
        res["error"] = f"rank {be.rank}: the sum over {n} ranks gave {got[0].item():g}, not {want:g}"
        return res
    dev = be.collective_device
    mib = MESSAGE_MIB["cuda" if dev.type == "cuda" else "cpu"]
    x = be.to_collective(torch.ones(mib * 2**20 // 4, dtype=torch.float32))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    be.allreduce(x, op="sum")  # warm-up (connections, buffers)
    sync()
    iters = 5
    t0 = time.perf_counter()
    for _ in range(iters):
        y = be.allreduce(x, op="sum")
    sync()
    seconds = (time.perf_counter() - t0) / iters
    if float(be.to_host(y[:1])[0]) != float(n):
        res["error"] = f"rank {be.rank}: the {mib} MiB sum gave {float(be.to_host(y[:1])[0]):g}, not {n}"
        return res
    nbytes = mib * 2**20
    res.update(mib=mib, seconds=seconds, algbw=nbytes / seconds / 1e9, busbw=nbytes / seconds / 1e9 * 2 * (n - 1) / n)
    return res


def _library(be) -> str:
    if be.name == "ddp":
        import torch.distributed as dist

        return f"torch.distributed {dist.get_backend()}"
    if be.name == "horovod":
        import horovod.torch as hvd

        if be.collective_device.type == "cuda" and hvd.nccl_built():
            return "Horovod NCCL"
        return "Horovod MPI" if hvd.mpi_enabled() else "Horovod gloo"
    return be.name


def smoke_overrides(world: int, rank_batch: int, epochs: int) -> List[str]:
    """What the smoke changes in the run's config: the batch, the step count, no milestone files."""
    return [
        f"data.batch_size={world * rank_batch}",
        f"run.max_steps={STEPS + AFTER_STOP}",
        f"run.epochs={max(epochs, STEPS + AFTER_STOP)}",
        "data.synthetic=false",
        "checkpoint.every_steps=0",
        "checkpoint.every_epochs=0",
        "checkpoint.every_minutes=0",
        "checkpoint.keep_epochs=[]",
        "checkpoint.keep=2",
        "log.every_steps=1",
        "log.tensorboard=false",
        "log.wandb=off",
    ]


def _self_stop_control(cfg, send_at: Optional[int]):
    """The trainer's own StopControl; on rank 0 it sends the first stop signal to its own process
    after step ``send_at`` (the handler the trainer installed only sets its flag)."""
    from pixpro_of.train.stopping import StopControl, parse_deadline

    class SelfStop(StopControl):
        sent_at_step: Optional[int] = None

        def record_step(self, seconds: float) -> None:
            super().record_step(seconds)
            self.steps_seen = getattr(self, "steps_seen", 0) + 1
            if send_at is not None and self.steps_seen == send_at and self.sent_at_step is None:
                self.sent_at_step = self.steps_seen
                os.kill(os.getpid(), self.signal_nums[0])

    deadline = parse_deadline(cfg.stop.deadline) if cfg.stop.deadline else None
    return SelfStop(deadline, cfg.stop.margin_s, cfg.stop.safety_factor, cfg.stop.signals)


def train_check(cfg, be, run: Path, into: Dict, phase=lambda name: None) -> None:
    """20 steps and a self-sent stop (checkpoint, 75), then the resume to the end (0, done), into
    ``into["train"]`` and ``into["stop"]`` as they come (a failure in the resume keeps the first).
    ``phase(name)`` is told when the resume starts (the report names a phase that hangs)."""
    from pixpro_of.train.metrics_log import read_csv
    from pixpro_of.train.trainer import Trainer

    first = _self_stop_control(cfg, STEPS if be.is_main else None)
    t0 = time.perf_counter()
    rc1 = Trainer(cfg, run, backend=be, stop=first).run()
    t1 = time.perf_counter()
    rows = read_csv(run / "metrics.csv") if (run / "metrics.csv").exists() else []
    steps1 = [r for r in rows if int(r["step"]) <= STEPS]
    rates = [float(r["samples_per_s"]) for r in steps1 if r.get("samples_per_s")]
    train = {
        "rc": rc1,
        "steps": len(steps1),
        "seconds": round(t1 - t0, 1),
        "reason": first.reason,
        "samples_per_s": statistics.median(rates[len(rates) // 3 :]) if rates else None,
        "median_from": len(rates) // 3 + 1,
        "batch": cfg.data.batch_size,
        "loss": [float(steps1[0]["loss"]), float(steps1[-1]["loss"])] if steps1 else None,
    }
    stop = {
        "rc1": rc1,
        "signal": signal.Signals(first.signal_nums[0]).name,
        "sent_at": first.sent_at_step,
        "reason": first.reason,
    }
    into["train"] = train
    if rc1 != 75:
        into["stop"] = stop
        return
    from plumbing.runs import RunLayout

    latest = RunLayout(run).latest_checkpoint()
    stop["checkpoint"] = latest.name if latest is not None else ""
    phase("stop/resume")
    rc2 = Trainer(cfg, run, backend=be, stop=_self_stop_control(cfg, None)).run()
    log = run / "logs" / "train.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    resumed = [ln.split("resumed from step", 1)[1].split()[0] for ln in text.splitlines() if "resumed from step" in ln]
    rows = read_csv(run / "metrics.csv") if (run / "metrics.csv").exists() else []
    stop.update(
        rc2=rc2,
        resumed_from=int(resumed[-1]) if resumed else None,
        done=RunLayout(run).is_done(),
        last_step=int(rows[-1]["step"]) if rows else None,
        seconds=round(time.perf_counter() - t1, 1),
    )
    into["stop"] = stop
