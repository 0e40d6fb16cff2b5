"""A small subprocess DAG runner: tasks ``jobs`` at a time, each after the task it waits for, finished ones skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError
from plumbing.runs import EXIT_RESUME, RunLayout


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def run_logged(name: str, cmd: List[str], log: Path) -> None:
    """Run ``cmd`` to completion with its output in ``log``; UserError naming the log on failure."""
    print(f"[reproduce] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env()).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-10:]
        print("\n".join(tail), file=sys.stderr)
        raise UserError(f"{name} failed with exit code {rc}; full log: {log}")
    print(f"[reproduce] {name}: ok in {time.time() - t0:.1f}s", flush=True)


@dataclass
class Task:
    """One subprocess: a pretraining or an evaluation, with what it waits for."""

    name: str
    kind: str  # train | eval
    cmd: List[str]
    log: Path
    status_file: Path
    after: Optional[str] = None  # the name of a train task that must succeed first
    ok_codes: Tuple[int, ...] = (0,)
    proc: Optional[subprocess.Popen] = None
    log_handle: Optional[object] = None
    started: float = 0.0
    result: Dict = field(default_factory=dict)


def _train_result(run_dir: Path, rc: int, seconds: float) -> Dict:
    """Steps, epochs and checkpoint of a finished or time-boxed pretraining."""
    layout = RunLayout(run_dir)
    ckpt = layout.latest_checkpoint()
    if ckpt is None:
        raise UserError(f"{run_dir}: the pretraining left no checkpoint ({layout.latest.relative_to(run_dir)} missing)")
    side = json.loads(ckpt.with_suffix(".json").read_text())
    return {"rc": rc, "seconds": round(seconds, 1), "step": int(side["step"]), "epoch": int(side["epoch"]),
            "checkpoint": str(ckpt), "time_boxed": rc == EXIT_RESUME}


def run_tasks(tasks: List[Task], jobs: int) -> List[str]:
    """Run the tasks, ``jobs`` at a time, respecting ``after``; returns the names of failed tasks."""
    by_name = {t.name: t for t in tasks}
    pending = []
    for t in tasks:
        if t.status_file.is_file():  # finished by an earlier invocation
            t.result = json.loads(t.status_file.read_text()) if t.kind == "train" else {"rc": 0}
            print(f"[reproduce] {t.name}: done already ({t.status_file})", flush=True)
        else:
            pending.append(t)
    running: List[Task] = []
    failed: List[str] = []
    while pending or running:
        for t in list(running):
            rc = t.proc.poll()
            if rc is None:
                continue
            running.remove(t)
            t.log_handle.close()
            secs = time.time() - t.started
            if rc not in t.ok_codes:
                failed.append(t.name)
                t.result = {"rc": rc}
                print(f"[reproduce] {t.name}: FAILED with exit code {rc} after {secs:.0f}s; log {t.log}", flush=True)
                continue
            if t.kind == "train":
                try:
                    t.result = _train_result(t.status_file.parent, rc, secs)
                except (UserError, OSError, ValueError, KeyError) as exc:
                    failed.append(t.name)
                    t.result = {"rc": rc}
                    print(f"[reproduce] {t.name}: FAILED: {exc}", flush=True)
                    continue
                atomic_write_text(t.status_file, json.dumps(t.result, indent=1) + "\n")
                how = "time box reached" if rc == EXIT_RESUME else "finished"
                print(f"[reproduce] {t.name}: {how} at step {t.result['step']} in {secs:.0f}s", flush=True)
            else:
                t.result = {"rc": rc}
                print(f"[reproduce] {t.name}: ok in {secs:.0f}s", flush=True)
        for t in list(pending):
            if len(running) >= jobs:
                break
            dep = by_name.get(t.after) if t.after else None
            if dep is not None and dep.name in failed:
                pending.remove(t)
                failed.append(t.name)
                print(f"[reproduce] {t.name}: skipped ({dep.name} failed)", flush=True)
                continue
            if dep is not None and (dep in pending or dep in running):
                continue
            pending.remove(t)
            t.log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[reproduce] {t.name}: start (log {t.log})", flush=True)
            t.log_handle = open(t.log, "w")
            t.started = time.time()
            t.proc = subprocess.Popen(t.cmd, stdout=t.log_handle, stderr=subprocess.STDOUT, env=_env())
            running.append(t)
        if running:
            time.sleep(0.5)
    return failed
