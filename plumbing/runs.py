"""The run directory's layout and the trainer's exit codes (ARCHITECTURE.md "Runs"): the one place that names them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

EXIT_FINISHED = 0  #: training finished; the ``done`` marker exists
EXIT_USAGE = 2  #: bad input or a failure reported as one line
EXIT_RESUME = 75  #: EX_TEMPFAIL (sysexits.h): checkpointed, run the same command again to resume

CONFIG = "config.json"
JOB = "job"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
METRICS = "metrics.csv"
TENSORBOARD = "tensorboard"
DONE = "done"


class RunLayout:
    """The paths of one run directory; nothing is created or read until asked."""

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def job(self) -> Path:
        return self.root / JOB

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def latest(self) -> Path:
        """The pointer file: one line, the file name of the newest complete checkpoint."""
        return self.checkpoints / LATEST

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def done(self) -> Path:
        return self.root / DONE

    def is_done(self) -> bool:
        return self.done.exists()

    def latest_checkpoint(self) -> Optional[Path]:
        """The checkpoint the ``latest`` pointer names, or None when there is no pointer yet."""
        return latest_in(self.checkpoints)


def latest_in(checkpoints: Union[str, os.PathLike]) -> Optional[Path]:
    """The file named by the ``latest`` pointer of a ``checkpoints/`` folder, or None."""
    folder = Path(checkpoints)
    try:
        name = (folder / LATEST).read_text().strip()
    except OSError:
        return None
    return folder / name if name else None
