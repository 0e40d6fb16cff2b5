"""The trainer's own files in the run directory (plumbing.runs names them): the directory made
ready at the start (temporaries of a writer that died removed), ``config.json`` (checked against
a resumed run's), and the ``done`` marker at the end."""

from __future__ import annotations

import json
import time
from typing import Callable

from pixpro_of.config import TrainConfig, check_resume_compatible, dump_json
from pixpro_of.train.checkpoint import CheckpointStore
from plumbing.atomic import atomic_write_bytes, disk_error, remove_temporaries
from plumbing.errors import UserError
from plumbing.runs import RunLayout


def prepare_run_dir(
    cfg: TrainConfig, layout: RunLayout, store: CheckpointStore, backend, prepare_data: Callable[[], None]
) -> None:
    """Rank 0 prepares the run directory (:func:`_prepare_on_main`) and the data (``prepare_data``);
    every rank learns of a set-up error and raises it: no rank waits in a collective for one that
    has left, and each prints the same one-line message."""
    problem = None
    if backend.is_main:
        try:
            _prepare_on_main(cfg, layout, store)
            prepare_data()
        except UserError as exc:
            problem = str(exc)
    problem = backend.broadcast_object(problem, 0) if backend.world_size > 1 else problem
    if problem is not None:
        raise UserError(problem)
    backend.barrier()


def _prepare_on_main(cfg: TrainConfig, layout: RunLayout, store: CheckpointStore) -> None:
    """Create the run directory, remove temporaries, write or check ``config.json``.

    Temporary files left by a writer that died (e.g. a checkpoint cut short by a full disk)
    are removed first: they may hold the space the rest needs. ``config.json`` is rewritten
    only when its content changes."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        layout.checkpoints.mkdir(exist_ok=True)
        store.clean_temporaries()
        remove_temporaries(layout.root)
    except OSError as exc:
        raise disk_error(exc, exc.filename or layout.root, what="preparing the run directory") from None
    cfg_path = layout.config
    text = dump_json(cfg).encode()
    old = None
    if cfg_path.exists():
        try:
            old = cfg_path.read_bytes()
            saved = json.loads(old)
        except ValueError as exc:
            raise UserError(f"{cfg_path}: not valid JSON ({exc})") from None
        check_resume_compatible(saved, cfg, str(cfg_path))
    if old != text:
        try:
            atomic_write_bytes(cfg_path, text, durable=True)
        except OSError as exc:
            raise disk_error(exc, cfg_path, needed=len(text), what="writing the config") from None


def write_done_marker(layout: RunLayout, step: int, epoch: int, checkpoint: str) -> None:
    """``done``: the last step and epoch, when, and the checkpoint that holds them (durable)."""
    marker = {"step": step, "epoch": epoch, "finished": time.time(), "checkpoint": checkpoint}
    data = (json.dumps(marker) + "\n").encode()
    try:
        atomic_write_bytes(layout.done, data, durable=True)
    except OSError as exc:
        raise disk_error(exc, layout.done, needed=len(data), what="writing the done marker") from None
