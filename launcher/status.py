"""``launcher status RUN_DIR``: where a run stands, from its run directory and the scheduler.

For a training run: step/total, samples/s and the ETA at the current rate, the newest
checkpoint's age (:mod:`launcher.progress`), timeouts and preemptions against their budgets,
what the links ran with and a warning line for each link that ran with another environment than
the first (:mod:`launcher.envrecord`), the newest jobs with the scheduler's word for each, and
the newest events. For a pipeline directory, one line per stage.

Scheduler queries are rate-limited: the answer is cached in ``job/status_cache.json`` and reused
for ``--min-interval`` seconds (default 30), so a loop of ``launcher status`` does not flood the
batch system.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Dict, List

import click

from launcher import envrecord
from launcher.job_files import RunDir
from launcher.progress import Progress, eta_text, format_duration, format_rate, read_progress, step_text
from launcher.schedulers import get_scheduler
from plumbing.atomic import atomic_write_text
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_state(rd: RunDir) -> Dict[str, str]:
    p = rd.job / "local.json"
    if not p.exists():
        return {}
    st = json.loads(p.read_text())
    state = st.get("state", "?")
    if state == "running" and not pid_alive(int(st.get("pid", 0))):
        state = "gone (runner died)"
    return {st.get("job_id", "?"): f"{state} (restarts {st.get('restarts', 0)}, rc {st.get('rc')})"}


def query_states(rd: RunDir, ids: List[str], min_interval: float) -> Dict[str, str]:
    """Scheduler states of ``ids``; jobs the scheduler no longer lists are 'finished (not in queue)'."""
    req = rd.request()
    sched = get_scheduler(req["scheduler"])
    if sched.name == "local":
        return local_state(rd)
    cache = rd.job / "status_cache.json"
    if cache.exists():
        c = json.loads(cache.read_text())
        if time.time() - c.get("time", 0) < min_interval and c.get("ids") == ids:
            return c["states"]
    argv = sched.status_argv(ids)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        output = proc.stdout
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{argv[0]}: cannot query the scheduler ({exc.__class__.__name__})") from None
    found = sched.parse_status(output, ids)
    states = {i: found.get(i, "finished (not in queue)") for i in ids}
    atomic_write_text(cache, json.dumps({"time": time.time(), "ids": ids, "states": states}) + "\n")
    return states


def budgets(rd: RunDir, req: dict) -> Dict[str, str]:
    """The timeout and preemption budgets the links run under: the request's values, else those
    rendered into ``job/job.sh`` (the profile's), else '?'."""
    try:
        script = rd.script.read_text()
    except OSError:
        script = ""
    out = {}
    for kind, key in (("timeout", "max_timeouts"), ("preemption", "max_preemptions")):
        if req.get(key) is not None:
            out[kind] = str(req[key])
            continue
        m = re.search(rf"^LAUNCHER_{key.upper()}='?(\d+)'?$", script, re.MULTILINE)
        out[kind] = m.group(1) if m else "?"
    return out


def progress_line(p: Progress, stopped: bool) -> str:
    """``step 120/1000 (12%), 85.3 samples/s, ETA 3h05m at that rate; last step logged 40s ago``."""
    if p.step is None:
        return "no step logged yet" + ("" if p.done else " (metrics.csv and logs/train.log have none)")
    pct = f" ({p.percent:.0f}%)" if p.percent is not None else ""
    text = f"step {step_text(p)}{pct}, {format_rate(p.samples_per_s)} samples/s"
    if not p.done and not stopped and p.eta_s is not None:
        text += f", ETA {format_duration(p.eta_s)} at that rate (time in the queue not counted)"
    if p.step_age_s is not None and not p.done:
        text += f"; last step logged {format_duration(p.step_age_s)} ago"
    return text


def run_state(rd: RunDir) -> str:
    if rd.is_done():
        return "done"
    reason = rd.stopped_reason()
    if reason:
        return f"stopped: {reason}"
    return "in progress"


@cli_command(
    "status",
    epilog="Examples: launcher status runs/pixpro-k6-g8 --events 10; "
    "launcher status pipelines/pixpro-k6-g16 (one line per stage)",
)
@click.argument("run_dir")
@click.option("--min-interval", type=float, default=30.0, show_default=True, help="seconds between scheduler queries")
@click.option("--events", type=int, default=5, show_default=True, help="how many recent job events to show")
def command(**opts) -> int:
    """Where a run stands, from its run directory and the scheduler (queries are rate-limited)."""
    args = SimpleNamespace(**opts)
    from launcher.pipeline import PipelineDir

    if PipelineDir(args.run_dir).exists():
        return pipeline_status(PipelineDir(args.run_dir), args.min_interval)
    rd = RunDir(args.run_dir).require()
    req = rd.request()
    sched = get_scheduler(req["scheduler"])
    jobs = rd.jobs(sched.parse_job_id)
    ids = [j.job_id for j in jobs if j.job_id not in ("", "?")]
    recent = ids[-5:]
    states = query_states(rd, recent, args.min_interval) if recent else {}
    counts = rd.counters()
    most = budgets(rd, req)
    print(f"run      {rd.path}")
    print(f"state    {run_state(rd)}")
    print(f"profile  {req['profile']} ({req['scheduler']}), {req['nodes']} node(s) x {req['ranks_per_node']} rank(s)")
    if req.get("stage", "train") == "train":
        p = read_progress(rd.path)
        print(f"progress {progress_line(p, rd.stopped_reason() is not None)}")
        if p.checkpoint:
            print(f"checkpt  {p.checkpoint}, written {format_duration(p.checkpoint_age_s)} ago")
        else:
            print("checkpt  none yet")
    print(
        f"resumes  {counts['timeout']} after timeouts, {counts['preemption']} after preemptions "
        f"(budgets: {most['timeout']} timeouts, {most['preemption']} preemptions)"
    )
    recs = envrecord.records(rd)
    if recs:
        path, newest = recs[-1]
        print(f"env      {envrecord.describe(newest)} ({path.relative_to(rd.path)})")
    for line in envrecord.warnings(rd):
        print(f"warning  {line}")
    for j in jobs[-5:]:
        print(f"job      {j.job_id}  link {j.link}  {j.kind:7s} {states.get(j.job_id, '')}")
    for ev in rd.events()[-args.events :]:
        print("event    " + "  ".join(ev))
    return 0


def pipeline_status(pipe, min_interval: float) -> int:
    """One line per stage: its state (done, running with its newest event, pending, failed or cancelled
    with the stop line) and its newest job with the scheduler's word for it."""
    from launcher.pipeline import stage_state

    print(f"pipeline {pipe.path}")
    for st in pipe.stages():
        rd = RunDir(st.run_dir)
        state = stage_state(rd)
        job, sched_state = "-", ""
        if rd.exists():
            sched = get_scheduler(rd.request()["scheduler"])
            jobs = [j.job_id for j in rd.jobs(sched.parse_job_id) if j.job_id not in ("", "?")]
            if jobs:
                job = jobs[-1]
                if state not in ("done",):
                    sched_state = query_states(rd, [job], min_interval).get(job, "")
        events = rd.events() if rd.exists() else []
        last = events[-1][3] if events and state == "running" else ""
        progress = ""
        if st.name == "train" and rd.exists() and state != "not submitted":
            p = read_progress(rd.path)
            if p.step is not None:
                progress = f"  step {step_text(p)}, ETA {eta_text(p, rd.stopped_reason() is not None)}"
        print(
            f"{st.name:8s} {state}"
            + (f" ({last})" if last else "")
            + progress
            + f"  job {job}"
            + (f" {sched_state}" if sched_state else "")
        )
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher status")


if __name__ == "__main__":
    sys.exit(main())
