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

import click

from launcher.job_files import RunDir
from launcher.schedulers import get_scheduler
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


def cancel_run(rd: RunDir, reason: str) -> str:
    """Mark ``rd`` stopped with ``reason``, then cancel its queued and running jobs; what was done, in words."""
    sched = get_scheduler(rd.request()["scheduler"])
    rd.stop(reason)
    if sched.name == "local":
        p = rd.job / "local.json"
        if p.exists():
            st = json.loads(p.read_text())
            if st.get("state") in ("running", "queued"):
                try:
                    os.kill(int(st["pid"]), signal.SIGTERM)
                    return f"sent SIGTERM to local runner {st['pid']}"
                except ProcessLookupError:
                    pass
        return "no local runner running"
    ids = [j.job_id for j in rd.jobs(sched.parse_job_id) if j.job_id not in ("", "?")]
    if not ids:
        return "no jobs"
    argv_ = sched.cancel_argv(ids)
    try:
        proc = subprocess.run(argv_, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"{argv_[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{argv_[0]}: no answer in 60 s") from None
    # Finished jobs make the cancel command complain; that is not an error here.
    return f"{' '.join(argv_)} -> exit {proc.returncode}"


@cli_command("cancel", epilog="Example: launcher cancel runs/pixpro-k6-g8")
@click.argument("run_dir")
def command(**opts) -> int:
    """Stop a run: mark it stopped, then cancel its queued and running jobs ('launcher resume' continues it).

    A pipeline directory: every stage that has not finished."""
    args = SimpleNamespace(**opts)
    from launcher.pipeline import PipelineDir

    pipe = PipelineDir(args.run_dir)
    runs = [RunDir(st.run_dir) for st in pipe.stages()] if pipe.exists() else [RunDir(args.run_dir).require()]
    for rd in runs:
        if not rd.is_done():
            print(f"launcher: {rd.path.name}: {cancel_run(rd, 'cancelled by the user')}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher cancel")


if __name__ == "__main__":
    sys.exit(main())
