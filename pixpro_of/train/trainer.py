"""The PixPro(+flow) training loop: ``Trainer(cfg, run_dir).run()`` trains to the last step
(returns :data:`EXIT_FINISHED`, 0, with the ``done`` marker) or stops at a step boundary with a
checkpoint (returns :data:`EXIT_RESUME`, 75: run the same command again). Exact resume, failing
fast and the run directory: ARCHITECTURE.md "The trainer".
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from pixpro_of.config import TrainConfig
from pixpro_of.dist.backend import Backend, check_world_matches_launch, make_backend
from pixpro_of.train import cadence
from pixpro_of.train.bad_samples import check_budget, failed_batch, log_skips
from pixpro_of.train.checkpoint import CheckpointStore
from pixpro_of.train.checkpoint_writes import CheckpointWrites, estimate_seconds
from pixpro_of.train.components import ClipSource, Components
from pixpro_of.train.data import BadSample, EpochLoader, LoadedBatch
from pixpro_of.train.failures import TrainingFailure, first_line, rank_prefix, safe_report
from pixpro_of.train.logging_setup import setup_logging
from pixpro_of.train.metrics_log import MetricsLog, log_step, step_values, with_timing
from pixpro_of.train.rank_data import RankData
from pixpro_of.train.rng_state import rng_state, set_rng_state
from pixpro_of.train.run_files import prepare_run_dir, write_done_marker
from pixpro_of.train.stopping import StopControl
from pixpro_of.train.torch_settings import configure_torch
from plumbing.atomic import disk_error
from plumbing.errors import UserError
from plumbing.runs import EXIT_FINISHED, EXIT_RESUME, RunLayout

log = logging.getLogger("pixpro_of.train")


class Trainer:
    """One training run in ``run_dir``; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: os.PathLike,
        backend: Optional[Backend] = None,
        components: Optional[Components] = None,
        stop: Optional[StopControl] = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        self.backend = backend or make_backend(
            cfg.dist.backend, device=cfg.run.device, timeout_s=60.0 * cfg.dist.timeout_minutes
        )
        check_world_matches_launch(self.backend)  # mpirun -np 8 ... dist.backend=single: refuse
        self.parts = components or Components()
        self.source: ClipSource = self.parts.clips(cfg, self.run_dir)
        self.stop = stop
        self.store = CheckpointStore(self.layout.checkpoints, keep=cfg.checkpoint.keep)
        self.writes = CheckpointWrites(self.backend, self.store)  # rank 0's, off the training thread
        self._last_checkpoint_time = time.monotonic()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self._last_saved_step = -1
        self.skipped_in_epoch = 0  # bad samples skipped in this epoch, all ranks (data.on_bad_sample=skip)
        self._skipped_step = 0
        self._checkpoint_due = False
        self.loader = EpochLoader(rank_prefix(self.backend.rank, self.backend.world_size))
        self._doing = "starting"

    # ------------------------------------------------------------------ setup
    def _configure_torch(self) -> None:
        configure_torch(self.cfg, self.backend.device)

    def _build(self) -> None:
        cfg, be = self.cfg, self.backend
        self.device = be.device
        # Where the positives are computed: chosen once, from the config.
        self.positives = self.parts.positives(cfg, self.device)
        self.views = self.parts.views(cfg, self.device)  # where the views are built: chosen once too
        self.data = RankData(cfg, be, self.source, self.positives, self.views, self.parts)
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = cfg.run.epochs * self.steps_per_epoch
        self.end_step = cadence.end_step(cfg.run.epochs, self.steps_per_epoch, cfg.run.max_steps)
        self.warmup_steps = cfg.optim.warmup_epochs * self.steps_per_epoch
        self.skip_bad = cfg.data.on_bad_sample == "skip"

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
            "timing": {
                "step_s": self.stop.step_estimate() if self.stop else 0.0,
                "checkpoint_s": self.stop.checkpoint_s if self.stop else 0.0,
            },
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state.get("steps_per_epoch", self.steps_per_epoch)) != self.steps_per_epoch:
            raise UserError(
                f"checkpoint step {state['step']}: it had {state['steps_per_epoch']} steps per epoch, "
                f"this run has {self.steps_per_epoch} (different data or world size)"
            )
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
        """Rank 0 copies the state to host memory and writes it in the background while every rank
        trains on (:class:`~pixpro_of.train.checkpoint_writes.CheckpointWrites`); a write still
        running is finished first. :meth:`wait_for_checkpoint` finishes the write (at a stop and at the end)."""
        if self._last_saved_step == self.step and not milestone:
            return
        self._doing = f"writing the checkpoint of step {self.step}"
        self._record_checkpoint_time(self.writes.start(self.state_dict, milestone=milestone))
        self._last_saved_step = self.step
        self._last_checkpoint_time = time.monotonic()

    def wait_for_checkpoint(self) -> None:
        """Finish rank 0's pending checkpoint write (every rank learns whether it succeeded)."""
        self._doing = f"finishing the checkpoint of step {self.step}"
        self._record_checkpoint_time(self.writes.finish())

    def _record_checkpoint_time(self, seconds: float) -> None:
        if self.stop is not None and seconds:
            self.stop.record_checkpoint(float(seconds))

    # ------------------------------------------------------------------ loop pieces
    def train_step(self, batch) -> Dict[str, float]:
        """One optimizer step on ``batch`` (a :class:`~pixpro_of.data.pipeline.Batch`); returns
        this step's metrics as floats."""
        core = self.backend.unwrap(self.model)
        m = self.parts.momentum(self.step, self.total_steps, self.cfg.model.momentum_base)
        core.momentum_update(m)  # EMA first, as the seed does
        lr = float(self.optimizer.param_groups[0]["lr"])
        b = batch.to(self.device, channels_last=self.cfg.optim.channels_last)
        b, views_s = self._complete(self.views, b, own_clock=True)  # decoded and built unless the workers did
        b, positives_s = self._complete(self.positives, b)  # on the device unless the workers computed them
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            loss, metrics = self.forward_model(b.view1, b.view2, b.pos12, b.pos21)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.backend.optimizer_step(self.optimizer, self.scaler)  # Horovod: its own AMP recipe
        self.scaler.update()
        self.scheduler.step()
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step} (epoch {self.epoch})")
        out = step_values(loss.detach(), lr, m, metrics, b.mask_ratio, positives_s=positives_s, views_s=views_s)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out

    def _complete(self, stage, b, own_clock: bool = False):
        """``stage.complete(b)`` and, for a stage on the device, its seconds: with ``own_clock`` the
        stage's own (the views are built one batch ahead, pixpro_of.data.prefetch, timed by CUDA events)."""
        t0 = time.perf_counter()
        b = stage.complete(b)
        if not stage.on_device:
            return b, None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        own = getattr(stage, "last_seconds", None) if own_clock else None
        return b, (time.perf_counter() - t0 if own is None else own)

    def _average_over_ranks(self, values: Dict[str, float]) -> Dict[str, float]:
        """Metrics averaged over ranks (counts too: they become per-rank means)."""
        if self.backend.world_size == 1:
            return values
        keys = sorted(values)
        return dict(zip(keys, self.backend.allreduce_values([values[k] for k in keys], op="mean"), strict=True))

    def _stop_requested(self) -> bool:
        """Every rank must stop at the same step, or collectives would hang: any rank's request
        counts. The same collective carries rank 0's clock: whether ``checkpoint.every_minutes``
        have passed since the last checkpoint (``self._checkpoint_due``, alike on every rank)."""
        self._doing = f"agreeing whether to stop after step {self.step}"
        mine = 1.0 if (self.stop is not None and self.stop.should_stop()) else 0.0
        passed = cadence.minutes_passed(time.monotonic(), self._last_checkpoint_time, self.cfg.checkpoint.every_minutes)
        due = 1.0 if (self.backend.is_main and passed) else 0.0
        stop, due = self.backend.allreduce_values([mine, due], op="sum")
        self._checkpoint_due = due > 0
        return stop > 0

    # ------------------------------------------------------------------ batches and bad samples
    def _next_batch(self) -> Optional[LoadedBatch]:
        """The next batch of the epoch, or None at its end; a sample that could not be built ends
        training with its one-line message (the substitutes' records stay in ``bad``)."""
        self._doing = f"reading batch {self.batch_in_epoch} of epoch {self.epoch}"
        batch = self.loader.next_batch(self._doing, self.epoch)
        if batch is not None and batch.failed is not None:
            raise failed_batch(batch, self.backend, self.cfg.data, self.batch_in_epoch, self.skipped_in_epoch)
        return batch

    def _account_skips(self, bad: List[BadSample]) -> None:
        """Count this step's skipped samples over all ranks; rank 0 logs each; fail when the
        epoch's count passes ``data.bad_sample_budget`` (every rank decides alike)."""
        be = self.backend
        self._doing = f"counting skipped samples of step {self.step + 1}"
        total = int(be.allreduce_values([float(len(bad))], op="sum")[0]) if be.world_size > 1 else len(bad)
        self._skipped_step = total
        if total:
            records = log_skips(be, bad)
            self.skipped_in_epoch += total
            check_budget(self.skipped_in_epoch, self.cfg.data.bad_sample_budget, self.epoch, records, bad, be.is_main)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """Train until finished (returns 0) or stopped with a checkpoint (returns 75)."""
        be = self.backend
        if self.layout.is_done():
            log.info("%s: training already finished (done marker present)", self.run_dir)
            return EXIT_FINISHED
        if self.stop is None:
            self.stop = StopControl.from_config(self.cfg.stop)
        self.stop.install()  # from here on a stop signal only sets a flag, even during set-up
        try:
            self._doing = "preparing the run directory"
            prepare_run_dir(self.cfg, self.layout, self.store, self.backend, self.source.prepare)
            try:
                handler = setup_logging(self.run_dir, be.rank)
            except OSError as exc:
                raise disk_error(exc, exc.filename or self.layout.logs, what="opening the log") from None
            try:
                return self._setup_and_loop()
            except (KeyboardInterrupt, SystemExit):
                self.loader.close(kill=True)
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure ends as one line (failures.py)
                # before the workers are killed: it reports how they died
                failure = safe_report(exc, self.loader.it, be.rank, be.world_size, self._doing, self.run_dir)
                self.loader.close(kill=True)
                raise failure from None
            finally:
                self.loader.close(kill=True)
                self.writes.finish_after_failure()
                logging.getLogger("pixpro_of").removeHandler(handler)
                handler.close()
        except UserError as exc:
            if isinstance(exc, TrainingFailure):
                raise
            # Set-up errors (before the log exists): every rank raises the same one (rank 0 reports it).
            raise TrainingFailure(first_line(exc), quiet=not be.is_main) from None
        finally:
            self.stop.uninstall()

    def _resume(self) -> bool:
        """Load the newest valid checkpoint (rank 0 chooses, every rank loads it); False if none."""
        state = self.writes.load_chosen()
        if state is None:
            return False
        self.load_state_dict(state)
        self._last_saved_step = self.step
        log.info(
            "resumed from step %d (epoch %d, batch %d of %d)",
            self.step,
            self.epoch,
            self.batch_in_epoch,
            self.steps_per_epoch,
        )
        return True

    def _setup_and_loop(self) -> int:
        cfg, be = self.cfg, self.backend
        self._configure_torch()
        self._build()
        if not self._resume():
            log.info(
                "starting: %d steps (%d epochs x %d steps), global batch %d on %d rank(s), lr %.4g",
                self.end_step,
                cfg.run.epochs,
                self.steps_per_epoch,
                cfg.data.batch_size,
                be.world_size,
                self.lr,
            )
        if self.stop.deadline is not None and self.stop.checkpoint_s == 0.0:
            self.stop.record_checkpoint(estimate_seconds(self.state_dict()))
        metrics = MetricsLog.from_config(self.run_dir, cfg.log, be.is_main, self.step, cfg.to_dict())
        try:
            result = self._loop(metrics)
        except BaseException:
            metrics.close(quiet=True)  # the first failure is the one to report
            raise
        self._doing = "closing the metrics files"
        metrics.close()
        return result

    def _finish(self) -> int:
        self.loader.close(kill=False)
        self.save_checkpoint(milestone=True)
        self.wait_for_checkpoint()  # the done marker names a complete checkpoint
        if self.backend.is_main:
            write_done_marker(self.layout, self.step, self.epoch, self.store.latest_name())
        log.info("finished at step %d (epoch %d)", self.step, self.epoch)
        return EXIT_FINISHED

    def _stop(self) -> int:
        log.info("stopping at step %d: %s", self.step, self.stop.reason or "requested on another rank")
        self.loader.close(kill=False)
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
            loader = self.data.loader(self.epoch, self.batch_in_epoch, self.stop.signal_nums if self.stop else ())
            self.loader.open(loader, self.views, self.device, cfg.optim.channels_last, self.epoch)
            t_ready = time.perf_counter()
            stepped = False
            while True:
                loaded = self._next_batch()
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
                    with_timing(values, self.epoch - (1 if epoch_end else 0), data_s, compute_s, cfg.data.batch_size)
                    metrics.write(self.step, values)
                    log_step(self.step, self.end_step, values)
                if self.step >= self.end_step:
                    break
                stop = self._stop_requested()  # also agrees whether checkpoint.every_minutes have passed
                # a stop writes its own checkpoint, below
                write, milestone = cadence.checkpoint_after(
                    self.step, self.epoch, epoch_end, cfg.checkpoint, self._checkpoint_due, stopping=stop
                )
                if write:
                    metrics.flush()
                    self.save_checkpoint(milestone=milestone)
                if stop:
                    metrics.flush()
                    return self._stop()
                if epoch_end:
                    break
                t_ready = time.perf_counter()
            self.loader.check_workers(f"found after the last batch read in epoch {loader_epoch}")
            self.loader.close(kill=False, check=True)
            if not stepped:
                raise RuntimeError(f"epoch {self.epoch} yielded no batch from batch {self.batch_in_epoch}")
        metrics.flush()
        return self._finish()
