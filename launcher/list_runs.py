"""``launcher list [ROOT]``: the runs under ROOT (default ``runs``), one line each."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

import click

from plumbing.cli import call, command as cli_command
from plumbing.errors import UserError
from plumbing.runs import JOB
from launcher.rundir import RunDir
from launcher.schedulers import get_scheduler
from launcher.status import run_state


@cli_command("list", epilog="Example: launcher list runs/")
@click.argument("root", default="runs", required=False)
def command(**opts) -> int:
    """The runs under ROOT (default runs), one line each: scheduler, profile, last job, state."""
    args = SimpleNamespace(**opts)
    root = Path(args.root)
    rows = []
    for req_file in sorted(root.glob(f"*/{JOB}/request.json")):
        rd = RunDir(str(req_file.parent.parent))
        try:
            req = json.loads(req_file.read_text())
        except json.JSONDecodeError:
            continue
        try:
            parse_id = get_scheduler(req.get("scheduler", "")).parse_job_id
        except UserError:  # an unknown scheduler name in a hand-edited request: ids stay as recorded
            parse_id = None
        jobs = rd.jobs(parse_id)
        last = jobs[-1].job_id if jobs else "-"
        rows.append((req_file.parent.parent.name, req.get("scheduler", "?"), req.get("profile", "?"),
                     last or "-", run_state(rd)))
    if not rows:
        print(f"no runs under {root}", file=sys.stderr)
        return 0
    print(f"{'RUN':30s} {'SCHEDULER':9s} {'PROFILE':10s} {'LAST JOB':12s} STATE")
    for r in rows:
        print(f"{r[0]:30s} {r[1]:9s} {r[2]:10s} {r[3]:12s} {r[4]}")
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher list")


if __name__ == "__main__":
    sys.exit(main())
