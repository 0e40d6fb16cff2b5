"""``launcher cancel RUN_DIR``: stop a run: mark it stopped, then cancel its queued and running jobs.

The ``stopped`` marker makes any link that still starts exit at once; ``launcher resume``
clears it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace
from typing import Optional, Sequence

import click

from plumbing.cli import call, command as cli_command
from plumbing.errors import UserError
from launcher.rundir import RunDir
from launcher.schedulers import get_scheduler


@cli_command("cancel", epilog="Example: launcher cancel runs/pixpro-k6-g8")
@click.argument("run_dir")
def command(**opts) -> int:
    """Stop a run: mark it stopped, then cancel its queued and running jobs ('launcher resume' continues it)."""
    args = SimpleNamespace(**opts)
    rd = RunDir(args.run_dir).require()
    sched = get_scheduler(rd.request()["scheduler"])
    rd.stop("cancelled by the user")
    if sched.name == "local":
        p = rd.job / "local.json"
        if p.exists():
            st = json.loads(p.read_text())
            if st.get("state") == "running":
                try:
                    os.kill(int(st["pid"]), signal.SIGTERM)
                    print(f"launcher: sent SIGTERM to local runner {st['pid']}", file=sys.stderr)
                except ProcessLookupError:
                    pass
        return 0
    ids = [j.job_id for j in rd.jobs(sched.parse_job_id) if j.job_id not in ("", "?")]
    if not ids:
        return 0
    argv_ = sched.cancel_argv(ids)
    try:
        proc = subprocess.run(argv_, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"{argv_[0]}: command not found") from None
    # Finished jobs make the cancel command complain; that is not an error here.
    print(f"launcher: {' '.join(argv_)} -> exit {proc.returncode}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher cancel")


if __name__ == "__main__":
    sys.exit(main())
