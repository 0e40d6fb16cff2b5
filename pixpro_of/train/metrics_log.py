"""Per-step metrics to ``RUN_DIR/metrics.csv`` and TensorBoard (``RUN_DIR/tensorboard/``).

The CSV has one row per logged step with a fixed header chosen at the first row (``step`` and
``epoch`` first). On resume from step S, rows with step > S (written by a job that died before
its next checkpoint) are dropped so the file reads as one uninterrupted run; TensorBoard does
the same with ``purge_step``.

With ``wandb`` = ``offline`` or ``online`` (optional package) the rows also go to a wandb run
kept in ``RUN_DIR/wandb`` (:func:`start_wandb`).

Keys follow the seed (docs/original-system.md §1.3): ``loss``, ``loss/plus`` (loss + 4), ``lr``,
``momentum``, ``positive_pair/...``, ``mask_ratio...``, plus the time split ``time/data``
(seconds waiting for the batch), ``time/compute`` (forward, backward, optimizer step) and
``time/step``.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from plumbing.runs import RunLayout

log = logging.getLogger(__name__)
train_log = logging.getLogger("pixpro_of.train")  # the step lines, with the trainer's


class MetricsLog:
    """Appends metric rows; ``enabled=False`` (non-zero ranks) makes every call a no-op."""

    def __init__(
        self,
        run_dir: os.PathLike,
        enabled: bool = True,
        csv_enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int = 0,
        wandb: str = "off",
        wandb_project: str = "pixpro_of",
        wandb_entity: str = "",
        config: Optional[dict] = None,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.csv_path = RunLayout(self.run_dir).metrics
        self._csv_enabled = enabled and csv_enabled
        self._fields: Optional[List[str]] = None
        self._file = None
        self._writer = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if self._csv_enabled:
            try:
                self._fields = truncate_csv(self.csv_path, resume_step)
            except OSError as exc:
                raise _disk_error(exc, self.csv_path, "rewriting the metrics for the resume") from None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(RunLayout(self.run_dir).tensorboard), purge_step=resume_step + 1)
        if wandb != "off":
            self._wandb = start_wandb(self.run_dir, wandb, wandb_project, wandb_entity, config or {}, resume_step)

    @classmethod
    def from_config(cls, run_dir: os.PathLike, log_cfg, enabled: bool, resume_step: int, config: dict) -> "MetricsLog":
        """The metrics of ``cfg.log`` (CSV, TensorBoard, wandb); ``config`` goes to wandb."""
        return cls(
            run_dir,
            enabled=enabled,
            csv_enabled=log_cfg.csv,
            tensorboard=log_cfg.tensorboard,
            resume_step=resume_step,
            wandb=log_cfg.wandb,
            wandb_project=log_cfg.wandb_project,
            wandb_entity=log_cfg.wandb_entity,
            config=config,
        )

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Log one step. ``values`` maps metric names to numbers (tensors must be converted)."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: int(v) if k == "epoch" else float(v) for k, v in values.items()})
        if self._csv_enabled:
            try:
                if self._file is None:
                    new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
                    if self._fields is None:
                        self._fields = ["step", "epoch"] + sorted(k for k in row if k not in ("step", "epoch"))
                    self._file = open(self.csv_path, "a", newline="")
                    self._writer = csv.DictWriter(
                        self._file, fieldnames=self._fields, extrasaction="ignore", restval=""
                    )
                    if new:
                        self._writer.writeheader()
                self._writer.writerow({k: _fmt(v) for k, v in row.items()})
                self._file.flush()
            except OSError as exc:
                raise _disk_error(exc, self.csv_path, f"writing the metrics of step {step}") from None
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, global_step=int(step))
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=int(step))

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise _disk_error(exc, self.csv_path, "flushing the metrics") from None
        if self._tb is not None:
            self._tb.flush()

    def close(self, quiet: bool = False) -> None:
        """Flush and close; ``quiet``: ignore a failed write (training has failed already)."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            if not quiet:
                raise
        finally:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass  # the flush above already reported a failed write
                self._file = None
            if self._tb is not None:
                try:
                    self._tb.close()
                except Exception:  # noqa: BLE001
                    if not quiet:
                        raise
                self._tb = None
            if self._wandb is not None:
                self._wandb.finish()
                self._wandb = None


