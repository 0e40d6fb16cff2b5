"""Run a job script on this machine, as a scheduler would: ``python -m launcher.local_runner SCRIPT``."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

import click

from plumbing.atomic import atomic_write_text
from plumbing.cli import command as cli_command
from plumbing.cli import run
from plumbing.errors import UserError
from plumbing.parse import checked
from plumbing.parse import signal_name as parse_signal_name
from plumbing.private_dir import private_dir
from plumbing.runs import EXIT_RESUME

MAX_RESTARTS = 1000


class _Cancel:
    requested = False


def _write_state(path: Path, **state) -> None:
    atomic_write_text(path, json.dumps(state, sort_keys=True) + "\n")


SLOTS_ENV = "LAUNCHER_LOCAL_SLOTS"
SLOT_DIR_ENV = "LAUNCHER_LOCAL_SLOT_DIR"


def default_slot_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"launcher-slots-{os.getuid()}"


def try_slot(slot_dir: Path, slots: int) -> Optional[object]:
    """An open slot file locked exclusively (keep it open to hold the slot), or None when all are taken."""
    for i in range(slots):
        fd = os.open(slot_dir / f"slot.{i}", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        f = os.fdopen(fd, "a")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return f
    return None


def needs_state(needs: Sequence[str]) -> Optional[str]:
    """'' when every run directory of ``needs`` is done, None while one may still finish, else why not."""
    for d in needs:
        run = Path(d)
        if (run / "done").exists():
            continue
        if (run / "job" / "stopped").exists():
            return f"{run.name} stopped: {(run / 'job' / 'stopped').read_text().strip()}"
        try:
            st = json.loads((run / "job" / "local.json").read_text())
            newest = (run / "job" / "jobs.tsv").read_text().splitlines()[-1].split("\t")[3]
        except (OSError, ValueError, IndexError):  # not submitted or started yet, or caught mid-write
            return None
        if st.get("job_id") != newest:  # the state of an earlier submission (before a resume)
            return None
        if st.get("state") in ("finished", "failed", "cancelled"):
            return f"{run.name} ended without its done marker ({st.get('state')}, rc {st.get('rc')})"
        return None
    return ""


def run_script(
    script: str,
    job_id: str,
    link: int,
    walltime_s: float,
    lead_s: float,
    warn_signal: str,
    state_file: Optional[Path],
    slots: int = 0,
    slot_dir: Optional[Path] = None,
    needs: Sequence[str] = (),
) -> int:
    cancel = _Cancel()
    child: Optional[subprocess.Popen] = None

    def on_term(signum, frame):
        cancel.requested = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    restarts = 0
    rc = 0
    if needs:  # a pipeline stage: wait for the stages it needs, as afterok does
        if state_file:
            _write_state(
                state_file, job_id=job_id, pid=os.getpid(), state="queued", restarts=0, rc=None, needs=list(needs)
            )
        why = needs_state(needs)
        while why is None and not cancel.requested:
            time.sleep(0.5)
            why = needs_state(needs)
        if why or cancel.requested:
            if state_file:
                _write_state(
                    state_file,
                    job_id=job_id,
                    pid=os.getpid(),
                    state="cancelled",
                    restarts=0,
                    rc=None,
                    reason=why or "cancelled",
                )
            return 143 if cancel.requested else 1
    held = None  # the slot file while this job holds a slot (closed, and so released, at exit)
    if slots > 0:
        try:
            slot_dir = Path(private_dir(slot_dir or default_slot_dir(), what="slot directory", tighten=True).path)
        except UserError as exc:
            if state_file:
                _write_state(
                    state_file, job_id=job_id, pid=os.getpid(), state="failed", restarts=0, rc=2, reason=str(exc)
                )
            raise
        if state_file:
            _write_state(
                state_file,
                job_id=job_id,
                pid=os.getpid(),
                state="queued",
                restarts=0,
                rc=None,
                slots=slots,
                slot_dir=str(slot_dir),
            )
        while held is None and not cancel.requested:
            held = try_slot(slot_dir, slots)
            if held is None:
                time.sleep(0.5)
        if held is None:
            if state_file:
                _write_state(state_file, job_id=job_id, pid=os.getpid(), state="cancelled", restarts=0, rc=None)
            return 143
    while True:
        env = dict(os.environ, LAUNCHER_JOB_ID=job_id, LAUNCHER_RESTART_COUNT=str(restarts), LAUNCHER_LINK=str(link))
        if state_file:
            _write_state(state_file, job_id=job_id, pid=os.getpid(), state="running", restarts=restarts, rc=None)
        child = subprocess.Popen(["bash", script], env=env)
        start = time.monotonic()
        warned = killed = False
        while True:
            try:
                rc = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - start
            if walltime_s > 0:
                if warn_signal and not warned and elapsed >= walltime_s - lead_s:
                    child.send_signal(getattr(signal, "SIG" + warn_signal))
                    warned = True
                if not killed and elapsed >= walltime_s:
                    child.send_signal(signal.SIGTERM)
                    killed = True
                if elapsed >= walltime_s + 10:
                    child.kill()
        if rc == EXIT_RESUME and not cancel.requested and restarts < MAX_RESTARTS:
            restarts += 1
            continue
        break
    if state_file:
        state = "cancelled" if cancel.requested else ("finished" if rc == 0 else "failed")
        _write_state(state_file, job_id=job_id, pid=os.getpid(), state=state, restarts=restarts, rc=rc)
    return rc


@cli_command(
    "local_runner",
    epilog="Example: python -m launcher.local_runner --link 0 --walltime 3600 --lead 120 "
    "runs/x/job/job.sh (what 'launcher submit --scheduler local' starts)",
)
@click.argument("script")
@click.option("--job-id", default=None, help="default: local-<pid>")
@click.option("--link", type=int, default=0, show_default=True)
@click.option("--walltime", type=float, default=0.0, show_default=True, help="seconds; 0 = no limit")
@click.option("--lead", type=float, default=0.0, show_default=True, help="seconds before the walltime to send --signal")
@click.option(
    "--signal",
    "signal_name",
    default="USR2",
    show_default=True,
    help="warning signal: USR2, SIGUSR2 or usr2; '' for none",
)
@click.option("--state-file", default=None)
@click.option(
    "--slots", type=int, default=None, help=f"run at most N such jobs at once (default: ${SLOTS_ENV}, else no limit)"
)
@click.option(
    "--slot-dir",
    default=None,
    help=f"directory of the shared slot files (default: ${SLOT_DIR_ENV}, else $TMPDIR/launcher-slots-UID)",
)
@click.option(
    "--needs",
    multiple=True,
    help="run directory whose done marker this job waits for (repeatable); "
    "if it ends without one, this job is cancelled",
)
def command(script, job_id, link, walltime, lead, signal_name, state_file, slots, slot_dir, needs) -> int:
    """Run a job script on this machine as a scheduler would, re-running it after exit 75."""
    warn = checked(parse_signal_name, signal_name, "--signal")[3:] if signal_name else ""  # USR2
    args = SimpleNamespace(
        script=script, job_id=job_id, link=link, walltime=walltime, lead=lead, signal=warn, state_file=state_file
    )
    job_id = args.job_id or f"local-{os.getpid()}"
    if slots is None:
        text = os.environ.get(SLOTS_ENV, "").strip()
        try:
            slots = int(text) if text else 0
        except ValueError:
            raise UserError(f"{SLOTS_ENV}={text!r}: expected a whole number of slots") from None
    if slots < 0:
        raise UserError(f"--slots {slots}: must be 0 (no limit) or more")
    slot_dir = slot_dir or os.environ.get(SLOT_DIR_ENV) or None
    return run_script(
        args.script,
        job_id,
        args.link,
        args.walltime,
        args.lead,
        args.signal,
        Path(args.state_file) if args.state_file else None,
        slots,
        Path(slot_dir) if slot_dir else None,
        needs,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(command, argv, "python -m launcher.local_runner")


if __name__ == "__main__":
    sys.exit(main())
