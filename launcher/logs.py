"""``launcher logs RUN_DIR``: the run's log (``logs/run.log``, appended by every job of the run)."""
from __future__ import annotations

import sys
import time
from collections import deque
from types import SimpleNamespace
from typing import Optional, Sequence

import click

from plumbing.cli import call, command as cli_command
from plumbing.errors import UserError
from launcher.rundir import RunDir


@cli_command("logs", epilog="Example: launcher logs runs/pixpro-k6-g8 -n 100 --follow")
@click.argument("run_dir")
@click.option("-n", "--lines", type=int, default=40, show_default=True, help="last N lines (0 = all)")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the run is done or stopped")
def command(**opts) -> int:
    """The run's log (logs/run.log, appended by every job of the run)."""
    args = SimpleNamespace(**opts)
    rd = RunDir(args.run_dir).require()
    if not rd.log.exists():
        raise UserError(f"{rd.log} does not exist yet (no job of this run has started)")
    with open(rd.log, errors="replace") as f:
        lines = f.readlines()
        tail = lines if args.lines <= 0 else deque(lines, maxlen=args.lines)
        sys.stdout.write("".join(tail))
        sys.stdout.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            elif rd.is_done() or rd.stopped_reason():
                break
            else:
                time.sleep(1.0)
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher logs")


if __name__ == "__main__":
    sys.exit(main())
