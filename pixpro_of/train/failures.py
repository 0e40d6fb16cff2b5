"""Training failures as one line: :class:`TrainingFailure`, the wording of each fault (a full disk,
a dead DataLoader worker, a failed collective, a bad sample, a spent skip budget), and the probing
of a loader's workers around torch's SIGCHLD handler. The full story goes to the rank's log file.
"""

from __future__ import annotations

import errno
import logging
import signal
import time
import traceback
from pathlib import Path
from typing import Optional, Tuple

from pixpro_of.train.logging_setup import FILE_ONLY
from plumbing.atomic import DiskWriteError, disk_error
from plumbing.errors import UserError

log = logging.getLogger("pixpro_of.train")


class TrainingFailure(UserError):
    """Training cannot go on; ``str()`` is the one line to print.

    ``quiet``: another rank reports this failure (this one only exits). ``grace_s``: seconds to
    wait, with more than one rank, before reporting (an error in a collective is usually the echo
    of another rank's failure, which ends the job first; see :func:`pixpro_of.train.cli.fail_job`
    for the default). ``when``: Unix time of the fault, if known.
    """

    def __init__(
        self, message: str, quiet: bool = False, grace_s: Optional[float] = None, when: Optional[float] = None
    ):
        super().__init__(message)
        self.quiet = quiet
        self.grace_s = grace_s
        self.when = when


def first_line(exc: BaseException) -> str:
    """The one-line gist of ``exc``. For an exception torch re-raised from a DataLoader worker
    ("Caught X in DataLoader worker process N." + the worker's traceback), the worker's own
    last line, prefixed with the worker."""
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        worker = lines[0][len("Caught ") :].split(" in ", 1)[-1].rstrip(".")
        return f"{worker}: {lines[-1].strip()}"
    return (lines[0] if lines else "") or type(exc).__name__


def rank_prefix(rank: int, world_size: int) -> str:
    """``"rank R: "`` with more than one rank, else nothing."""
    return f"rank {rank}: " if world_size > 1 else ""


def budget_spent(budget: int, total: int, epoch: int, last: str, mine: str = "") -> str:
    """The line of a spent ``data.bad_sample_budget``."""
    return f"data.bad_sample_budget={budget} spent: {total} bad samples in epoch {epoch}{mine}; the last: {last}"


def sample_failure(
    rec, rank: int, world_size: int, batch_in_epoch: int, skip_bad: bool, budget: int, skipped: int
) -> TrainingFailure:
    """The line for a sample that could not be built (``rec``: a :class:`~pixpro_of.train.data.BadSample`)
    in batch ``batch_in_epoch``; ``skipped``: the epoch's skipped samples before it, its batch's included."""
    where = f"rank {rank}, " if world_size > 1 else ""
    where += f"epoch {rec.epoch}, batch {batch_in_epoch}"
    if rec.detail:
        log.error("sample %d of epoch %d failed:\n%s", rec.position, rec.epoch, rec.detail, extra=FILE_ONLY)
        return TrainingFailure(f"rank {rank}: {rec.message} ({where})", when=rec.when)
    if not rec.skippable:
        return TrainingFailure(f"{rec.message} ({where})", when=rec.when)
    if skip_bad:
        # The worker tried as many substitutes as the budget allows: the budget is spent.
        mine = f" (counting rank {rank}'s of this step)" if world_size > 1 else ""
        return TrainingFailure(budget_spent(budget, skipped + 1, rec.epoch, rec.message, mine), when=rec.when)
    return TrainingFailure(f"{rec.message} ({where}; data.on_bad_sample=skip would skip it)", when=rec.when)


# ------------------------------------------------------------------ a loader's workers


def stop_worker_watch(loader_it) -> None:
    """Stop torch's SIGCHLD handler from raising for this loader's workers: while a dead worker
    stays registered, every SIGCHLD raises again, anywhere, even inside the failure handling."""
    if loader_it is not None and getattr(loader_it, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(loader_it))
        loader_it._worker_pids_set = False


