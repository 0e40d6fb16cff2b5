"""The PixPro(+flow) training loop with exact resume, deadline/signal stops and metrics.

``Trainer(cfg, run_dir).run()`` returns the process exit code:

- :data:`EXIT_FINISHED` (0): training reached its last step; the final checkpoint and the
  ``done`` marker are written. Running again returns 0 at once.
- :data:`EXIT_RESUME` (75, ``EX_TEMPFAIL``): stopped early by the deadline or a signal, with a
  checkpoint at the step boundary; run the same command again to continue.

Exact resume: a checkpoint holds the model (online and momentum branch, BN statistics), the
optimizer, the LR schedule, the AMP scaler, the global step (which also drives the momentum
schedule), the epoch, the batch position inside the epoch and every RNG state (torch, CUDA,
numpy, python). Samples are pure functions of (seed, epoch, node, position)
(:mod:`pixpro_of.train.data`). With ``run.deterministic=true`` on CPU, a run killed at any point
and resumed ends with bit-identical weights to an uninterrupted run.

Failing fast: any error on a rank (a bad sample met by a DataLoader worker, a worker killed by
the OOM killer, a failed collective, a full disk) ends :meth:`Trainer.run` at once with a
:class:`TrainingFailure` holding one line that names the shard, video and frame (or the rank and
what it was doing); the loader's workers are killed first, so no process is left behind and
Python's exit never waits for one. The full traceback, where there is one, goes to the rank's log
file only. ``python -m pixpro_of train`` prints the line and, with more than one rank, aborts the
whole job (:func:`pixpro_of.train.cli.fail_job`). Bad samples follow ``data.on_bad_sample``:
``fail`` (default) or ``skip`` (substitutes, at most ``data.bad_sample_budget`` per epoch over
all ranks, each logged and counted in the metrics as ``data/skipped``, ``data/skipped_epoch``;
the count is part of the checkpoint, so a resumed run skips exactly the same samples).

Run directory (ARCHITECTURE.md "Runs")::

    config.json   logs/train.log   checkpoints/ (+ latest)   metrics.csv   tensorboard/   done
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import random
import sys
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from pixpro_of.config import TrainConfig, check_resume_compatible, dump_json
from pixpro_of.dist.backend import Backend, check_world_matches_launch, make_backend
from plumbing.errors import UserError
from plumbing.atomic import DiskWriteError, atomic_write_bytes, disk_error, remove_temporaries
from plumbing.runs import EXIT_FINISHED, EXIT_RESUME, RunLayout
from pixpro_of.train.checkpoint import BackgroundWriter, CheckpointStore, host_copy
from hdf5_tools.manifest import resolve_shards
from pixpro_of.train.data import (BadSample, EpochBatches, LoadedBatch, SampleSet, close_loader_iter,
                                  make_loader)
from pixpro_of.train.metrics_log import MetricsLog
from pixpro_of.train.stopping import StopControl, parse_deadline

log = logging.getLogger("pixpro_of.train")


class TrainingFailure(UserError):
    """Training cannot go on; ``str()`` is the one line to print.

    ``quiet``: another rank reports this failure (this one only exits). ``grace_s``: seconds to
    wait, with more than one rank, before reporting (an error in a collective is usually the echo
    of another rank's failure, which ends the job first; see :func:`pixpro_of.train.cli.fail_job`
    for the default). ``when``: Unix time of the fault, if known.
    """

    def __init__(self, message: str, quiet: bool = False, grace_s: Optional[float] = None,
                 when: Optional[float] = None):
        super().__init__(message)
        self.quiet = quiet
        self.grace_s = grace_s
        self.when = when


# --------------------------------------------------------------------------- components

def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The real PixPro model from ``cfg.model`` (a :class:`~pixpro_of.config.ModelConfig`)."""
    from pixpro_of.model.pixpro import PixPro

    return PixPro(cfg.model)


class ClipSource(ABC):
    """Where the trainer's clips come from (a component: :class:`ShardClips` by default, tests
    inject in-memory ones with ``Components(clips=...)``).

    ``prepare()`` runs on rank 0 before any rank opens the data; ``node_sets`` says whether the
    data is split into node sets (each node reads its own); ``open(node_index, num_nodes,
    all_frames)`` returns the clip set: ``num_videos``, ``num_frames(i)``, ``video_name(i)``, ``k``
    and ``[(video_index, t)] -> clip dict`` (with every frame of the clip, and no flows, when
    ``all_frames``; with the frames as JPEG bytes, not decoded, when not ``decode``).
    """

    node_sets = False

    def prepare(self) -> None:
        """Make the data ready (rank 0 only); nothing by default."""

    @abstractmethod
    def open(self, node_index: int, num_nodes: int, all_frames: bool = False, decode: bool = True):
        """The clip set of node ``node_index`` of ``num_nodes`` (see the class docstring)."""


class FixedClips(ClipSource):
    """A clip set given as it is (one set for every node)."""

    def __init__(self, clips):
        self.clips = clips

    def open(self, node_index: int, num_nodes: int, all_frames: bool = False, decode: bool = True):
        return self.clips


