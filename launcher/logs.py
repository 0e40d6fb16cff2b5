"""``launcher logs RUN_DIR``: the run's log (``logs/run.log``, appended by every link) and the scheduler's own files."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import click

from launcher.job_files import RunDir
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError

POLL_S = 1.0
#: After the run is done or stopped: how long the log may stay quiet before following ends
#: although the link's last event has not been seen (a run stopped while its job was queued).
QUIET_S = 10.0
#: The policy's events after which a link writes nothing but its clean-up (launcher.outcome).
FINAL_EVENTS = ("finished", "fail:", "stop:", "skip:")


def scheduler_outputs(rd: RunDir) -> List[Path]:
    """The scheduler's own output files in ``logs/`` (everything but run.log and the trainer's
    ``train*.log``), oldest first."""
    try:
        files = [
            p for p in rd.logs.iterdir() if p.is_file() and p.name != rd.log.name and not p.name.startswith("train")
        ]
    except OSError:
        return []
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def last_event_is_final(rd: RunDir) -> bool:
    events = rd.events()
    if not events or len(events[-1]) < 4:
        return False
    text = events[-1][3]
    return text.startswith(FINAL_EVENTS) or text.endswith("not continuing")


def tail_lines(path: Path, n: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines() if n <= 0 else deque(f, maxlen=n))


class Follower:
    """New text of run.log and of the scheduler's files since the last look."""

    def __init__(self, rd: RunDir):
        self.rd = rd
        self.offsets: Dict[Path, int] = {}
        self.inodes: Dict[Path, int] = {}

    def skip_to_end(self, path: Path) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        self.offsets[path], self.inodes[path] = st.st_size, st.st_ino

    def new_text(self, path: Path) -> str:
        start = self.offsets.get(path, 0)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size < start or self.inodes.get(path, st.st_ino) != st.st_ino:
                    start = 0  # written anew (PBS copies a job's output file over the last job's)
                f.seek(start)
                data = f.read()
        except OSError:
            return ""
        end = data.rfind(b"\n") + 1  # whole lines only; the rest comes with the next look
        self.offsets[path] = start + end
        self.inodes[path] = st.st_ino
        return data[:end].decode("utf-8", "replace")

    def poll(self) -> str:
        out = self.new_text(self.rd.log)
        for p in scheduler_outputs(self.rd):
            text = self.new_text(p)
            out += "".join(f"[{p.name}] {line}\n" for line in text.splitlines())
        return out


def show(rd: RunDir, lines: int, follower: Optional[Follower]) -> bool:
    """Print the tail of run.log and of each non-empty scheduler file; False when there is neither."""
    shown = False
    if rd.log.exists():
        sys.stdout.write(tail_lines(rd.log, lines))
        shown = True
        if follower:
            follower.skip_to_end(rd.log)
    for p in scheduler_outputs(rd):
        if p.stat().st_size == 0:
            continue
        sys.stdout.write(f"==> {p.relative_to(rd.path)} (the scheduler's own output) <==\n")
        sys.stdout.write(tail_lines(p, lines))
        shown = True
        if follower:
            follower.skip_to_end(p)
    sys.stdout.flush()
    return shown


def follow(rd: RunDir, follower: Follower, poll_s: float = POLL_S, quiet_s: float = QUIET_S) -> None:
    """Print new lines until the run is done or stopped and its link has written its last event
    (or has been quiet for ``quiet_s`` since), then what came after it."""
    quiet_since: Optional[float] = None
    while True:
        chunk = follower.poll()
        if chunk:
            sys.stdout.write(chunk)
            sys.stdout.flush()
        ended = rd.is_done() or rd.stopped_reason() is not None
        if not ended:
            quiet_since = None
        elif last_event_is_final(rd):
            time.sleep(poll_s)  # the link's clean-up lines
            sys.stdout.write(follower.poll())
            sys.stdout.flush()
            return
        elif chunk or quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(poll_s)


@cli_command("logs", epilog="Example: launcher logs runs/pixpro-k6-g8 -n 100 --follow")
@click.argument("run_dir")
@click.option("-n", "--lines", type=int, default=40, show_default=True, help="last N lines (0 = all)")
@click.option(
    "-f",
    "--follow",
    "follow_",
    is_flag=True,
    help="keep printing, across requeues and chain links, until the run is done or stopped for good",
)
def command(**opts) -> int:
    """The run's log (logs/run.log, appended by every link), then the scheduler's own output files
    that are not empty (what a job said before reaching its run directory, the batch system's messages)."""
    args = SimpleNamespace(**opts)
    rd = RunDir(args.run_dir).require()
    follower = Follower(rd) if args.follow_ else None
    if not show(rd, args.lines, follower):
        if follower is None:
            raise UserError(f"{rd.log} does not exist yet (no job of this run has started)")
        print(f"launcher logs: waiting for the first job of {rd.path} to start", file=sys.stderr, flush=True)
    if follower is not None:
        follow(rd, follower)
    return 0


def main(argv=None) -> int:
    return call(command, argv, "launcher logs")


if __name__ == "__main__":
    sys.exit(main())