def dead_workers(loader_it, wait_s: float = 0.0, ignore: Tuple[int, ...] = ()) -> str:
    """Which DataLoader workers died and how, e.g. "DataLoader worker (pid 123) was killed by
    SIGKILL (the OOM killer?; ...)"; empty when none is known to have died (within ``wait_s``).
    Exit codes in ``ignore`` do not count."""
    workers = [w for w in getattr(loader_it, "_workers", ()) if w.pid is not None]
    deadline = time.monotonic() + wait_s
    while True:
        codes = [(w, w.exitcode) for w in workers]
        if any(c not in (None, 0) for _, c in codes) or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    out = []
    for w, code in codes:
        if code is None or code == 0 or code in ignore:
            continue
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            oom = -code == signal.SIGKILL
            hint = " (the OOM killer?; lower data.num_workers or data.prefetch_factor)" if oom else ""
            out.append(f"DataLoader worker (pid {w.pid}) was killed by {name}{hint}")
        else:
            out.append(f"DataLoader worker (pid {w.pid}) exited with code {code}")
    return "; ".join(out)


# ------------------------------------------------------------------ any exception as one line


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, UserError) or type(exc).__name__ == "UserError"  # flow/hdf5_tools errors too


def describe(
    exc: BaseException, rank: int, world_size: int, doing: str, run_dir: Path, dead: str = ""
) -> TrainingFailure:
    """The one-line failure for ``exc``, met while ``doing``; ``dead``: :func:`dead_workers`."""
    who = rank_prefix(rank, world_size)
    if isinstance(exc, TrainingFailure):
        return exc
    if dead:
        # A worker's death shows up as whatever the main process was doing with it: torch's
        # RuntimeError, or a ConnectionResetError/EOFError from a half-sent batch.
        return TrainingFailure(f"{who}{dead} while {doing}")
    if isinstance(exc, DiskWriteError):
        return TrainingFailure(str(exc))
    if _is_user_error(exc):
        return TrainingFailure(first_line(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return TrainingFailure(str(disk_error(exc, exc.filename or run_dir, what=doing)))
    if isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
        # torch: "DataLoader worker (pid(s) 123) exited unexpectedly" / "... is killed by signal: Killed."
        return TrainingFailure(f"{who}{first_line(exc)} while {doing}")
    rank_name = f"rank {rank}" if world_size > 1 else "the trainer"
    return TrainingFailure(f"{rank_name} failed while {doing}: {type(exc).__name__}: {first_line(exc)}", grace_s=3.0)


def report(exc: BaseException, loader_it, rank: int, world_size: int, doing: str, run_dir: Path) -> TrainingFailure:
    """:func:`describe` with the loader's dead workers; the log file gets the line and the traceback
    (stderr gets the one line from the command, :mod:`pixpro_of.train.cli`)."""
    # A pipe torn by a dying worker can be seen before the worker's exit status: wait a moment.
    wait = 2.0 if isinstance(exc, (ConnectionError, EOFError)) else 0.0
    dead = "" if isinstance(exc, (TrainingFailure, DiskWriteError)) else dead_workers(loader_it, wait)
    failure = describe(exc, rank, world_size, doing, run_dir, dead)
    if failure.quiet:
        log.error("stopping: %s (reported by rank 0)", failure, extra=FILE_ONLY)
    else:
        log.error("failed: %s", failure, extra=FILE_ONLY)
    if failure.when is not None:
        log.error(
            "first bad read at %.3f (Unix time), %.3f s ago", failure.when, time.time() - failure.when, extra=FILE_ONLY
        )
    if not _is_user_error(exc):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("while %s:\n%s", doing, tb, extra=FILE_ONLY)
    return failure


def safe_report(
    exc: BaseException, loader_it, rank: int, world_size: int, doing: str, run_dir: Path
) -> TrainingFailure:
    """:func:`report`, retried when an asynchronous exception (torch's SIGCHLD handler reporting
    the same dead worker again) interrupts it."""
    for _ in range(5):
        try:
            stop_worker_watch(loader_it)
            return report(exc, loader_it, rank, world_size, doing, run_dir)
        except Exception:  # noqa: BLE001 - raised by a signal handler while reporting
            continue
    return TrainingFailure(f"{type(exc).__name__}: {first_line(exc)}")
