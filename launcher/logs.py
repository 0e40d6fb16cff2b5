"""``launcher logs RUN_DIR``: the run's log (``logs/run.log``, appended by every job of the run)."""
from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from typing import Optional, Sequence

from plumbing.errors import UserError
from launcher.rundir import RunDir


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="launcher logs", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("-n", "--lines", type=int, default=40, help="last N lines (0 = all)")
    ap.add_argument("-f", "--follow", action="store_true", help="keep printing until the run is done or stopped")
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
