"""``launcher resume RUN_DIR``: continue a stopped, failed or cancelled run with its saved job script.

Clears the ``stopped`` marker, the timeout/preemption counters and the ``notified`` marker, then submits the run's
``job/job.sh`` again (``--chain N`` links). The trainer picks up the newest valid checkpoint.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import cast

import click

from launcher.clusters import load_profile
from launcher.job_files import RunDir
from launcher.notify import release
from launcher.request import JobPlan
from launcher.schedulers import get_scheduler
from launcher.status import query_states
from launcher.submit import Prepared, submit_links
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


class _SavedPlan:
    """Just enough of a JobPlan to build submit commands for a saved run."""

    def __init__(self, rd: RunDir, req: dict, profile):
        self.run_dir = str(rd.path)
        self.profile = profile
        self.group = req.get("group", "")
        self.walltime_s = req["walltime_s"]
        self.warning_lead_s = min(profile.warning_lead_s, self.walltime_s // 4)
        self.chain = 1


@cli_command(
    "resume",
    epilog="Examples: launcher resume runs/pixpro-k6-g8 --chain 3; launcher resume pipelines/pixpro-k6-g16 "
    "(a pipeline: from its first unfinished stage)",
)
@click.argument("run_dir")
@click.option("--chain", type=int, default=1, show_default=True, help="submit N dependent links")
@click.option("--wait", is_flag=True, help="local scheduler: run in the foreground")
def command(**opts) -> int:
    """Continue a stopped, failed or cancelled run from its checkpoint, with its saved job script (a pipeline:
    every unfinished stage, each after the one before)."""
    args = SimpleNamespace(**opts)
    if args.chain < 1:
        raise UserError(f"--chain {args.chain}: must be at least 1")
    from launcher.pipeline import PipelineDir, submit_stages

    pipe = PipelineDir(args.run_dir)
    if pipe.exists():
        stages = [
            (st.name, st.needs, saved_run(RunDir(st.run_dir), args.chain))
            for st in pipe.stages()
            if not RunDir(st.run_dir).is_done()
        ]
        if not stages:
            print(f"launcher: {pipe.path} is already done", file=sys.stderr)
            return 0
        return submit_stages(pipe, [s for s in stages if s[2] is not None], wait=args.wait, kind="resume")
    rd = RunDir(args.run_dir).require()
    if rd.is_done():
        print(f"launcher: {rd.path} is already done", file=sys.stderr)
        return 0
    prep = saved_run(rd, args.chain)
    return submit_links(prep, rd, next_link(rd), args.chain, "resume", wait=args.wait)


def saved_run(rd: RunDir, chain: int) -> Prepared:
    """A run (or pipeline stage) made ready to continue: no live job, stop marker and budgets cleared."""
    rd.require()
    if not rd.script.is_file():
        raise UserError(f"{rd.script} is missing; render and submit the run again")
    req = rd.request()
    src = req.get("profile_source") or ""
    profile = load_profile(src if os.path.isfile(src) else req["profile"])
    sched = get_scheduler(req["scheduler"])
    jobs = rd.jobs(sched.parse_job_id)
    ids = [j.job_id for j in jobs if j.job_id not in ("", "?")][-5:]
    if ids:
        live = {
            i: st for i, st in query_states(rd, ids, 0.0).items() if st.split(" ")[0] in ("queued", "running", "held")
        }
        if live:
            i, st = next(iter(live.items()))
            raise UserError(f"job {i} of {rd.path} is still {st}; wait for it or 'launcher cancel' the run first")
    rd.clear_stop()
    release(rd.job)  # the run's next end is told again
    for kind in ("timeout", "preemption"):
        try:
            (rd.job / f"{kind}.count").unlink()
        except FileNotFoundError:
            pass
    saved = _SavedPlan(rd, req, profile)
    saved.chain = chain
    return Prepared(cast(JobPlan, saved), sched, rd.script.read_text())  # only the fields submitting reads


def next_link(rd: RunDir) -> int:
    links = [int(j.link) for j in rd.jobs() if j.link.isdigit()]
    return max(links) + 1 if links else 0


def main(argv=None) -> int:
    return call(command, argv, "launcher resume")


if __name__ == "__main__":
    sys.exit(main())
