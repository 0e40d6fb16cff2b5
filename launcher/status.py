"""``launcher status RUN_DIR``: where a run stands, from its run directory and the scheduler.

Scheduler queries are rate-limited: the answer is cached in ``job/status_cache.json`` and reused
for ``--min-interval`` seconds (default 30), so a loop of ``launcher status`` does not flood the
batch system.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Dict, List

import click

from plumbing.cli import call, command as cli_command
from plumbing.errors import UserError
from plumbing.atomic import atomic_write_text
from launcher.rundir import RunDir
from launcher.schedulers import get_scheduler


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


def run_state(rd: RunDir) -> str:
    if rd.is_done():
        return "done"
    reason = rd.stopped_reason()
    if reason:
        return f"stopped: {reason}"
    return "in progress"


@cli_command("status", epilog="Examples: launcher status runs/pixpro-k6-g8 --events 10; "
                              "launcher status pipelines/pixpro-k6-g16 (one line per stage)")
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
    print(f"run      {rd.path}")
    print(f"state    {run_state(rd)}")
    print(f"profile  {req['profile']} ({req['scheduler']}), {req['nodes']} node(s) x {req['ranks_per_node']} rank(s)")
    print(f"resumes  {counts['timeout']} after timeouts, {counts['preemption']} after preemptions")
    for j in jobs[-5:]:
        print(f"job      {j.job_id}  link {j.link}  {j.kind:7s} {states.get(j.job_id, '')}")
    for ev in rd.events()[-args.events:]:
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
        print(f"{st.name:8s} {state}" + (f" ({last})" if last else "") + f"  job {job}"
              + (f" {sched_state}" if sched_state else ""))
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher status")


if __name__ == "__main__":
    sys.exit(main())
