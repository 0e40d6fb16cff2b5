"""The five-minute self-check of a cluster set-up, run as every rank of ``launcher submit --smoke``.

``launcher submit --smoke`` (same profile, script and nodes as the real run; walltime at most
5 minutes) starts ``python -m pixpro_of smoke --run-dir RUN --ranks N ...`` as every rank through
the profile's launch method, after the job's own staging block copied a tiny synthetic shard set
(packed at submit time into ``RUN/smoke_data``) to node-local disk. Rank 0 prints one line per
check and one verdict line, to the job's log (``logs/run.log``) and to ``RUN/smoke.txt``:

  imports      per host: the interpreter (path, version) and what the trainer imports (torch,
               torchvision, h5py; horovod and mpi4py for dist.backend=horovod)
  gpus         the GPUs each rank sees (count and names; "0 GPUs (CPU ranks)" on CPU)
  allreduce    the job's backend across every rank (NCCL on GPUs; gloo or Horovod/MPI on CPU):
               the values, then the bus bandwidth of a fixed message
  scratch      per node: the staged shard set in the node-local directory and its free space
  train        20 steps of the real trainer with the run's own preset and overrides, on the tiny
               data with a small per-rank batch: samples/s
  stop/resume  a stop signal rank 0 sends itself after step 20: the trainer agrees the stop,
               checkpoints and returns 75; the same trainer then resumes from that checkpoint
               and finishes (exit 0, done marker)
  smoke: PASS (6 of 6 checks, 1 min 12 s)   or   smoke: FAIL: allreduce: ...

Exit code 0 only on PASS. The ranks report through files (``RUN/smoke/rank-*.json``), so a rank
that cannot import its backend or never joins still gets its line; rank 0 reports by the
deadline even when a collective hangs.

``python -m pixpro_of smoke --np 2`` (no ``--run-dir``) is the older quick check of this
machine's Horovod and mpi4py collectives under ``mpirun``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import click

from plumbing.cli import call, command as cli_command
from plumbing.errors import UserError

CHECKS = ("imports", "gpus", "allreduce", "scratch", "train", "stop/resume")
STEPS = 20          # training steps measured before the stop
AFTER_STOP = 4      # steps the resumed trainer runs to finish
RANK_BATCH = 2      # samples per rank (the tiny shard set holds 4 steps of them per node)
MESSAGE_MIB = {"cuda": 256, "cpu": 16}  # the allreduce's message, fixed per device kind
REPORT = "smoke.txt"
RANKS_DIR = "smoke"
DATA_DIR = "smoke_data"  # the tiny shard set packed at submit time (launcher.submit)
REPORT_WAIT_S = 30.0  # how long rank 0 waits for the other ranks' last records


# ----------------------------------------------------------------- what each rank finds by itself
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
    return {"count": n, "names": names, "uuids": uuids,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


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


# ----------------------------------------------------------------- the collective checks
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
    return [f"data.batch_size={world * rank_batch}", f"run.max_steps={STEPS + AFTER_STOP}",
            f"run.epochs={max(epochs, STEPS + AFTER_STOP)}", "data.synthetic=false",
            "checkpoint.every_steps=0", "checkpoint.every_epochs=0", "checkpoint.every_minutes=0",
            "checkpoint.keep_epochs=[]", "checkpoint.keep=2", "log.every_steps=1", "log.tensorboard=false",
            "log.wandb=off"]


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
    train = {"rc": rc1, "steps": len(steps1), "seconds": round(t1 - t0, 1), "reason": first.reason,
             "samples_per_s": statistics.median(rates[len(rates) // 3:]) if rates else None,
             "median_from": len(rates) // 3 + 1, "batch": cfg.data.batch_size,
             "loss": [float(steps1[0]["loss"]), float(steps1[-1]["loss"])] if steps1 else None}
    stop = {"rc1": rc1, "signal": signal.Signals(first.signal_nums[0]).name, "sent_at": first.sent_at_step,
            "reason": first.reason}
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
    stop.update(rc2=rc2, resumed_from=int(resumed[-1]) if resumed else None, done=RunLayout(run).is_done(),
                last_step=int(rows[-1]["step"]) if rows else None, seconds=round(time.perf_counter() - t1, 1))
    into["stop"] = stop


# ----------------------------------------------------------------- the report (pure: records in, lines out)
def _ranges(ranks: Sequence[int]) -> str:
    rs = sorted(ranks)
    parts, start = [], None
    for i, r in enumerate(rs):
        if start is None:
            start = r
        if i + 1 == len(rs) or rs[i + 1] != r + 1:
            parts.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ("rank " if len(rs) == 1 else "ranks ") + ",".join(parts)


def _by_host(starts: Dict[int, Dict], describe) -> str:
    groups: Dict[str, List[Tuple[str, int]]] = {}
    for r, rec in sorted(starts.items()):
        groups.setdefault(describe(rec), []).append((rec["host"], r))
    parts = []
    for desc, members in groups.items():
        hosts = sorted({h for h, _ in members})
        parts.append(f"{', '.join(hosts)} ({_ranges([r for _, r in members])}): {desc}")
    return "; ".join(parts)


def _imports_desc(rec: Dict) -> str:
    imp = rec["imports"]
    found = ", ".join(f"{k} {v}" for k, v in imp["found"].items())
    return f"{imp['python']} {imp['python_version']}, {found}"


def line_imports(starts: Dict[int, Dict], expected: int, world: Optional[int] = None) -> Tuple[bool, str]:
    missing = {r: rec["imports"]["missing"] for r, rec in starts.items() if rec["imports"]["missing"]}
    if missing:
        r, miss = sorted(missing.items())[0]
        mod, why = next(iter(miss.items()))
        more = f" (and {len(missing) - 1} more rank(s))" if len(missing) > 1 else ""
        return False, (f"imports: FAIL: {mod} on {starts[r]['host']} (rank {r}, {starts[r]['imports']['python']}): "
                       f"{why}{more}")
    absent = [r for r in range(expected) if r not in starts]
    if absent and world in (None, expected):  # another world size is the allreduce line's finding
        return False, f"imports: FAIL: no report from {_ranges(absent)} of {expected} (did they start?)"
    hosts = len({rec["host"] for rec in starts.values()})
    return True, f"imports: OK: {hosts} host(s): {_by_host(starts, _imports_desc)}"


def _gpus_desc(rec: Dict) -> str:
    g = rec["gpus"]
    if g["count"] == 0:
        return "0 GPUs (CPU ranks)"
    names: Dict[str, int] = {}
    for n in g["names"]:
        names[n] = names.get(n, 0) + 1
    return f"{g['count']} GPU{'s' if g['count'] != 1 else ''} each (" + ", ".join(
        f"{n} x{c}" if c > 1 else n for n, c in names.items()) + ")"


def line_gpus(starts: Dict[int, Dict], gpus_per_node: int) -> Tuple[bool, str]:
    if not starts:
        return False, "gpus: FAIL: no rank reported"
    if gpus_per_node == 0:
        return True, f"gpus: OK: {_by_host(starts, _gpus_desc)}"
    blind = sorted(r for r, rec in starts.items() if rec["gpus"]["count"] == 0)
    if blind:
        rec = starts[blind[0]]
        why = f" ({rec['gpus']['error']})" if rec["gpus"].get("error") else ""
        return False, (f"gpus: FAIL: {_ranges(blind)} on {rec['host']} see no GPU{why}; the job asked for "
                       f"{gpus_per_node} per node (CUDA_VISIBLE_DEVICES={rec['gpus'].get('visible')})")
    used: Dict[Tuple[str, str], List[int]] = {}
    for r, rec in starts.items():
        g = rec["gpus"]
        uuid = g["uuids"][rec["local_rank"] % g["count"]] if g.get("uuids") else ""
        if uuid:
            used.setdefault((rec["host"], uuid), []).append(r)
    shared = [(k, v) for k, v in used.items() if len(v) > 1]
    if shared:
        (host, _), ranks = shared[0]
        return False, f"gpus: FAIL: {_ranges(ranks)} on {host} would train on the same GPU"
    return True, f"gpus: OK: {_by_host(starts, _gpus_desc)}"


def line_scratch(starts: Dict[int, Dict]) -> Tuple[bool, str]:
    bad = sorted((r for r, rec in starts.items() if rec["scratch"].get("error")))
    if bad:
        rec = starts[bad[0]]
        return False, f"scratch: FAIL: {rec['host']} (rank {bad[0]}): {rec['scratch']['error']}"
    if not starts:
        return False, "scratch: FAIL: no rank reported"
    per_host: Dict[str, Dict] = {}
    for r, rec in sorted(starts.items()):
        per_host.setdefault(rec["host"], rec["scratch"])
    parts = [f"{h}: {s['dir']} ({s['shards']} shard(s), {s['bytes'] / 2**20:.1f} MiB staged; "
             f"{s['free'] / 2**30:.1f} GiB free)" for h, s in per_host.items()]
    return True, "scratch: OK: " + "; ".join(parts)


def line_allreduce(ends: Dict[int, Dict], expected: int) -> Tuple[bool, str]:
    errs = sorted((r, e["allreduce"]) for r, e in ends.items() if e.get("allreduce", {}).get("error"))
    if errs:
        return False, f"allreduce: FAIL: {errs[0][1]['error']}"
    zero = ends.get(0, {}).get("allreduce")
    if not zero or "busbw" not in zero:
        return False, "allreduce: FAIL: rank 0 has no result"
    absent = [r for r in range(expected) if "allreduce" not in ends.get(r, {})]
    if absent:
        return False, f"allreduce: FAIL: no result from {_ranges(absent)}"
    n = zero["world"]
    bw = (f"bus bandwidth {zero['busbw']:.2f} GB/s" if n > 1 else "1 rank: no transfer")
    return True, (f"allreduce: OK: {n} rank{'s' if n != 1 else ''}, {zero['library']}, sums right on every rank; {zero['mib']} MiB "
                  f"in {zero['seconds'] * 1e3:.1f} ms: {bw} (algorithm {zero['algbw']:.2f} GB/s)")


def line_train(ends: Dict[int, Dict], preset: str, rank_batch: int = RANK_BATCH) -> Tuple[bool, str]:
    t = ends.get(0, {}).get("train")
    if not t:
        err = ends.get(0, {}).get("errors", {}).get("train")
        if err is None and "allreduce" in ends.get(0, {}).get("errors", {}) or \
                ends.get(0, {}).get("allreduce", {}).get("error"):
            err = "not run: the allreduce failed"
        return False, f"train: FAIL: {err or 'rank 0 has no result'}"
    if t["steps"] < STEPS:
        why = f": stopped by {t['reason']}" if t.get("reason") else f" (exit {t['rc']})"
        return False, f"train: FAIL: {t['steps']} of {STEPS} steps in {t['seconds']} s{why}"
    loss = t.get("loss") or [float("nan")] * 2
    if not all(abs(v) < float("inf") for v in loss):
        return False, f"train: FAIL: the loss is not finite ({loss[0]} -> {loss[1]})"
    return True, (f"train: OK: {STEPS} steps of {preset}, global batch {t['batch']} ({rank_batch} per rank), "
                  f"{t['samples_per_s']:.1f} samples/s (median of steps {t['median_from']}-{STEPS}), "
                  f"loss {loss[0]:.3f} -> {loss[1]:.3f}")


def line_stop(ends: Dict[int, Dict]) -> Tuple[bool, str]:
    s = ends.get(0, {}).get("stop")
    if not s:
        err = ends.get(0, {}).get("errors", {}).get("stop/resume")
        return False, f"stop/resume: FAIL: {err or 'not run: the training did not run'}"
    head = (f"{s['signal']} sent to rank 0 after step {s['sent_at']}" if s.get("sent_at") is not None
            else f"no {s['signal']} sent (the training ended before step {STEPS})")
    if s.get("rc1") != 75:
        return False, f"stop/resume: FAIL: {head}: the trainer exited {s.get('rc1')}, not 75 (checkpointed)"
    if s.get("rc2") != 0 or not s.get("done") or s.get("resumed_from") is None:
        return False, (f"stop/resume: FAIL: {head}: checkpointed (exit 75), but the resume exited {s.get('rc2')} "
                       f"(resumed from step {s.get('resumed_from')}, done marker {'yes' if s.get('done') else 'no'})")
    return True, (f"stop/resume: OK: {head}: checkpoint {s.get('checkpoint') or '?'}, exit 75; resumed from step "
                  f"{s['resumed_from']} to step {s['last_step']}, exit 0 (done marker) in {s['seconds']} s")


def compose(starts: Dict[int, Dict], ends: Dict[int, Dict], expected: int, gpus_per_node: int, preset: str,
            seconds: float, hung: Tuple[str, str] = ("", ""), rank_batch: int = RANK_BATCH) -> Tuple[bool, List[str]]:
    """The six check lines and the verdict line from the ranks' records. ``hung``: (check, why) of
    a phase that never ended (the deadline came first): its failed line says why."""
    world = ends.get(0, {}).get("allreduce", {}).get("world")
    results = [line_imports(starts, expected, world), line_gpus(starts, gpus_per_node), line_allreduce(ends, expected),
               line_scratch(starts), line_train(ends, preset, rank_batch), line_stop(ends)]
    results = [(False, f"{name}: FAIL: {hung[1]}") if (not ok and name == hung[0]) else (ok, text)
               for (ok, text), name in zip(results, CHECKS)]
    lines = [text for _, text in results]
    passed = sum(ok for ok, _ in results)
    took = f"{int(seconds) // 60} min {int(seconds) % 60} s"
    if passed == len(CHECKS):
        lines.append(f"smoke: PASS ({passed} of {len(CHECKS)} checks, {took})")
        return True, lines
    first = next(text for ok, text in results if not ok)
    name, _, rest = first.partition(": FAIL: ")
    lines.append(f"smoke: FAIL: {name}: {rest} ({passed} of {len(CHECKS)} checks passed, {took})")
    return False, lines


# ----------------------------------------------------------------- one rank
class _Rank:
    def __init__(self, opts: SimpleNamespace):
        from plumbing.jobenv import job_environment

        self.opts = opts
        self.job = job_environment()
        self.rank = self.job.rank
        self.dir = Path(opts.run_dir) / RANKS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start = float(os.environ.get("LAUNCHER_START") or time.time())
        self.end: Dict = {"errors": {}}
        self.phase = "starting"
        self.lock = threading.Lock()
        self.reported = False

    def write(self, kind: str, record: Dict) -> None:
        from plumbing.atomic import atomic_write_text

        atomic_write_text(self.dir / f"rank-{self.rank:05d}.{kind}.json", json.dumps(record, default=str))

    def read_all(self, kind: str) -> Dict[int, Dict]:
        out = {}
        for p in self.dir.glob(f"rank-*.{kind}.json"):
            try:
                out[int(p.name.split("-")[1].split(".")[0])] = json.loads(p.read_text())
            except (ValueError, OSError):
                continue
        return out

    def report(self, hung: Tuple[str, str] = ("", "")) -> bool:
        """Rank 0: compose, print and write the report once; True on PASS."""
        from plumbing.atomic import atomic_write_text

        with self.lock:
            if self.reported:
                return False
            self.reported = True
            ok, lines = compose(self.read_all("start"), self.read_all("end"), self.opts.ranks,
                                self.opts.gpus_per_node, self.opts.preset, time.time() - self.start, hung,
                                self.opts.rank_batch)
            text = "\n".join(lines) + "\n"
            sys.stdout.write(text)
            sys.stdout.flush()
            atomic_write_text(Path(self.opts.run_dir) / REPORT, text)
            return ok

    def watchdog(self, deadline: float) -> None:
        """Rank 0: when the deadline comes first, report what is known and end the job."""
        while time.time() < deadline:
            time.sleep(1.0)
            if self.reported:
                return
        waited = f"no result by the smoke's deadline ({time.time() - self.start:.0f} s after the job start)"
        if self.phase == "allreduce":
            waited += f" (does every one of the {self.opts.ranks} ranks reach the others?)"
        self.report((self.phase, waited))
        sys.stderr.flush()
        os._exit(1)

    def wait_for_ends(self, ranks: int) -> None:
        until = time.time() + REPORT_WAIT_S
        while time.time() < until and len(self.read_all("end")) < ranks:
            time.sleep(0.5)


def run_rank(opts: SimpleNamespace) -> int:
    """One rank of the smoke; rank 0 reports. See the module docstring."""
    from pixpro_of.config import load_config
    from pixpro_of.train.stopping import parse_deadline

    me = _Rank(opts)
    overrides = list(opts.overrides)
    if opts.deadline:
        overrides.append(f"stop.deadline=@{parse_deadline(opts.deadline):.3f}")
    cfg = load_config(opts.config, overrides)
    deadline = parse_deadline(opts.deadline) if opts.deadline else me.start + 300
    if me.rank == 0:
        threading.Thread(target=me.watchdog, args=(deadline - 5,), daemon=True).start()
    manifest = (cfg.data.shards or [None])[0]
    me.write("start", {"host": socket.gethostname(), "node": me.job.node, "local_rank": me.job.local_rank,
                       "imports": probe_imports(cfg.dist.backend), "gpus": probe_gpus(),
                       "scratch": probe_scratch(manifest, me.job.node, me.job.nodes)})
    be = None
    try:
        from pixpro_of.dist.backend import make_backend

        me.phase = "allreduce"
        be = make_backend(cfg.dist.backend, device=cfg.run.device,
                          timeout_s=min(60.0 * cfg.dist.timeout_minutes, 120.0))
        me.end["allreduce"] = allreduce_check(be, opts.ranks)
        if "error" not in me.end["allreduce"]:
            me.phase = "train"
            cfg = load_config(opts.config, overrides + smoke_overrides(be.world_size, opts.rank_batch, cfg.run.epochs))
            train_check(cfg, be, Path(opts.run_dir) / RANKS_DIR / "train", me.end,
                        lambda name: setattr(me, "phase", name))
    except BaseException as exc:  # noqa: BLE001 - every failure is a finding for the report
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        me.end["errors"][me.phase] = why
        if me.phase == "allreduce":
            me.end["allreduce"] = {"error": f"rank {me.rank}: {why}"}
    me.phase = "report"
    me.write("end", me.end)
    if me.rank != 0:
        if be is not None and "stop" in me.end and me.end["stop"].get("rc2") == 0:
            be.shutdown()
        return 0  # rank 0 decides: a rank exiting non-zero would end the job before the report
    me.wait_for_ends(min(opts.ranks, be.world_size) if be is not None else opts.ranks)
    ok = me.report()
    if ok and be is not None:
        be.shutdown()
        return 0
    sys.stderr.flush()
    os._exit(1)  # the other ranks may wait in a collective: the launcher ends them


# ----------------------------------------------------------------- the older quick MPI check
def _worker() -> int:
    import torch
    import horovod.torch as hvd
    from mpi4py import MPI

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    comm = MPI.COMM_WORLD
    errors = []
    if comm.Get_rank() != rank or comm.Get_size() != size:
        errors.append(f"mpi4py rank/size {comm.Get_rank()}/{comm.Get_size()} != horovod {rank}/{size}")

    expected_sum = sum(range(size))
    s = hvd.allreduce(torch.full((4,), float(rank)), op=hvd.Sum, name="smoke_sum")
    if not torch.equal(s, torch.full((4,), float(expected_sum))):
        errors.append(f"horovod sum allreduce gave {s.tolist()}")
    a = hvd.allreduce(torch.full((4,), float(rank)), op=hvd.Average, name="smoke_avg")
    if not torch.allclose(a, torch.full((4,), expected_sum / size)):
        errors.append(f"horovod average allreduce gave {a.tolist()}")
    b = hvd.broadcast(torch.full((3,), float(rank + 7)), root_rank=0, name="smoke_bcast")
    if not torch.equal(b, torch.full((3,), 7.0)):
        errors.append(f"horovod broadcast gave {b.tolist()}")

    # DistributedOptimizer: each rank's gradient is its rank; the step uses the average.
    w = torch.nn.Parameter(torch.zeros(2))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)])
    (w * float(rank)).sum().backward()
    opt.step()
    if not torch.allclose(w.detach(), torch.full((2,), -expected_sum / size)):
        errors.append(f"DistributedOptimizer step gave {w.detach().tolist()}")

    m = comm.allreduce(rank + 1, op=MPI.SUM)
    if m != size * (size + 1) // 2:
        errors.append(f"mpi4py allreduce gave {m}")

    all_errors = comm.gather(errors, root=0)
    if rank == 0:
        flat = [f"rank {r}: {e}" for r, errs in enumerate(all_errors) for e in errs]
        import horovod

        print(f"horovod {horovod.__version__} size={size} mpi_enabled={hvd.mpi_enabled()} "
              f"sum={s.tolist()[0]:g} avg={a.tolist()[0]:g} mpi4py_sum={m}")
        for line in flat:
            print("FAIL", line)
        print("smoke: OK" if not flat else "smoke: FAILED")
        ok = not flat
    else:
        ok = True
    ok = comm.allreduce(int(ok), op=MPI.MIN)
    return 0 if ok else 1


def _mpi_check(np_: int) -> int:
    if np_ < 1:
        raise UserError(f"--np must be at least 1, got {np_}")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise UserError("mpirun not found on PATH (install openmpi-bin or load the MPI module)")
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    cmd = [mpirun, "-np", str(np_), sys.executable, "-m", "pixpro_of.smoke", "--worker"]
    return subprocess.run(cmd, env=env, timeout=180).returncode


@cli_command("smoke", epilog="Examples: launcher submit --smoke --scheduler local --gpus 0 --preset cpu_small --wait "
                             "(every rank of a job runs 'python -m pixpro_of smoke --run-dir RUN --ranks N ...'); "
                             "python -m pixpro_of smoke --np 2 (this machine's Horovod and mpi4py under mpirun)")
@click.option("--run-dir", default=None, help="the smoke job's run directory (rank mode: one process per rank)")
@click.option("--ranks", type=int, default=None, help="ranks the job started (each rank checks its world size)")
@click.option("--gpus-per-node", type=int, default=0, show_default=True, help="GPUs the job asked for per node")
@click.option("--rank-batch", type=int, default=RANK_BATCH, show_default=True,
              help="samples per rank in the 20 training steps (the tiny shard set is packed for it)")
@click.option("--config", default=None, help="the run's trainer config file or preset")
@click.option("--deadline", default=None, help="report by this time (the job's deadline; trainer syntax)")
@click.option("--np", "np_", type=int, default=2, show_default=True,
              help="without --run-dir: MPI ranks of the quick Horovod/mpi4py check")
@click.option("--worker", is_flag=True, hidden=True)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def command(run_dir, ranks, gpus_per_node, rank_batch, config, deadline, np_, worker, overrides) -> int:
    """The self-check of a cluster set-up, as every rank of 'launcher submit --smoke' (one line per
    check and a verdict; exit 0 only on PASS); without --run-dir, a quick Horovod/mpi4py check."""
    if worker:
        try:
            return _worker()
        except BaseException:
            # A dead rank must end the job, not leave the others blocked in a collective.
            import traceback
            from mpi4py import MPI

            traceback.print_exc()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
            raise
    if run_dir is None:
        if overrides:
            raise UserError(f"unexpected argument {overrides[0]!r}: key=value words need --run-dir (rank mode)")
        return _mpi_check(np_)
    if ranks is None or ranks < 1:
        raise UserError("--ranks: give the number of ranks the job started (at least 1)")
    if rank_batch < 1:
        raise UserError(f"--rank-batch {rank_batch}: must be at least 1")
    bad = [w for w in overrides if "=" not in w or w.startswith("-")]
    if bad:
        raise UserError(f"unexpected argument {bad[0]!r}: the trainer's overrides are key=value")
    preset = Path(config).stem if config else "the default config"
    opts = SimpleNamespace(run_dir=os.path.abspath(run_dir), ranks=ranks, gpus_per_node=gpus_per_node,
                           rank_batch=rank_batch, config=config,
                           deadline=deadline, overrides=list(overrides), preset=preset)
    return run_rank(opts)


def main(argv: Sequence[str] = ()) -> int:
    return call(command, argv, "pixpro_of smoke")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