class ShardClips(ClipSource):
    """The clip reader over ``data.shards``, or over the synthetic world packed into the run
    directory when ``data.shards`` is empty and ``data.synthetic`` is on."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)

    def prepare(self) -> None:
        if not self.cfg.data.shards and self.cfg.data.synthetic:
            from pixpro_of.train.synth_data import ensure_synthetic_shards

            ensure_synthetic_shards(self.cfg, self.run_dir)

    def _entries(self) -> list:
        from pixpro_of.train.synth_data import data_entries

        return data_entries(self.cfg, self.run_dir)

    @property
    def node_sets(self) -> bool:  # a manifest (or a folder holding one) assigns shards to node sets
        return any(str(s).endswith(".json") or Path(s).is_dir() for s in self._entries())

    def open(self, node_index: int, num_nodes: int, all_frames: bool = False, decode: bool = True):
        from pixpro_of.data.shards import ShardClipDataset

        paths = resolve_shards(self._entries(), node_index, num_nodes, label="data.shards")
        return ShardClipDataset(paths, self.cfg.data.k, all_frames=all_frames, flows=not all_frames, decode=decode)


def build_positives(cfg: TrainConfig, device: torch.device):
    """The positives strategy of ``cfg.data.positives_mode()`` (:mod:`pixpro_of.data.strategy`),
    with the on-the-fly flow estimator on ``device`` for ``data.flow_source=raft``."""
    from pixpro_of.data.strategy import make_positives
    from pixpro_of.model.pixpro import PixPro

    return make_positives(cfg.data.positives_mode(), cfg.data, PixPro.feature_size(cfg.data.image_size),
                          clip_flow=lambda: build_clip_flow(cfg, device))


def build_views(cfg: TrainConfig, device: torch.device):
    """The views stage of ``data.decode_on`` (:func:`pixpro_of.data.strategy.make_views`): in the
    DataLoader workers, or decoded and built on ``device`` in chunks of ``data.decode_chunk`` frames."""
    from pixpro_of.data.strategy import make_views

    return make_views(cfg.data.decode_on, cfg.data, device, chunk=cfg.data.decode_chunk,
                      channels_last=cfg.optim.channels_last)


def build_sample_builder(cfg: TrainConfig, positives) -> Callable:
    """The augmentation + positives pipeline, ``builder(clip, rng) -> sample dict``; the samples
    carry what the positives strategy ``positives`` needs (``positives.carry``), and the views
    or, with ``data.decode_on=device``, the JPEG bytes and the views' draws (:func:`build_views`)."""
    from pixpro_of.data.pipeline import SampleBuilder
    from pixpro_of.model.pixpro import PixPro

    return SampleBuilder(cfg.data, feature_size=PixPro.feature_size(cfg.data.image_size), carry=positives.carry,
                         views=cfg.data.decode_on)


def build_clip_flow(cfg: TrainConfig, device: torch.device):
    """The on-the-fly flow estimator (``data.flow_source=raft``) on the training device."""
    d = cfg.data
    from flow.estimators import make_estimator
    from pixpro_of.data.online_flow import ClipFlow

    path = Path(os.path.expanduser(d.raft_weights))
    if not path.is_file():
        raise UserError(f"data.raft_weights: {d.raft_weights} is not a file (a RAFT checkpoint is needed "
                        f"for data.flow_source=raft)")
    try:
        est = make_estimator(d.raft_model, weights=str(path), device=device, iters=d.raft_iters,
                             amp=None if d.raft_amp == "fp32" else d.raft_amp)
    except UserError as exc:  # name the setting
        raise UserError(f"data.raft_weights: {exc}") from None
    return ClipFlow(est, chunk=d.raft_chunk)


def default_collate(samples: List[dict]):
    from pixpro_of.data.pipeline import collate

    return collate(samples)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    from pixpro_of.optim.lars import LARS, param_groups

    modules = model.online_modules() if hasattr(model, "online_modules") else [model]
    return LARS(param_groups(modules, cfg.optim.weight_decay), lr=lr, momentum=cfg.optim.momentum,
                weight_decay=cfg.optim.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer, lr: float, warmup_iters: int, total_iters: int):
    from pixpro_of.optim.schedule import build_lr_scheduler

    return build_lr_scheduler(optimizer, lr, warmup_iters, total_iters,
                              warmup_multiplier=cfg.optim.warmup_multiplier, eta_min=cfg.optim.eta_min)


def momentum_schedule(step: int, total_steps: int, base: float) -> float:
    from pixpro_of.model.pixpro import momentum_at

    return momentum_at(step, total_steps, base)


@dataclass
class Components:
    """The pieces the loop trains with. The defaults are the real model, reader, positives and
    pipeline; tests may inject small doubles (the trainer treats every one alike). ``clips(cfg,
    run_dir)`` returns a :class:`ClipSource`; ``positives(cfg, device)`` the positives strategy
    (:mod:`pixpro_of.data.strategy`); ``views(cfg, device)`` the views stage (same module);
    ``sample_builder(cfg, positives)`` the ``(clip, rng) -> sample`` function; ``collate`` makes a
    :class:`~pixpro_of.data.pipeline.Batch`."""
    model: Callable[[TrainConfig], torch.nn.Module] = build_model
    clips: Callable[[TrainConfig, Path], ClipSource] = ShardClips
    positives: Callable[[TrainConfig, torch.device], Any] = build_positives
    views: Callable[[TrainConfig, torch.device], Any] = build_views
    sample_builder: Callable[[TrainConfig, Any], Callable] = build_sample_builder
    collate: Callable[[List[dict]], Any] = default_collate
    optimizer: Callable[..., torch.optim.Optimizer] = build_optimizer
    scheduler: Callable[..., Any] = build_scheduler
    momentum: Callable[[int, int, float], float] = momentum_schedule


