"""``launcher resume RUN_DIR``: continue a stopped, failed or cancelled run with its saved job script.

Clears the ``stopped`` marker and the timeout/preemption counters, then submits the run's
``job/job.sh`` again (``--chain N`` links). The trainer picks up the newest valid checkpoint.
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import Optional, Sequence

import click

from launcher.clusters import load_profile
from plumbing.cli import call, command as cli_command
from plumbing.errors import UserError
from launcher.rundir import RunDir
from launcher.schedulers import get_scheduler
from launcher.status import query_states
from launcher.submit import Prepared, submit_links


class _SavedPlan:
    """Just enough of a JobPlan to build submit commands for a saved run."""

    def __init__(self, rd: RunDir, req: dict, profile):
        self.run_dir = str(rd.path)
        self.profile = profile
        self.group = req.get("group", "")
        self.walltime_s = req["walltime_s"]
        self.warning_lead_s = min(profile.warning_lead_s, self.walltime_s // 4)


@cli_command("resume", epilog="Example: launcher resume runs/pixpro-k6-g8 --chain 3")
@click.argument("run_dir")
@click.option("--chain", type=int, default=1, show_default=True, help="submit N dependent links")
@click.option("--wait", is_flag=True, help="local scheduler: run in the foreground")
def command(**opts) -> int:
    """Continue a stopped, failed or cancelled run from its checkpoint, with its saved job script."""
    args = SimpleNamespace(**opts)
    if args.chain < 1:
        raise UserError(f"--chain {args.chain}: must be at least 1")
    rd = RunDir(args.run_dir).require()
    if rd.is_done():
        print(f"launcher: {rd.path} is already done", file=sys.stderr)
        return 0
    if not rd.script.is_file():
        raise UserError(f"{rd.script} is missing; render and submit the run again")
    req = rd.request()
    src = req.get("profile_source") or ""
    profile = load_profile(src if os.path.isfile(src) else req["profile"])
    sched = get_scheduler(req["scheduler"])
    jobs = rd.jobs(sched.parse_job_id)
    ids = [j.job_id for j in jobs if j.job_id not in ("", "?")][-5:]
    if ids:
        live = {i: st for i, st in query_states(rd, ids, 0.0).items()
                if st.split(" ")[0] in ("queued", "running", "held")}
        if live:
            i, st = next(iter(live.items()))
            raise UserError(f"job {i} of {rd.path} is still {st}; wait for it or 'launcher cancel' the run first")
    links = [int(j.link) for j in jobs if j.link.isdigit()]
    first = max(links) + 1 if links else 0
    rd.clear_stop()
    for kind in ("timeout", "preemption"):
        try:
            (rd.job / f"{kind}.count").unlink()
        except FileNotFoundError:
            pass
    prep = Prepared(_SavedPlan(rd, req, profile), sched, rd.script.read_text())
    return submit_links(prep, rd, first, args.chain, "resume", wait=args.wait)


def main(argv=None) -> int:
    return call(command, argv, "launcher resume")


if __name__ == "__main__":
    sys.exit(main())
