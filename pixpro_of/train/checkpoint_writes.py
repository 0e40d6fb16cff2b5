"""Checkpoints across ranks: rank 0 writes in a background thread while every rank trains on, every
rank learns whether a write failed (so none goes on into a collective with a rank that has left),
and a resume loads the checkpoint rank 0 chose. The files themselves: :mod:`pixpro_of.train.checkpoint`.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from pixpro_of.train.checkpoint import BackgroundWriter, CheckpointStore, host_copy
from pixpro_of.train.failures import TrainingFailure, first_line
from pixpro_of.train.logging_setup import FILE_ONLY
from plumbing.atomic import DiskWriteError
from plumbing.errors import UserError

log = logging.getLogger("pixpro_of.train")


class CheckpointWrites:
    """Rank 0's checkpoint writes into ``store`` for ``backend``'s ranks."""

    def __init__(self, backend, store: CheckpointStore):
        self.backend = backend
        self.store = store
        self.writer = BackgroundWriter(store)

    def start(self, state: Callable[[], Dict[str, Any]], milestone: bool = False) -> float:
        """Finish the pending write, then (rank 0) copy ``state()`` to host memory and start writing
        it. A failed pending write ends training on every rank (rank 0 reports it). Returns the
        seconds the pending write took (0 when none was pending)."""
        problem, seconds = self._join() if self.backend.is_main else (None, 0.0)
        if problem is None and self.backend.is_main:
            self.writer.start(host_copy(state()), milestone=milestone)
        return self._agree(problem, seconds)

    def finish(self) -> float:
        """Finish rank 0's pending write (every rank learns whether it succeeded); its seconds."""
        problem, seconds = self._join() if self.backend.is_main else (None, 0.0)
        return self._agree(problem, seconds)

    def finish_after_failure(self) -> None:
        """After a failure: let a write that is under way complete (it stays valid or leaves
        nothing), so the process never exits in the middle of one; its error is logged."""
        try:
            problem, _ = self._join()
        except BaseException as exc:  # noqa: BLE001 - the first failure is the one reported
            problem = first_line(exc)
        if problem:
            log.error("the pending checkpoint write failed too: %s", problem, extra=FILE_ONLY)

    def _join(self) -> Tuple[Optional[str], float]:
        """Rank 0: wait for the pending write; ``(problem or None, seconds it took)``."""
        try:
            done = self.writer.join()
        except DiskWriteError as exc:
            return str(exc), 0.0
        if done is None:
            return None, 0.0
        info, seconds = done
        log.info("checkpoint %s (step %d, epoch %d) written in %.2f s", info.path.name, info.step, info.epoch, seconds)
        return None, seconds

    def _agree(self, problem: Optional[str], seconds: float) -> float:
        if self.backend.world_size > 1:
            seconds, problem = self.backend.broadcast_object((seconds, problem), 0)
        if problem is not None:
            raise TrainingFailure(problem, quiet=not self.backend.is_main)
        return seconds

    def load_chosen(self) -> Optional[Dict[str, Any]]:
        """The newest valid checkpoint's state (rank 0 chooses, every rank loads it); None if none."""
        be = self.backend
        loaded = self.store.load_latest() if be.is_main else None
        name = be.broadcast_object(loaded[1].path.name if loaded else None, 0)
        if name is None:
            return None
        if loaded is not None:
            return loaded[0]
        info = next((e for e in self.store.entries() if e.path.name == name), None)
        if info is None:
            raise UserError(
                f"{self.store.dir}: rank {be.rank} cannot see checkpoint {name} (not a shared file system?)"
            )
        return self.store.load(info)


def estimate_seconds(state: Dict[str, Any]) -> float:
    """Seconds to serialise ``state`` in memory, doubled for the disk write (before any real save)."""
    t0 = time.perf_counter()
    torch.save(state, io.BytesIO())
    return 2.0 * (time.perf_counter() - t0)