def _first_line(exc: BaseException) -> str:
    """The one-line gist of ``exc``. For an exception torch re-raised from a DataLoader worker
    ("Caught X in DataLoader worker process N." + the worker's traceback), the worker's own
    last line, prefixed with the worker."""
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        worker = lines[0][len("Caught "):].split(" in ", 1)[-1].rstrip(".")
        return f"{worker}: {lines[-1].strip()}"
    return (lines[0] if lines else "") or type(exc).__name__


# --------------------------------------------------------------------------- RNG state

def rng_state() -> Dict[str, Any]:
    """Every global RNG state, as tensors and plain Python values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- logging

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


# --------------------------------------------------------------------------- trainer

class Trainer:
    """One training run in ``run_dir``; see the module docstring."""

    def __init__(self, cfg: TrainConfig, run_dir: os.PathLike, backend: Optional[Backend] = None,
                 components: Optional[Components] = None, stop: Optional[StopControl] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        self.backend = backend or make_backend(cfg.dist.backend, device=cfg.run.device,
                                               timeout_s=60.0 * cfg.dist.timeout_minutes)
        check_world_matches_launch(self.backend)  # mpirun -np 8 ... dist.backend=single: refuse
        self.parts = components or Components()
        self.source: ClipSource = self.parts.clips(cfg, self.run_dir)
        self.stop = stop
        self.store = CheckpointStore(self.layout.checkpoints, keep=cfg.checkpoint.keep)
        self.writer = BackgroundWriter(self.store)  # rank 0's checkpoint writes, off the training thread
        self._last_checkpoint_time = time.monotonic()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self._last_saved_step = -1
        self.skipped_in_epoch = 0  # bad samples skipped in this epoch, all ranks (data.on_bad_sample=skip)
        self._skipped_step = 0
        self._checkpoint_due = False
        self._loader_it = None
        self._views_ahead = None  # the views prefetcher over _loader_it (data.decode_on=device)
        self._doing = "starting"

    # ------------------------------------------------------------------ setup
    def _prepare_run_dir(self) -> None:
        be = self.backend
        problem = None
        if be.is_main:
            try:
                self._prepare_run_dir_main()
            except UserError as exc:
                problem = str(exc)
        # Every rank learns of a set-up error and raises it: no rank waits in a collective
        # for one that has left, and each prints the same one-line message.
        problem = be.broadcast_object(problem, 0) if be.world_size > 1 else problem
        if problem is not None:
            raise UserError(problem)
        be.barrier()

    def _prepare_run_dir_main(self) -> None:
        """Rank 0: create the run directory, check a resumed config, pack synthetic data if needed.

        Temporary files left by a writer that died (e.g. a checkpoint cut short by a full disk)
        are removed first: they may hold the space the rest needs. ``config.json`` is rewritten
        only when its content changes."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.layout.checkpoints.mkdir(exist_ok=True)
            self.store.clean_temporaries()
            remove_temporaries(self.run_dir)
        except OSError as exc:
            raise disk_error(exc, exc.filename or self.run_dir, what="preparing the run directory") from None
        cfg_path = self.layout.config
        text = dump_json(self.cfg).encode()
        old = None
        if cfg_path.exists():
            try:
                old = cfg_path.read_bytes()
                saved = json.loads(old)
            except ValueError as exc:
                raise UserError(f"{cfg_path}: not valid JSON ({exc})") from None
            check_resume_compatible(saved, self.cfg, str(cfg_path))
        if old != text:
            try:
                atomic_write_bytes(cfg_path, text, durable=True)
            except OSError as exc:
                raise disk_error(exc, cfg_path, needed=len(text), what="writing the config") from None
        self.source.prepare()

    def _configure_torch(self) -> None:
        r = self.cfg.run
        if r.threads > 0:
            torch.set_num_threads(r.threads)
        # Subnormal floats (tiny activations late in training) run ~10x slower on x86 CPUs;
        # flushing them to zero is what GPUs do anyway. No effect on CUDA kernels.
        torch.set_flush_denormal(True)
        from pixpro_of.train.precision import set_tf32

        set_tf32(self.cfg.optim.tf32)  # fp32 matmuls and convolutions on TF32 tensor cores (CUDA only)
        if self.backend.device.type == "cpu":
            from pixpro_of.train.allocator import keep_freed_memory

            keep_freed_memory()  # no page faults for re-allocated activations (~10 % of a CPU step)
        if r.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        else:
            torch.backends.cudnn.benchmark = True

    def _build(self) -> None:
        cfg, be = self.cfg, self.backend
        self.device = be.device
        # Where the positives are computed: chosen once, from the config.
        self.positives = self.parts.positives(cfg, self.device)
        self.views = self.parts.views(cfg, self.device)  # where the views are built: chosen once too
        # Data: one node reads its node's shards; ranks of the node split its clip order.
        if self.source.node_sets:
            self.node_index, num_nodes = be.rank // be.local_size, max(be.world_size // be.local_size, 1)
            self.sampler_rank, self.sampler_world = be.local_rank, be.local_size
        else:
            self.node_index, num_nodes = 0, 1
            self.sampler_rank, self.sampler_world = be.rank, be.world_size
        self.clips = self.source.open(self.node_index, num_nodes, all_frames=self.positives.reads_frames,
                                      decode=self.views.decodes_in_worker)
        if cfg.data.batch_size % be.world_size:
            raise UserError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                            f"{be.world_size} ranks")
        self.rank_batch = cfg.data.batch_size // be.world_size
        per_rank = self.clips.num_videos // self.sampler_world
        self.steps_per_epoch = per_rank // self.rank_batch
        videos, node = self.clips.num_videos, self.node_index
        if num_nodes > 1:
            # Node sets may hold different numbers of videos (pack balances frames, not videos):
            # every rank takes the fewest steps per epoch of any node, or the ranks of a smaller
            # node set end their epochs and the run early while the others wait for them forever.
            mine = [0.0] * (2 * be.world_size)
            mine[2 * be.rank], mine[2 * be.rank + 1] = self.steps_per_epoch, videos
            every = torch.tensor(be.allreduce_values(mine, op="sum"), dtype=torch.float64).view(-1, 2)
            least = int(torch.argmin(every[:, 0]).item())
            if int(every[least, 0]) != self.steps_per_epoch or int(every[:, 0].max()) != self.steps_per_epoch:
                if be.is_main:
                    log.info("node sets differ: %s videos on nodes 0..%d; every node takes %d steps per epoch "
                             "(node %d's)", "/".join(str(int(v)) for v in every[::be.local_size, 1]),
                             num_nodes - 1, int(every[least, 0]), least // be.local_size)
            self.steps_per_epoch = int(every[least, 0])
            videos, node = int(every[least, 1]), least // be.local_size
        if self.steps_per_epoch < 1:
            where = f" on node {node}" if num_nodes > 1 else ""
            raise UserError(f"data.batch_size={cfg.data.batch_size} needs at least {self.rank_batch} videos per "
                            f"rank but the shards hold {videos} videos{where} for {self.sampler_world} "
                            f"rank(s); lower the batch size or add data")
        self.total_steps = cfg.run.epochs * self.steps_per_epoch
        self.end_step = min(self.total_steps, cfg.run.max_steps) if cfg.run.max_steps > 0 else self.total_steps
        self.warmup_steps = cfg.optim.warmup_epochs * self.steps_per_epoch
        self.skip_bad = cfg.data.on_bad_sample == "skip"
        self.samples = SampleSet(self.clips, self.parts.sample_builder(cfg, self.positives), cfg.run.seed,
                                 self.node_index, substitutes=cfg.data.bad_sample_budget if self.skip_bad else 0)

        # Model: identical initial weights on every rank (seeded, then broadcast from rank 0).
        torch.manual_seed(cfg.run.seed)
        model = self.parts.model(cfg)
        if cfg.dist.sync_bn:
            model = be.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if cfg.optim.channels_last:
            model = model.to(memory_format=torch.channels_last)
        be.broadcast_parameters(model)
        self.model = model
        self.lr = cfg.lr()
        # Wrap first (Horovod's DistributedOptimizer is a new object), then schedule the wrapped one.
        self.optimizer = be.wrap_optimizer(self.parts.optimizer(cfg, model, self.lr), model)
        self.scheduler = self.parts.scheduler(cfg, self.optimizer, self.lr, self.warmup_steps, self.total_steps)
        self.forward_model = be.wrap_model(model)
        if cfg.optim.compile:
            self.forward_model = torch.compile(self.forward_model)
        prec = cfg.optim.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(prec == "fp16"))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly from the current step boundary."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "skipped_in_epoch": self.skipped_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "world_size": self.backend.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "timing": {"step_s": self.stop.step_estimate() if self.stop else 0.0,
                       "checkpoint_s": self.stop.checkpoint_s if self.stop else 0.0},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state.get("steps_per_epoch", self.steps_per_epoch)) != self.steps_per_epoch:
            raise UserError(f"checkpoint step {state['step']}: it had {state['steps_per_epoch']} steps per epoch, "
                            f"this run has {self.steps_per_epoch} (different data or world size)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.skipped_in_epoch = int(state.get("skipped_in_epoch", 0))
        set_rng_state(state["rng"])
        if self.stop is not None:
            self.stop.record_checkpoint(float(state.get("timing", {}).get("checkpoint_s", 0.0)))

    def save_checkpoint(self, milestone: bool = False) -> None:
        """Rank 0 copies the state to host memory and writes the copy in a background thread
        (:class:`~pixpro_of.train.checkpoint.BackgroundWriter`) while every rank trains on. A
        write still running is finished first; its failure ends training on every rank (rank 0
        reports it). :meth:`wait_for_checkpoint` finishes the write (at a stop and at the end)."""
        if self._last_saved_step == self.step and not milestone:
            return
        self._doing = f"writing the checkpoint of step {self.step}"
        problem, seconds = self._join_write() if self.backend.is_main else (None, 0.0)
        if problem is None and self.backend.is_main:
            self.writer.start(host_copy(self.state_dict()), milestone=milestone)
        self._agree_on_write(problem, seconds)
        self._last_saved_step = self.step
        self._last_checkpoint_time = time.monotonic()

    def wait_for_checkpoint(self) -> None:
        """Finish rank 0's pending checkpoint write (every rank learns whether it succeeded)."""
        self._doing = f"finishing the checkpoint of step {self.step}"
        problem, seconds = self._join_write() if self.backend.is_main else (None, 0.0)
        self._agree_on_write(problem, seconds)

    def _join_write(self):
        """Rank 0: wait for the pending write; ``(problem or None, seconds it took)``."""
        try:
            done = self.writer.join()
        except DiskWriteError as exc:
            return str(exc), 0.0
        if done is None:
            return None, 0.0
        info, seconds = done
        log.info("checkpoint %s (step %d, epoch %d) written in %.2f s", info.path.name, info.step, info.epoch,
                 seconds)
        return None, seconds

    def _agree_on_write(self, problem, seconds) -> None:
        if self.backend.world_size > 1:
            # Every rank learns that a write failed, so none goes on into a collective with a
            # rank that has left, and only rank 0 reports it.
            seconds, problem = self.backend.broadcast_object((seconds, problem), 0)
        if problem is not None:
            raise TrainingFailure(problem, quiet=not self.backend.is_main)
        if self.stop is not None and seconds:
            self.stop.record_checkpoint(float(seconds))

    def _estimate_checkpoint_time(self) -> float:
        """Seconds to serialise the state in memory, doubled for the disk write (before any real save)."""
        t0 = time.perf_counter()
        torch.save(self.state_dict(), io.BytesIO())
        return 2.0 * (time.perf_counter() - t0)

    # ------------------------------------------------------------------ loop pieces
    def train_step(self, batch) -> Dict[str, float]:
        """One optimizer step on ``batch`` (a :class:`~pixpro_of.data.pipeline.Batch`); returns
        this step's metrics as floats."""
        core = self.backend.unwrap(self.model)
        m = self.parts.momentum(self.step, self.total_steps, self.cfg.model.momentum_base)
        core.momentum_update(m)  # EMA first, as the seed does
        lr = float(self.optimizer.param_groups[0]["lr"])
        b = batch.to(self.device, channels_last=self.cfg.optim.channels_last)
        t0 = time.perf_counter()
        b = self.views.complete(b)  # decoded and built on the device unless the workers did it
        views_s = None
        if self.views.on_device:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            # built one batch ahead (pixpro_of.data.prefetch): the stage's own time, from CUDA events
            views_s = getattr(self.views, "last_seconds", None)
            views_s = time.perf_counter() - t0 if views_s is None else views_s
        t0 = time.perf_counter()
        b = self.positives.complete(b)  # on the device unless the workers computed them
        positives_s = None
        if self.positives.on_device:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            positives_s = time.perf_counter() - t0
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            loss, metrics = self.forward_model(b.view1, b.view2, b.pos12, b.pos21)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.backend.optimizer_step(self.optimizer, self.scaler)  # Horovod: its own AMP recipe
        self.scaler.update()
        self.scheduler.step()
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step} (epoch {self.epoch})")
        out = {"loss": float(loss.detach()), "lr": lr, "momentum": float(m)}
        out["loss/plus"] = out["loss"] + 4.0
        for k, v in metrics.items():
            out[k] = float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)
        if b.mask_ratio is not None:
            out["mask_ratio"] = float(torch.as_tensor(b.mask_ratio, dtype=torch.float32).mean())
        if positives_s is not None:
            out["time/positives"] = positives_s
        if views_s is not None:
            out["time/views"] = views_s
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out

    def _average_over_ranks(self, values: Dict[str, float]) -> Dict[str, float]:
        """Metrics averaged over ranks (counts too: they become per-rank means)."""
        if self.backend.world_size == 1:
            return values
        keys = sorted(values)
        return dict(zip(keys, self.backend.allreduce_values([values[k] for k in keys], op="mean")))

    def _make_loader(self):
        from pixpro_of.data.sampler import ClipSampler

        order = ClipSampler(self.clips, self.cfg.run.seed, self.epoch, rank=self.sampler_rank,
                            world_size=self.sampler_world).items()
        batches = EpochBatches(order[: self.steps_per_epoch * self.rank_batch], self.epoch, self.rank_batch,
                               start_batch=self.batch_in_epoch, sampler_rank=self.sampler_rank,
                               sampler_world=self.sampler_world)
        return make_loader(self.samples, batches, self.parts.collate, self.cfg.data.num_workers,
                           self.cfg.data.prefetch_factor, self.device.type == "cuda", self.cfg.run.seed,
                           self.backend.rank, ignore_signals=self.stop.signal_nums if self.stop else ())

    def _stop_requested(self) -> bool:
        """Every rank must stop at the same step, or collectives would hang: any rank's request
        counts. The same collective carries rank 0's clock: whether ``checkpoint.every_minutes``
        have passed since the last checkpoint (``self._checkpoint_due``, alike on every rank)."""
        self._doing = f"agreeing whether to stop after step {self.step}"
        mine = 1.0 if (self.stop is not None and self.stop.should_stop()) else 0.0
        minutes = self.cfg.checkpoint.every_minutes
        due = 1.0 if (self.backend.is_main and minutes > 0
                      and time.monotonic() - self._last_checkpoint_time >= 60.0 * minutes) else 0.0
        stop, due = self.backend.allreduce_values([mine, due], op="sum")
        self._checkpoint_due = due > 0
        return stop > 0

    # ------------------------------------------------------------------ bad samples and failures
    def _next_batch(self, it) -> Optional[LoadedBatch]:
        """The next batch of the epoch, or None at its end; a sample that could not be built ends
        training with its one-line message (the substitutes' records stay in ``bad``)."""
        self._doing = f"reading batch {self.batch_in_epoch} of epoch {self.epoch}"
        self._check_workers(f"found before {self._doing}")
        try:
            batch = next(it)
        except StopIteration:
            # A worker killed after it had read its share lost nothing, but whatever killed it
            # (the OOM killer) will strike again: the rule stays one, a killed worker ends the job.
            self._check_workers(f"found at the end of epoch {self.epoch}")
            return None
        if batch.failed is not None:
            for rec in batch.bad:
                self._log_skip(rec)
            raise self._sample_failure(batch.failed, len(batch.bad))
        return batch

    def _check_workers(self, when: str) -> None:
        dead = self._dead_workers()
        if dead:
            be = self.backend
            raise TrainingFailure(f"{'rank %d: ' % be.rank if be.world_size > 1 else ''}{dead} ({when})")

    def _sample_failure(self, rec: BadSample, skipped_in_batch: int = 0) -> TrainingFailure:
        be = self.backend
        where = f"rank {be.rank}, " if be.world_size > 1 else ""
        where += f"epoch {rec.epoch}, batch {self.batch_in_epoch}"
        if rec.detail:
            log.error("sample %d of epoch %d failed:\n%s", rec.position, rec.epoch, rec.detail, extra=FILE_ONLY)
            return TrainingFailure(f"rank {be.rank}: {rec.message} ({where})", when=rec.when)
        if not rec.skippable:
            return TrainingFailure(f"{rec.message} ({where})", when=rec.when)
        if self.skip_bad:
            # The worker tried as many substitutes as the budget allows: the budget is spent.
            total = self.skipped_in_epoch + skipped_in_batch + 1
            mine = f" (counting rank {be.rank}'s of this step)" if be.world_size > 1 else ""
            return TrainingFailure(f"data.bad_sample_budget={self.cfg.data.bad_sample_budget} spent: {total} bad "
                                   f"samples in epoch {rec.epoch}{mine}; the last: {rec.message}", when=rec.when)
        return TrainingFailure(f"{rec.message} ({where}; data.on_bad_sample=skip would skip it)", when=rec.when)

    def _log_skip(self, rec: BadSample) -> None:
        log.warning("skipped bad sample (epoch %d sample %d): %s", rec.epoch, rec.position, rec.message)

    def _gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        be = self.backend
        if be.world_size == 1:
            return [obj]
        return [be.broadcast_object(obj if be.rank == r else None, r) for r in range(be.world_size)]

    def _account_skips(self, bad: List[BadSample]) -> None:
        """Count this step's skipped samples over all ranks; rank 0 logs each; fail when the
        epoch's count passes ``data.bad_sample_budget`` (every rank decides alike)."""
        be = self.backend
        self._doing = f"counting skipped samples of step {self.step + 1}"
        if be.world_size > 1:
            total = int(be.allreduce_values([float(len(bad))], op="sum")[0])
        else:
            total = len(bad)
        self._skipped_step = total
        if not total:
            return
        records = [r for mine in self._gather([(r.epoch, r.position, r.message) for r in bad]) for r in mine]
        if be.world_size > 1 and not be.is_main:
            for rec in bad:  # the rank's own log names what it read; rank 0's names them all
                self._log_skip(rec)
        elif be.is_main:
            for epoch, position, message in records:
                log.warning("skipped bad sample (epoch %d sample %d): %s", epoch, position, message)
        self.skipped_in_epoch += total
        budget = self.cfg.data.bad_sample_budget
        if self.skipped_in_epoch > budget:
            epoch, position, message = records[-1]
            raise TrainingFailure(f"data.bad_sample_budget={budget} spent: {self.skipped_in_epoch} bad samples in "
                                  f"epoch {self.epoch}; the last: {message}", quiet=not be.is_main,
                                  when=min((r.when for r in bad), default=None))

    def _stop_worker_watch(self) -> None:
        """Stop torch's SIGCHLD handler from raising for this loader's workers: while a dead worker
        stays registered, every SIGCHLD raises again, anywhere, even inside the failure handling."""
        it = self._loader_it
        if it is not None and getattr(it, "_worker_pids_set", False):
            from torch.utils.data._utils import signal_handling

            signal_handling._remove_worker_pids(id(it))
            it._worker_pids_set = False

    def _safe_failure(self, exc: BaseException) -> TrainingFailure:
        """:meth:`_failure`, retried when an asynchronous exception (torch's SIGCHLD handler
        reporting the same dead worker again) interrupts it."""
        for _ in range(5):
            try:
                self._stop_worker_watch()
                return self._failure(exc)
            except Exception:  # noqa: BLE001 - raised by a signal handler while reporting
                continue
        return TrainingFailure(f"{type(exc).__name__}: {_first_line(exc)}")

    def _dead_workers(self, wait_s: float = 0.0) -> str:
        """Which DataLoader workers died and how, e.g. "DataLoader worker (pid 123) was killed by
        SIGKILL (the OOM killer?; ...)"; empty when none is known to have died (within ``wait_s``)."""
        import signal as _signal

        workers = [w for w in getattr(self._loader_it, "_workers", ()) if w.pid is not None]
        deadline = time.monotonic() + wait_s
        while True:
            codes = [(w, w.exitcode) for w in workers]
            if any(c not in (None, 0) for _, c in codes) or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        out = []
        for w, code in codes:
            if code is None or code == 0:
                continue
            if code < 0:
                name = _signal.Signals(-code).name if -code in _signal.valid_signals() else f"signal {-code}"
                hint = " (the OOM killer?; lower data.num_workers or data.prefetch_factor)" if -code == _signal.SIGKILL else ""
                out.append(f"DataLoader worker (pid {w.pid}) was killed by {name}{hint}")
            else:
                out.append(f"DataLoader worker (pid {w.pid}) exited with code {code}")
        return "; ".join(out)

    def _close_loader(self, kill: bool) -> None:
        ahead, self._views_ahead = getattr(self, "_views_ahead", None), None
        if ahead is not None:
            ahead.close(wait=not kill)
        it, self._loader_it = self._loader_it, None
        close_loader_iter(it, kill=kill)

    def _failure(self, exc: BaseException) -> TrainingFailure:
        """The one-line failure for ``exc``; the full story goes to the rank's log file."""
        be = self.backend
        rank = f"rank {be.rank}" if be.world_size > 1 else "the trainer"
        who = f"rank {be.rank}: " if be.world_size > 1 else ""
        # A pipe torn by a dying worker can be seen before the worker's exit status: wait a moment.
        wait = 2.0 if isinstance(exc, (ConnectionError, EOFError)) else 0.0
        dead = "" if isinstance(exc, (TrainingFailure, DiskWriteError)) else self._dead_workers(wait)
        if isinstance(exc, TrainingFailure):
            failure = exc
        elif dead:
            # A worker's death shows up as whatever the main process was doing with it: torch's
            # RuntimeError, or a ConnectionResetError/EOFError from a half-sent batch.
            failure = TrainingFailure(f"{who}{dead} while {self._doing}")
        elif isinstance(exc, DiskWriteError):
            failure = TrainingFailure(str(exc))
        elif isinstance(exc, UserError) or type(exc).__name__ == "UserError":  # flow/hdf5_tools errors too
            failure = TrainingFailure(_first_line(exc))
        elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            failure = TrainingFailure(str(disk_error(exc, exc.filename or self.run_dir, what=self._doing)))
        elif isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
            # torch: "DataLoader worker (pid(s) 123) exited unexpectedly" / "... is killed by signal: Killed."
            failure = TrainingFailure(f"{who}{_first_line(exc)} while {self._doing}")
        else:
            failure = TrainingFailure(f"{rank} failed while {self._doing}: {type(exc).__name__}: {_first_line(exc)}",
                                      grace_s=3.0)
        # stderr gets the one line from the command (pixpro_of.train.cli); the log file gets the story.
        if failure.quiet:
            log.error("stopping: %s (reported by rank 0)", failure, extra=FILE_ONLY)
        else:
            log.error("failed: %s", failure, extra=FILE_ONLY)
        if failure.when is not None:
            log.error("first bad read at %.3f (Unix time), %.3f s ago", failure.when, time.time() - failure.when,
                      extra=FILE_ONLY)
        if not isinstance(exc, UserError) and type(exc).__name__ != "UserError":
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error("while %s:\n%s", self._doing, tb, extra=FILE_ONLY)
        return failure

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """Train until finished (returns 0) or stopped with a checkpoint (returns 75)."""
        be = self.backend
        if self.layout.is_done():
            log.info("%s: training already finished (done marker present)", self.run_dir)
            return EXIT_FINISHED
        cfg = self.cfg
        if self.stop is None:
            deadline = parse_deadline(cfg.stop.deadline) if cfg.stop.deadline else None
            self.stop = StopControl(deadline, cfg.stop.margin_s, cfg.stop.safety_factor, cfg.stop.signals)
        self.stop.install()  # from here on a stop signal only sets a flag, even during set-up
        try:
            self._doing = "preparing the run directory"
            self._prepare_run_dir()
            try:
                handler = setup_logging(self.run_dir, be.rank)
            except OSError as exc:
                raise disk_error(exc, exc.filename or self.layout.logs, what="opening the log") from None
            try:
                return self._setup_and_loop()
            except (KeyboardInterrupt, SystemExit):
                self._close_loader(kill=True)
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure ends as one line, see the docstring
                failure = self._safe_failure(exc)  # before the workers are killed: it reports how they died
                self._close_loader(kill=True)
                raise failure from None
            finally:
                self._close_loader(kill=True)
                self._finish_pending_write()
                logging.getLogger("pixpro_of").removeHandler(handler)
                handler.close()
        except UserError as exc:
            if isinstance(exc, TrainingFailure):
                raise
            # Set-up errors (before the log exists): every rank raises the same one (rank 0 reports it).
            raise TrainingFailure(_first_line(exc), quiet=not be.is_main) from None
        finally:
            self.stop.uninstall()

    def _finish_pending_write(self) -> None:
        """After a failure: let a checkpoint write that is under way complete (it stays valid or
        leaves nothing), so the process never exits in the middle of one; its error is logged."""
        try:
            problem, _ = self._join_write()
        except BaseException as exc:  # noqa: BLE001 - the first failure is the one reported
            problem = _first_line(exc)
        if problem:
            log.error("the pending checkpoint write failed too: %s", problem, extra=FILE_ONLY)

    def _resume(self) -> bool:
        """Load the newest valid checkpoint (rank 0 chooses, every rank loads it); False if none."""
        be = self.backend
        loaded = self.store.load_latest() if be.is_main else None
        name = be.broadcast_object(loaded[1].path.name if loaded else None, 0)
        if name is None:
            return False
        if loaded is not None:
            state = loaded[0]
        else:
            info = next((e for e in self.store.entries() if e.path.name == name), None)
            if info is None:
                raise UserError(f"{self.store.dir}: rank {be.rank} cannot see checkpoint {name} (not a shared file system?)")
            state = self.store.load(info)
        self.load_state_dict(state)
        self._last_saved_step = self.step
        log.info("resumed from step %d (epoch %d, batch %d of %d)", self.step, self.epoch,
                 self.batch_in_epoch, self.steps_per_epoch)
        return True

    def _setup_and_loop(self) -> int:
        cfg, be = self.cfg, self.backend
        self._configure_torch()
        self._build()
        if not self._resume():
            log.info("starting: %d steps (%d epochs x %d steps), global batch %d on %d rank(s), lr %.4g",
                     self.end_step, cfg.run.epochs, self.steps_per_epoch, cfg.data.batch_size, be.world_size,
                     self.lr)
        if self.stop.deadline is not None and self.stop.checkpoint_s == 0.0:
            self.stop.record_checkpoint(self._estimate_checkpoint_time())
        metrics = MetricsLog(self.run_dir, enabled=be.is_main, csv_enabled=cfg.log.csv,
                             tensorboard=cfg.log.tensorboard, resume_step=self.step, wandb=cfg.log.wandb,
                             wandb_project=cfg.log.wandb_project, wandb_entity=cfg.log.wandb_entity,
                             config=cfg.to_dict())
        try:
            result = self._loop(metrics)
        except BaseException:
            metrics.close(quiet=True)  # the first failure is the one to report
            raise
        self._doing = "closing the metrics files"
        metrics.close()
        return result

    def _finish(self) -> int:
        self._close_loader(kill=False)
        self.save_checkpoint(milestone=True)
        self.wait_for_checkpoint()  # the done marker names a complete checkpoint
        if self.backend.is_main:
            marker = {"step": self.step, "epoch": self.epoch, "finished": time.time(),
                      "checkpoint": self.store.latest_name()}
            data = (json.dumps(marker) + "\n").encode()
            try:
                atomic_write_bytes(self.layout.done, data, durable=True)
            except OSError as exc:
                raise disk_error(exc, self.layout.done, needed=len(data), what="writing the done marker") from None
        log.info("finished at step %d (epoch %d)", self.step, self.epoch)
        return EXIT_FINISHED

    def _stop(self) -> int:
        log.info("stopping at step %d: %s", self.step, self.stop.reason or "requested on another rank")
        self._close_loader(kill=False)
        self.save_checkpoint()
        self.wait_for_checkpoint()  # exit 75 promises a complete checkpoint to resume from
        return EXIT_RESUME

    def _loop(self, metrics: MetricsLog) -> int:
        cfg = self.cfg
        self._last_checkpoint_time = time.monotonic()  # checkpoint.every_minutes counts from here
        if self.step >= self.end_step:
            return self._finish()
        if self._stop_requested():
            return self._stop()
        while self.step < self.end_step:
            self._doing = f"starting the DataLoader of epoch {self.epoch}"
            loader_epoch = self.epoch
            self._loader_it = iter(self._make_loader())
            # torch's SIGCHLD handler would raise the death of a worker at any point of the main
            # thread (inside a checkpoint write, inside logging, which swallows it); the loop
            # checks its workers at each batch instead (_next_batch).
            self._stop_worker_watch()
            from pixpro_of.data.prefetch import prefetch_views  # views of batch N+1 built during step N

            batches = prefetch_views(self._loader_it, self.views, self.device, self.cfg.optim.channels_last, self.epoch)
            self._views_ahead = batches if batches is not self._loader_it else None
            t_ready = time.perf_counter()
            stepped = False
            while True:
                loaded = self._next_batch(batches)
                if loaded is None:
                    break
                stepped = True
                batch, bad = loaded.batch, loaded.bad
                if self.skip_bad:
                    self._account_skips(bad)
                t_data = time.perf_counter()
                self._doing = f"training step {self.step + 1}"
                values = self.train_step(batch)
                if self.skip_bad:
                    values["data/skipped"] = float(self._skipped_step)
                    values["data/skipped_epoch"] = float(self.skipped_in_epoch)
                t_done = time.perf_counter()
                self.step += 1
                self.batch_in_epoch += 1
                epoch_end = self.batch_in_epoch == self.steps_per_epoch
                if epoch_end:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self.skipped_in_epoch = 0
                data_s, compute_s = t_data - t_ready, t_done - t_data
                self.stop.record_step(data_s + compute_s)
                if self.step % cfg.log.every_steps == 0 or epoch_end:
                    self._doing = f"logging the metrics of step {self.step}"
                    values = self._average_over_ranks(values)
                    values.update({"epoch": self.epoch - (1 if epoch_end else 0), "time/data": data_s,
                                   "time/compute": compute_s, "time/step": data_s + compute_s,
                                   "samples_per_s": cfg.data.batch_size / max(data_s + compute_s, 1e-9)})
                    metrics.write(self.step, values)
                    log.info("step %d/%d epoch %d loss %.4f lr %.4g m %.5f data %.3fs compute %.3fs",
                             self.step, self.end_step, values["epoch"], values["loss"], values["lr"],
                             values["momentum"], data_s, compute_s)
                if self.step >= self.end_step:
                    break
                stop = self._stop_requested()  # also agrees whether checkpoint.every_minutes have passed
                ck = cfg.checkpoint
                milestone = epoch_end and self.epoch in ck.keep_epochs
                if milestone or (ck.every_steps and self.step % ck.every_steps == 0) or self._checkpoint_due or \
                        (epoch_end and ck.every_epochs and self.epoch % ck.every_epochs == 0):
                    if milestone or not stop:  # a stop writes its own checkpoint, below
                        metrics.flush()
                        self.save_checkpoint(milestone=milestone)
                if stop:
                    metrics.flush()
                    return self._stop()
                if epoch_end:
                    break
                t_ready = time.perf_counter()
            self._check_workers(f"found after the last batch read in epoch {loader_epoch}")
            self._close_loader(kill=False)
            if not stepped:
                raise RuntimeError(f"epoch {self.epoch} yielded no batch from batch {self.batch_in_epoch}")
        metrics.flush()
        return self._finish()