def step_values(
    loss,
    lr: float,
    momentum: float,
    model_metrics: Mapping,
    mask_ratio=None,
    positives_s: Optional[float] = None,
    views_s: Optional[float] = None,
) -> Dict[str, float]:
    """One step's metrics as floats (keys: the module docstring); tensors give their mean."""
    import torch

    out = {"loss": float(loss), "lr": lr, "momentum": float(momentum)}
    out["loss/plus"] = out["loss"] + 4.0
    for k, v in model_metrics.items():
        out[k] = float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)
    if mask_ratio is not None:
        out["mask_ratio"] = float(torch.as_tensor(mask_ratio, dtype=torch.float32).mean())
    if positives_s is not None:
        out["time/positives"] = positives_s
    if views_s is not None:
        out["time/views"] = views_s
    return out


def with_timing(
    values: Dict[str, float], epoch: int, data_s: float, compute_s: float, batch_size: int
) -> Dict[str, float]:
    """``values`` plus the step's epoch, time split (``time/...``) and ``samples_per_s``."""
    values.update(
        {
            "epoch": epoch,
            "time/data": data_s,
            "time/compute": compute_s,
            "time/step": data_s + compute_s,
            "samples_per_s": batch_size / max(data_s + compute_s, 1e-9),
        }
    )
    return values


def log_step(step: int, end_step: int, values: Mapping[str, float]) -> None:
    """The step's line in the training log."""
    train_log.info(
        "step %d/%d epoch %d loss %.4f lr %.4g m %.5f data %.3fs compute %.3fs",
        step,
        end_step,
        values["epoch"],
        values["loss"],
        values["lr"],
        values["momentum"],
        values["time/data"],
        values["time/compute"],
    )


def start_wandb(run_dir: Path, mode: str, project: str, entity: str, config: dict, resume_step: int):
    """A wandb run for this run directory (``mode`` ``offline`` or ``online``).

    The wandb run id is kept in ``RUN_DIR/wandb_id`` so every job of the run appends to one wandb
    run (``resume="allow"``); files go to ``RUN_DIR/wandb/`` (``wandb sync`` uploads an offline
    run later). Steps re-run after a resume that wandb already has are dropped by wandb (its steps
    only increase; its "rewind" is a private preview), so the CSV is the exact record.
    """
    try:
        import wandb
    except ImportError:
        from plumbing.errors import UserError

        raise UserError(f"log.wandb={mode} needs the wandb package (pip install wandb), or set log.wandb=off") from None
    from plumbing.atomic import atomic_write_text

    id_file = run_dir / "wandb_id"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = wandb.util.generate_id()
        atomic_write_text(id_file, run_id + "\n")
    (run_dir / "wandb").mkdir(exist_ok=True)
    log.info("wandb %s run %s (resuming at step %d)", mode, run_id, resume_step)
    return wandb.init(
        project=project,
        entity=entity or None,
        name=run_dir.name,
        id=run_id,
        dir=str(run_dir),
        mode=mode,
        config=config,
        resume="allow",
    )


def _disk_error(exc: OSError, path: Path, what: str):
    from plumbing.atomic import disk_error

    return disk_error(exc, path, what=what)


def _fmt(v: float) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def truncate_csv(path: Path, resume_step: int) -> Optional[List[str]]:
    """Drop rows with step > ``resume_step`` (atomically); return the existing header or None."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None
    header, body = rows[0], rows[1:]
    keep = []
    for r in body:
        try:
            if len(r) == len(header) and int(r[0]) <= resume_step:
                keep.append(r)
        except ValueError:
            continue  # a line cut short by a kill
    if len(keep) != len(body):
        import io

        from plumbing.atomic import atomic_write_bytes

        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(keep)
        atomic_write_bytes(path, buf.getvalue().encode(), durable=True)  # no temporary left if it fails
        log.info("metrics.csv: dropped %d row(s) after step %d", len(body) - len(keep), resume_step)
    return header


def read_csv(path: os.PathLike) -> List[Dict[str, str]]:
    """All rows of a metrics CSV as dicts (for tests and tools)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
