"""How far a training run is: step and total, samples/s, ETA, the last checkpoint's age (files only)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from plumbing.runs import RunLayout

TAIL_BYTES = 256 * 1024  #: how much of the end of metrics.csv and train.log is read
RATE_WINDOW = 20  #: the newest logged steps a rate is taken over

_STEP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,(\d{1,6}))? \S+ \w+ step (\d+)/(\d+)\b")
_START = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,\d+)? \S+ \w+ (?:starting: (\d+) steps|resumed from step (\d+))"
)


@dataclass(frozen=True)
class LogStep:
    """One ``step N/TOTAL`` line of train.log (``time`` in seconds, the log's local clock)."""

    time: float
    step: int
    total: int


@dataclass(frozen=True)
class Progress:
    step: Optional[int] = None  #: the newest logged (or finished) step
    total: Optional[int] = None  #: the run's last step
    samples_per_s: Optional[float] = None  #: the trainer's rate, mean of the newest logged steps
    steps_per_s: Optional[float] = None  #: the ETA's rate: the clock's in the newest link, else the trainer's
    eta_s: Optional[float] = None  #: seconds to the last step at steps_per_s
    step_age_s: Optional[float] = None  #: seconds since the newest step was logged
    checkpoint: Optional[str] = None  #: the newest complete checkpoint's file name
    checkpoint_age_s: Optional[float] = None
    done: bool = False

    @property
    def percent(self) -> Optional[float]:
        if self.step is None or not self.total:
            return None
        return 100.0 * self.step / self.total


# -- pure functions over text ------------------------------------------------------------------
def parse_log(lines: Sequence[str]) -> List[Tuple[str, LogStep]]:
    """``("step", LogStep)`` for each step line and ``("start", LogStep)`` for each link's first line
    (``starting``: step 0 and the total; ``resumed``: its step, total 0), in file order."""
    out: List[Tuple[str, LogStep]] = []
    for line in lines:
        m = _STEP.match(line)
        if m:
            out.append(("step", LogStep(_clock(m.group(1), m.group(2)), int(m.group(3)), int(m.group(4)))))
            continue
        m = _START.match(line)
        if m:
            total = int(m.group(2)) if m.group(2) else 0
            step = int(m.group(3)) if m.group(3) else 0
            out.append(("start", LogStep(_clock(m.group(1), None), step, total)))
    return out


def _clock(stamp: str, fraction: Optional[str]) -> float:
    t = time.mktime(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timetuple())
    return t + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def newest_link_steps(entries: Sequence[Tuple[str, LogStep]]) -> List[LogStep]:
    """The step lines after the newest link's start line (all of them when no start line is seen)."""
    steps: List[LogStep] = []
    for kind, item in entries:
        if kind == "start":
            steps = []
        else:
            steps.append(item)
    return steps


def clock_rate(steps: Sequence[LogStep], window: int = RATE_WINDOW) -> Optional[float]:
    """Steps per second between the first and the last of the newest ``window`` step lines (None
    with fewer than two, or when the clock or the step did not move forward)."""
    recent = list(steps)[-window:]
    if len(recent) < 2:
        return None
    ds, dt = recent[-1].step - recent[0].step, recent[-1].time - recent[0].time
    return ds / dt if ds > 0 and dt > 0 else None


def total_from_log(entries: Sequence[Tuple[str, LogStep]]) -> Optional[int]:
    """The run's last step from the newest line that says it."""
    for _, item in reversed(entries):
        if item.total:
            return item.total
    return None


def metrics_rows(header: str, lines: Sequence[str]) -> List[dict]:
    """The complete rows of a metrics.csv tail (``lines`` after ``header``; a last line without its
    newline, being written, and a line with another number of fields than the header are left out)."""
    names = next(csv.reader([header]), [])
    whole = [l for l in lines if l.endswith("\n")]
    rows = []
    for values in csv.reader(io.StringIO("".join(whole))):
        if len(values) == len(names) and values[0] != names[0]:
            rows.append(dict(zip(names, values)))
    return rows


def last_step(rows: Sequence[dict]) -> Optional[int]:
    for row in reversed(rows):
        try:
            return int(row["step"])
        except (KeyError, ValueError):
            continue
    return None


def trainer_rate(rows: Sequence[dict], window: int = RATE_WINDOW) -> Optional[float]:
    """The mean of ``samples_per_s`` over the newest ``window`` rows that have it."""
    values = []
    for row in reversed(rows):
        try:
            v = float(row.get("samples_per_s", ""))
        except ValueError:
            continue
        if v > 0:
            values.append(v)
        if len(values) == window:
            break
    return sum(values) / len(values) if values else None


def eta_seconds(step: Optional[int], total: Optional[int], steps_per_s: Optional[float]) -> Optional[float]:
    if step is None or not total or not steps_per_s or steps_per_s <= 0:
        return None
    return max(0, total - step) / steps_per_s


def format_duration(seconds: Optional[float]) -> str:
    """``45s``, ``12m05s``, ``3h07m``, ``2d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rate(samples_per_s: Optional[float]) -> str:
    if samples_per_s is None:
        return "-"
    return f"{samples_per_s:.3g}" if samples_per_s < 100 else f"{samples_per_s:.0f}"


def combine(
    rows: Sequence[dict],
    entries: Sequence[Tuple[str, LogStep]],
    batch: Optional[int],
    done: bool,
    done_step: Optional[int],
    checkpoint: Optional[str],
    checkpoint_mtime: Optional[float],
    step_mtime: Optional[float],
    now: float,
) -> Progress:
    """Progress from what was read: metrics rows, train.log entries, the global batch, whether the
    run is done and the step its marker names (None: none named), the newest checkpoint and its
    mtime, the time the newest step was written (the newest of metrics.csv's and train.log's mtimes)."""
    steps = [item for kind, item in entries if kind == "step"]
    candidates = [s for s in (last_step(rows), steps[-1].step if steps else None, done_step) if s is not None]
    step = done_step if done_step is not None else (max(candidates) if candidates else None)
    total = total_from_log(entries) or done_step
    samples = trainer_rate(rows)
    per_step = clock_rate(newest_link_steps(entries))
    if per_step is None and samples is not None and batch:
        per_step = samples / batch
    if samples is None and per_step is not None and batch:
        samples = per_step * batch
    return Progress(
        step=step,
        total=total,
        samples_per_s=samples,
        steps_per_s=per_step,
        eta_s=0.0 if done else eta_seconds(step, total, per_step),
        step_age_s=None if step_mtime is None or step is None else max(0.0, now - step_mtime),
        checkpoint=checkpoint,
        checkpoint_age_s=None if checkpoint_mtime is None else max(0.0, now - checkpoint_mtime),
        done=done,
    )


# -- reading the files -------------------------------------------------------------------------
def read_tail(path: Path, nbytes: int = TAIL_BYTES) -> Tuple[str, List[str]]:
    """The file's first line and the whole lines of its last ``nbytes`` (('', []) when unreadable)."""
    try:
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", "replace")
            size = os.fstat(f.fileno()).st_size
            start = max(f.tell(), size - nbytes)
            f.seek(start)
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return "", []
    lines = data.splitlines(keepends=True)
    if start > len(first.encode()) and lines:
        lines = lines[1:]  # the read began inside a line
    return first, lines


def _mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def marker_step(text: str) -> Optional[int]:
    """The step a ``done`` marker names: the trainer's JSON ``{"step": N, ...}`` or a ``step N`` line;
    None when it names none (a pipeline stage's marker)."""
    try:
        return int(json.loads(text)["step"])
    except (ValueError, KeyError, TypeError):
        m = re.search(r"\bstep\D{0,3}(\d+)", text)
        return int(m.group(1)) if m else None


def global_batch(layout: RunLayout) -> Optional[int]:
    try:
        return int(json.loads(layout.config.read_text())["data"]["batch_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_progress(root: os.PathLike, now: Optional[float] = None) -> Progress:
    """A run directory's progress from its files (fields the files do not say are None)."""
    layout = RunLayout(root)
    now = time.time() if now is None else now
    header, tail = read_tail(layout.metrics)
    rows = metrics_rows(header, tail) if header else []
    log = layout.logs / "train.log"
    _, log_lines = read_tail(log)
    entries = parse_log(log_lines)
    if log_lines and not any(kind == "step" for kind, _ in entries):
        entries = parse_log(_all_lines(log))  # a long stretch without a step line: read it all
    try:
        done, fin = True, marker_step(layout.done.read_text())
    except OSError:
        done, fin = False, None
    ckpt = layout.latest_checkpoint()
    ckpt_mtime = _mtime(ckpt) if ckpt is not None else None
    if ckpt is not None and ckpt_mtime is None:
        ckpt_mtime = _mtime(layout.latest)
    written = [t for t in (_mtime(layout.metrics), _mtime(log)) if t is not None]
    return combine(
        rows,
        entries,
        global_batch(layout),
        done,
        fin,
        ckpt.name if ckpt is not None else None,
        ckpt_mtime,
        max(written) if written else None,
        now,
    )


def _all_lines(path: Path) -> List[str]:
    try:
        with open(path, errors="replace") as f:
            return f.readlines()
    except OSError:
        return []


# -- one line for people -----------------------------------------------------------------------
def step_text(p: Progress) -> str:
    """``120/1000`` (``120/?`` with no total known, ``-`` before the first step)."""
    if p.step is None:
        return "-"
    return f"{p.step}/{p.total}" if p.total else f"{p.step}/?"


def eta_text(p: Progress, stopped: bool = False) -> str:
    if p.done:
        return "done"
    if stopped:
        return "stopped"
    return format_duration(p.eta_s)
