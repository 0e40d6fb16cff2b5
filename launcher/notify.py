"""Telling the user that a run ended for good: the ``--notify`` command, once per run.

A run ends for good when it is ``done``, ``failed`` (its command or its staging failed, or the
chain could not continue), has spent a resume ``budget``, or was ``stopped`` (``launcher cancel``,
or a requeue the scheduler refused). The job's policy (:mod:`launcher.outcome`) then runs the
run's notify command (``--notify``, else the profile's ``notify``) with ``bash -c``, its outcome
in the environment (:func:`notify_env`), at most :data:`NOTIFY_TIMEOUT_S` seconds. ``job/notified``
is created exclusively first, so a run tells once however many links end; ``launcher resume``
removes it. In a pipeline only the last stage's end, or any stage's failure, is told.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Tuple

OUTCOMES = ("done", "failed", "budget", "stopped")
NOTIFY_TIMEOUT_S = 30
NOTIFIED = "notified"  # in the run's job/ folder


@dataclass(frozen=True)
class Ending:
    """How a run ended for good: one of :data:`OUTCOMES` and the reason in words."""

    outcome: str
    reason: str

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")


def tells(request: Mapping, ending: Ending, later_stages: int) -> bool:
    """Whether this ending is told: the run has a notify command, and a pipeline stage that is done
    is told only when no stage comes after it."""
    if not str(request.get("notify") or "").strip():
        return False
    return not (ending.outcome == "done" and later_stages > 0)


def summary(request: Mapping, run_dir: str, ending: Ending, job_id: str) -> str:
    """One line: ``run RUN_DIR: OUTCOME (REASON) in job ID`` (``pipeline DIR: stage S ...`` for a stage)."""
    stage = request.get("stage") or Path(run_dir).name
    what = f"pipeline {request['pipeline']}: stage {stage}" if request.get("pipeline") else f"run {run_dir}"
    reason = f" ({ending.reason})" if ending.reason and ending.reason != ending.outcome else ""
    return f"{what}: {ending.outcome}{reason} in job {job_id}"


def notify_env(base: Mapping[str, str], request: Mapping, run_dir: str, ending: Ending, job_id: str) -> Dict[str, str]:
    """The notify command's environment: ``base`` plus the run's outcome and paths."""
    env = dict(base)
    env.update(
        {
            "LAUNCHER_OUTCOME": ending.outcome,
            "LAUNCHER_REASON": ending.reason,
            "LAUNCHER_SUMMARY": summary(request, run_dir, ending, job_id),
            "LAUNCHER_RUN_DIR": run_dir,
            "LAUNCHER_RUN_NAME": str(request.get("name") or Path(run_dir).name),
            "LAUNCHER_RUN_LOG": str(Path(run_dir) / "logs" / "run.log"),
            "LAUNCHER_PIPELINE_DIR": str(request.get("pipeline") or ""),
            "LAUNCHER_JOB_ID": job_id,
        }
    )
    return env


def claim(job_dir: Path, ending: Ending, now: str) -> bool:
    """Create ``job/notified`` exclusively; False when this run has told its end already."""
    try:
        fd = os.open(job_dir / NOTIFIED, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{now}\t{ending.outcome}\t{ending.reason}\n")
    return True


def release(job_dir: Path) -> None:
    """Forget that the run told its end (``launcher resume``: the next end is told again)."""
    (job_dir / NOTIFIED).unlink(missing_ok=True)


def run_command(command: str, env: Mapping[str, str], cwd: str, timeout: float = NOTIFY_TIMEOUT_S) -> Tuple[str, float]:
    """Run ``bash -c COMMAND``; a one-line account of how it went and the seconds it took. Never raises."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", "-c", command],
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"the notify command did not end within {timeout:.0f} s (stopped)", time.monotonic() - t0
    except OSError as exc:
        return f"the notify command could not start ({exc.strerror or exc})", time.monotonic() - t0
    took = time.monotonic() - t0
    if proc.returncode == 0:
        return f"sent ({took:.1f} s)", took
    last = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return (f"the notify command exited {proc.returncode}" + (f": {last[-1].strip()[:200]}" if last else "")), took
