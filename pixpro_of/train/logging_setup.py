"""The trainer's logging: ``logs/train.log`` per rank (rank 0 also on stderr), a file handler
that stays quiet on a full disk, and :data:`FILE_ONLY` for records kept out of stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

from plumbing.runs import RunLayout

FILE_ONLY = {"file_only": True}  # ``log.error(..., extra=FILE_ONLY)``: not echoed to stderr


class _LogFileHandler(logging.FileHandler):
    """A log file that stays quiet when it cannot be written (a full disk): logging's default
    prints a traceback per record to stderr. The first error is kept in ``error``."""

    error: Optional[BaseException] = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        if self.error is None:
            self.error = sys.exc_info()[1]


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def setup_logging(run_dir: Path, rank: int) -> logging.Handler:
    """Append to ``logs/train.log`` (rank 0; ``train.rank{r}.log`` otherwise); rank 0 also to stderr."""
    logs = RunLayout(run_dir).logs
    logs.mkdir(parents=True, exist_ok=True)
    name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    fh = _LogFileHandler(logs / name)
    fmt = logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    fh.setFormatter(fmt)
    root = logging.getLogger("pixpro_of")
    root.setLevel(logging.INFO)
    root.addHandler(fh)
    if rank == 0 and not any(getattr(h, "_pixpro_console", False) for h in root.handlers):
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(fmt)
        ch.addFilter(_not_file_only)
        ch._pixpro_console = True  # type: ignore[attr-defined]
        root.addHandler(ch)
    return fh
