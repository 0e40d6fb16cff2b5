"""The reproduction's plan: its rows and settings, the data it prepares, and the pretraining and evaluation tasks."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from plumbing.errors import UserError
from plumbing.runs import EXIT_RESUME
from pixpro_of.reproduction.runner import Task, run_logged


@dataclass(frozen=True)
class Row:
    """One row of the table: a pretraining configuration (``k`` None = no pretraining)."""

    name: str
    label: str
    k: Optional[int]
    mask: Optional[str]  # data.mask: none | seed (the seed's FB check) | unflow
    seed_miou: Optional[float]  # the seed's reported mIoU on real Cityscapes (docs/original-system.md §3)


ROWS: Dict[str, Row] = {r.name: r for r in (
    Row("random", "Random init (no pretraining)", None, None, None),
    Row("k1", "PixPro, k=1 (no flow)", 1, "none", 53.0),
    Row("k6", "PixPro + OF, k=6, FB mask", 6, "seed", 53.4),
    Row("k2-nomask", "Ablation k=2, no mask", 2, "none", 48.37),
    Row("k2-mask", "Ablation k=2, FB mask", 2, "seed", 48.71),
)}
EVAL_MODES = ("linear", "deeplab")


@dataclass
class ReproduceConfig:
    """Everything ``reproduce`` does. Sizes are width×height for frames, height×width for crops."""

    out: str = "reproduce_out"
    rows: Tuple[str, ...] = tuple(ROWS)
    seeds: Tuple[int, ...] = (0, 1, 2)
    # pretraining
    time_box_s: float = 600.0  # per pretraining (the issue: at most 10 minutes each)
    steps: int = 2000  # step budget per pretraining; the LR/momentum schedules span it
    train_config: str = "cpu_small"
    train_overrides: Tuple[str, ...] = ()
    videos: int = 32
    frames: int = 16
    size: Tuple[int, int] = (256, 128)
    data_seed: int = 100
    flow: str = "dis"  # dis (OpenCV DIS on the packed frames) | gt (the world's exact flow)
    # evaluation
    eval_modes: Tuple[str, ...] = ("linear",)
    eval_videos: int = 12
    eval_val_videos: int = 3
    eval_frames: int = 12
    eval_every: int = 2
    eval_size: Tuple[int, int] = (256, 128)
    eval_seed: int = 1000
    eval_iters: int = 300
    eval_batch: int = 8
    eval_crop: Tuple[int, int] = (128, 256)
    eval_lr: float = 0.01
    # execution
    jobs: int = 2
    batch_size: int = 4  # data.batch_size of the pretraining (to size the schedule)

    def validate(self) -> "ReproduceConfig":
        bad = [r for r in self.rows if r not in ROWS]
        if bad or not self.rows:
            raise UserError(f"--rows: unknown row {bad[0] if bad else '(none given)'!r}; choose from {', '.join(ROWS)}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise UserError(f"--seeds: need one or more non-negative integers, got {list(self.seeds)}")
        bad = [m for m in self.eval_modes if m not in EVAL_MODES]
        if bad or not self.eval_modes:
            raise UserError(f"--eval-modes: unknown mode {bad[0] if bad else '(none given)'!r}; "
                            f"choose from {', '.join(EVAL_MODES)}")
        if self.flow not in ("dis", "gt"):
            raise UserError(f"--flow must be dis or gt, got {self.flow!r}")
        for name in ("steps", "videos", "frames", "eval_videos", "eval_frames", "eval_every", "eval_iters",
                     "eval_batch", "jobs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.time_box_s > 0:
            raise UserError(f"--time-box must be > 0, got {self.time_box_s}")
        ks = [ROWS[r].k for r in self.rows if ROWS[r].k]
        if ks and self.frames < max(ks):
            raise UserError(f"--video-frames {self.frames}: the k={max(ks)} row needs at least {max(ks)} frames per video")
        if self.videos // self.batch_size < 1:
            raise UserError(f"--videos {self.videos}: fewer than one batch of {self.batch_size} clips per epoch")
        if not 1 <= self.eval_val_videos < self.eval_videos:
            raise UserError(f"--eval-val-videos must be in 1..{self.eval_videos - 1}, got {self.eval_val_videos}")
        return self


def prepare_pretraining_shards(cfg: ReproduceConfig, data: Path, logs: Path) -> Path:
    """Pack the pretraining videos and fill DIS flow (unless ``--flow gt``); returns the shard folder."""
    py = sys.executable
    gt = data / "pretrain_gt"
    spec = f"synth:videos={cfg.videos},frames={cfg.frames},size={cfg.size[0]}x{cfg.size[1]},seed={cfg.data_seed}"
    if not (gt / "manifest.json").is_file():
        run_logged("pack", [py, "-m", "hdf5_tools.cli", "pack", spec, str(gt), "--nodes", "1", "--no-progress"],
                   logs / "pack.log")
    if cfg.flow == "gt":
        return gt
    dis = data / "pretrain_dis"
    done = dis / ".dis-done"
    if not done.is_file():
        run_logged("flow dis", [py, "-m", "hdf5_tools", "flow", str(gt), "--model", "dis", "--recompute",
                                "--into", str(dis), "--threads", "1", "--no-progress"], logs / "flow_dis.log")
        done.write_text("DIS flow computed over every pair of the packed shards\n")
    return dis


def prepare_eval_set(cfg: ReproduceConfig, data: Path) -> Path:
    """The Cityscapes-layout evaluation set (world seed ``eval_seed``); returns its root."""
    from synth.writers import SynthConfig, write_dataset

    root = data / "cityscapes"
    if (root / "synth.json").is_file():
        return root
    t0 = time.time()
    write_dataset(root, SynthConfig(videos=cfg.eval_videos, frames=cfg.eval_frames, size=tuple(cfg.eval_size),
                                    seed=cfg.eval_seed, format="cityscapes", val_videos=cfg.eval_val_videos,
                                    cityscapes_every=cfg.eval_every, workers=1, overwrite=True))
    print(f"[reproduce] evaluation set: {root} in {time.time() - t0:.1f}s", flush=True)
    return root


def schedule_epochs(steps: int, videos: int, batch_size: int) -> int:
    """Epochs whose schedule covers ``steps`` optimizer steps (an epoch = one clip per video, one rank)."""
    return max(1, math.ceil(steps / max(1, videos // batch_size)))


def build_tasks(cfg: ReproduceConfig, out: Path, shards: Path, cs_root: Path) -> List[Task]:
    py = sys.executable
    tasks: List[Task] = []
    epochs = schedule_epochs(cfg.steps, cfg.videos, cfg.batch_size)
    for row_name in cfg.rows:
        row = ROWS[row_name]
        for seed in cfg.seeds:
            rid = f"{row_name}-s{seed}"
            run_dir = out / "runs" / rid
            if row.k is not None:
                cmd = [py, "-m", "pixpro_of", "train", "--config", cfg.train_config, "--run-dir", str(run_dir),
                       "--deadline", f"{cfg.time_box_s:.0f}",
                       f"data.shards=[{shards}]", "data.synthetic=false", f"data.k={row.k}", f"data.mask={row.mask}",
                       f"data.batch_size={cfg.batch_size}", f"run.seed={seed}", f"run.epochs={epochs}",
                       f"run.max_steps={cfg.steps}", "run.threads=1", "data.num_workers=1",
                       "checkpoint.every_epochs=0", "checkpoint.every_steps=0", "checkpoint.keep=1",
                       "log.tensorboard=false", *cfg.train_overrides]
                tasks.append(Task(rid, "train", cmd, out / "logs" / f"train_{rid}.log",
                                  run_dir / "reproduce_status.json", ok_codes=(0, EXIT_RESUME)))
            for mode in cfg.eval_modes:
                eid = f"{rid}-{mode}"
                ev = out / "eval" / eid
                backbone = ["--backbone", "random", "--arch", "resnet18"] if row.k is None else ["--backbone", str(run_dir)]
                cmd = [py, "-m", "pixpro_of", "eval", "seg", *backbone, "--data", str(cs_root), "--mode", mode,
                       "--out", str(ev), "--iters", str(cfg.eval_iters), "--batch", str(cfg.eval_batch),
                       "--crop", f"{cfg.eval_crop[0]}x{cfg.eval_crop[1]}", "--lr", str(cfg.eval_lr),
                       "--warmup-iters", str(max(1, cfg.eval_iters // 10)), "--workers", "0", "--device", "cpu",
                       "--seed", str(seed), "--log-every", "50"]
                tasks.append(Task(eid, "eval", cmd, out / "logs" / f"eval_{eid}.log", ev / "scores.json",
                                  after=rid if row.k is not None else None))
    return tasks
