"""Bad samples skipped under ``data.on_bad_sample=skip``: each one logged (rank 0 names every
rank's, the others their own), counted over all ranks, and held against ``data.bad_sample_budget``.
The samples themselves are substituted in the DataLoader workers (:mod:`pixpro_of.train.data`)."""

from __future__ import annotations

import logging
from typing import Any, List, Sequence, Tuple

from pixpro_of.train.failures import TrainingFailure, budget_spent, sample_failure

log = logging.getLogger("pixpro_of.train")

Record = Tuple[int, int, str]  # (epoch, position, message) of one skipped sample


def log_skip(rec) -> None:
    """One skipped sample (a :class:`~pixpro_of.train.data.BadSample`) in this rank's log."""
    log.warning("skipped bad sample (epoch %d sample %d): %s", rec.epoch, rec.position, rec.message)


def gather(backend, obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if backend.world_size == 1:
        return [obj]
    return [backend.broadcast_object(obj if backend.rank == r else None, r) for r in range(backend.world_size)]


def log_skips(backend, bad: Sequence) -> List[Record]:
    """Log this step's skipped samples ``bad`` (this rank's); returns every rank's, in rank order."""
    records = [r for mine in gather(backend, [(r.epoch, r.position, r.message) for r in bad]) for r in mine]
    if backend.world_size > 1 and not backend.is_main:
        for rec in bad:  # the rank's own log names what it read; rank 0's names them all
            log_skip(rec)
    elif backend.is_main:
        for epoch, position, message in records:
            log.warning("skipped bad sample (epoch %d sample %d): %s", epoch, position, message)
    return records


def check_budget(skipped: int, budget: int, epoch: int, records: List[Record], bad: Sequence, main: bool) -> None:
    """Fail (every rank alike; rank 0 reports) once the epoch's ``skipped`` count passes ``budget``."""
    if skipped > budget:
        raise TrainingFailure(
            budget_spent(budget, skipped, epoch, records[-1][2]),
            quiet=not main,
            when=min((r.when for r in bad), default=None),
        )


def failed_batch(batch, backend, data_cfg, batch_in_epoch: int, skipped_in_epoch: int) -> TrainingFailure:
    """The failure of a batch whose sample could not be built (``batch.failed``), after logging the
    substitutes it had taken (``batch.bad``); ``data_cfg``: ``cfg.data``."""
    for rec in batch.bad:
        log_skip(rec)
    return sample_failure(
        batch.failed,
        backend.rank,
        backend.world_size,
        batch_in_epoch,
        data_cfg.on_bad_sample == "skip",
        data_cfg.bad_sample_budget,
        skipped_in_epoch + len(batch.bad),
    )
