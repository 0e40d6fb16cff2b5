"""One rank of the smoke: its records in ``RUN/smoke/rank-NNNNN.{start,end}.json``; rank 0 waits for the others,
writes the report (``RUN/smoke.txt`` and stdout) and, when a check hangs, reports by the deadline anyway."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Tuple

from pixpro_of.smoke.checks import (
    allreduce_check,
    probe_gpus,
    probe_imports,
    probe_scratch,
    smoke_overrides,
    train_check,
)
from pixpro_of.smoke.report import compose

REPORT = "smoke.txt"
RANKS_DIR = "smoke"
REPORT_WAIT_S = 30.0  # how long rank 0 waits for the other ranks' last records


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
            ok, lines = compose(
                self.read_all("start"),
                self.read_all("end"),
                self.opts.ranks,
                self.opts.gpus_per_node,
                self.opts.preset,
                time.time() - self.start,
                hung,
                self.opts.rank_batch,
            )
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
    """One rank of the smoke; rank 0 reports (see :mod:`pixpro_of.smoke.cli`)."""
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
    me.write(
        "start",
        {
            "host": socket.gethostname(),
            "node": me.job.node,
            "local_rank": me.job.local_rank,
            "imports": probe_imports(cfg.dist.backend),
            "gpus": probe_gpus(),
            "scratch": probe_scratch(manifest, me.job.node, me.job.nodes),
        },
    )
    be = None
    try:
        from pixpro_of.dist.backend import make_backend

        me.phase = "allreduce"
        be = make_backend(
            cfg.dist.backend, device=cfg.run.device, timeout_s=min(60.0 * cfg.dist.timeout_minutes, 120.0)
        )
        me.end["allreduce"] = allreduce_check(be, opts.ranks)
        if "error" not in me.end["allreduce"]:
            me.phase = "train"
            cfg = load_config(opts.config, overrides + smoke_overrides(be.world_size, opts.rank_batch, cfg.run.epochs))
            train_check(
                cfg, be, Path(opts.run_dir) / RANKS_DIR / "train", me.end, lambda name: setattr(me, "phase", name)
            )
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
