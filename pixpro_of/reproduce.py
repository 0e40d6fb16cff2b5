"""``python -m pixpro_of reproduce --out DIR``: the mini-reproduction on the synthetic world (``make reproduce``).

The seed's results table (docs/original-system.md §3) compares, by frozen-backbone Cityscapes mIoU,
PixPro on BDD100K with k = 1 (53.0), PixPro + optical flow with k = 6 (53.4) and the k = 2
ablation without / with the forward-backward mask (48.37 / 48.71). This command reruns that
comparison in miniature on the synthetic world, on CPUs:

1. Pretraining videos: ``hdf5_tools pack synth:videos=V,frames=T,size=WxH,seed=S`` (frames
   and the world's exact flows), then ``hdf5_tools flow --model dis --recompute --into``
   replaces the exact flows by OpenCV DIS flow (what a user without GPUs computes). ``--flow gt``
   keeps the exact flows instead.
2. Evaluation images: a *different* world seed written with
   ``synth.write_dataset(format="cityscapes")`` (leftImg8bit/ + gtFine/), so the
   pretraining videos and the evaluation scenes are disjoint.
3. For each row and seed: ``python -m pixpro_of train --config cpu_small`` with the row's
   ``data.k`` / ``data.mask``, a step budget (``run.max_steps``; the schedules span it) and a time
   box (``--deadline``). A run stopped by the time box exits 75 with a checkpoint; its latest
   checkpoint is the result. The random-init row has no pretraining.
4. ``python -m pixpro_of eval seg`` on each backbone (linear probe and/or DeepLabV3 head with
   small settings), seeded with the row's seed.
5. Table (mean ± sample std over seeds, as the seed's table reports means), a bar chart and
   the raw per-run numbers.

Writes into ``--out``: ``table.md``, ``miou.png``, ``results.json``, ``data/`` (shards and the
Cityscapes-layout set), ``runs/<row>-s<seed>/`` (train run directories), ``eval/<row>-s<seed>-<mode>/``
(``scores.json``, ``predictions.png``) and ``logs/``. Finished steps are skipped when the
command is run again (delete a run's folder to redo it).

Pretrainings run as subprocesses with one thread each, ``--jobs`` at a time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError


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
EXIT_RESUME = 75


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
            raise UserError(f"--frames {self.frames}: the k={max(ks)} row needs at least {max(ks)} frames per video")
        if self.videos // self.batch_size < 1:
            raise UserError(f"--videos {self.videos}: fewer than one batch of {self.batch_size} clips per epoch")
        if not 1 <= self.eval_val_videos < self.eval_videos:
            raise UserError(f"--eval-val-videos must be in 1..{self.eval_videos - 1}, got {self.eval_val_videos}")
        return self


# ----------------------------------------------------------------------------- parsing helpers


def parse_duration(text: str) -> float:
    """``600``, ``90s``, ``10m``, ``1h30m`` -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", t)
    if not t or not m:
        raise argparse.ArgumentTypeError(f"expected a duration such as 600, 90s, 10m or 1h30m, got {text!r}")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def _size(text: str) -> Tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected AxB such as 256x128, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _int_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None


def _str_list(text: str) -> Tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


# ----------------------------------------------------------------------------- steps


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def _run_logged(name: str, cmd: List[str], log: Path) -> None:
    """Run ``cmd`` to completion with its output in ``log``; UserError naming the log on failure."""
    print(f"[reproduce] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env()).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-10:]
        print("\n".join(tail), file=sys.stderr)
        raise UserError(f"{name} failed with exit code {rc}; full log: {log}")
    print(f"[reproduce] {name}: ok in {time.time() - t0:.1f}s", flush=True)


def prepare_pretraining_shards(cfg: ReproduceConfig, data: Path, logs: Path) -> Path:
    """Pack the pretraining videos and fill DIS flow (unless ``--flow gt``); returns the shard folder."""
    py = sys.executable
    gt = data / "pretrain_gt"
    spec = f"synth:videos={cfg.videos},frames={cfg.frames},size={cfg.size[0]}x{cfg.size[1]},seed={cfg.data_seed}"
    if not (gt / "manifest.json").is_file():
        _run_logged("pack", [py, "-m", "hdf5_tools.cli", "pack", spec, str(gt), "--nodes", "1", "--no-progress"],
                    logs / "pack.log")
    if cfg.flow == "gt":
        return gt
    dis = data / "pretrain_dis"
    done = dis / ".dis-done"
    if not done.is_file():
        _run_logged("flow dis", [py, "-m", "hdf5_tools", "flow", str(gt), "--model", "dis", "--recompute",
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


@dataclass
class Task:
    """One subprocess: a pretraining or an evaluation, with what it waits for."""

    name: str
    kind: str  # train | eval
    cmd: List[str]
    log: Path
    status_file: Path
    after: Optional[str] = None  # the name of a train task that must succeed first
    ok_codes: Tuple[int, ...] = (0,)
    proc: Optional[subprocess.Popen] = None
    log_handle: Optional[object] = None
    started: float = 0.0
    result: Dict = field(default_factory=dict)


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


def _train_result(run_dir: Path, rc: int, seconds: float) -> Dict:
    """Steps, epochs and checkpoint of a finished or time-boxed pretraining."""
    latest = (run_dir / "checkpoints" / "latest")
    if not latest.is_file():
        raise UserError(f"{run_dir}: the pretraining left no checkpoint (checkpoints/latest missing)")
    ckpt = latest.read_text().strip()
    side = json.loads((run_dir / "checkpoints" / (Path(ckpt).stem + ".json")).read_text())
    return {"rc": rc, "seconds": round(seconds, 1), "step": int(side["step"]), "epoch": int(side["epoch"]),
            "checkpoint": str(run_dir / "checkpoints" / ckpt), "time_boxed": rc == EXIT_RESUME}


def run_tasks(tasks: List[Task], jobs: int) -> List[str]:
    """Run the tasks, ``jobs`` at a time, respecting ``after``; returns the names of failed tasks."""
    by_name = {t.name: t for t in tasks}
    pending = []
    for t in tasks:
        if t.status_file.is_file():  # finished by an earlier invocation
            t.result = json.loads(t.status_file.read_text()) if t.kind == "train" else {"rc": 0}
            print(f"[reproduce] {t.name}: done already ({t.status_file})", flush=True)
        else:
            pending.append(t)
    running: List[Task] = []
    failed: List[str] = []
    while pending or running:
        for t in list(running):
            rc = t.proc.poll()
            if rc is None:
                continue
            running.remove(t)
            t.log_handle.close()
            secs = time.time() - t.started
            if rc not in t.ok_codes:
                failed.append(t.name)
                t.result = {"rc": rc}
                print(f"[reproduce] {t.name}: FAILED with exit code {rc} after {secs:.0f}s; log {t.log}", flush=True)
                continue
            if t.kind == "train":
                try:
                    t.result = _train_result(t.status_file.parent, rc, secs)
                except (UserError, OSError, ValueError, KeyError) as exc:
                    failed.append(t.name)
                    t.result = {"rc": rc}
                    print(f"[reproduce] {t.name}: FAILED: {exc}", flush=True)
                    continue
                tmp = t.status_file.with_name(t.status_file.name + ".tmp")
                tmp.write_text(json.dumps(t.result, indent=1) + "\n")
                os.replace(tmp, t.status_file)
                how = "time box reached" if rc == EXIT_RESUME else "finished"
                print(f"[reproduce] {t.name}: {how} at step {t.result['step']} in {secs:.0f}s", flush=True)
            else:
                t.result = {"rc": rc}
                print(f"[reproduce] {t.name}: ok in {secs:.0f}s", flush=True)
        for t in list(pending):
            if len(running) >= jobs:
                break
            dep = by_name.get(t.after) if t.after else None
            if dep is not None and dep.name in failed:
                pending.remove(t)
                failed.append(t.name)
                print(f"[reproduce] {t.name}: skipped ({dep.name} failed)", flush=True)
                continue
            if dep is not None and (dep in pending or dep in running):
                continue
            pending.remove(t)
            t.log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[reproduce] {t.name}: start (log {t.log})", flush=True)
            t.log_handle = open(t.log, "w")
            t.started = time.time()
            t.proc = subprocess.Popen(t.cmd, stdout=t.log_handle, stderr=subprocess.STDOUT, env=_env())
            running.append(t)
        if running:
            time.sleep(0.5)
    return failed


# ----------------------------------------------------------------------------- results


def _mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof = 1; None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


DIAGNOSTICS = ("loss", "positive_pair/avg", "positive_pair/empty", "mask_ratio")


def train_diagnostics(run_dir: Path, tail: float = 0.2) -> Dict[str, float]:
    """Means of :data:`DIAGNOSTICS` over the last ``tail`` fraction of a run's ``metrics.csv`` rows.

    ``positive_pair/avg``: positive pairs per image (view pair and direction);
    ``positive_pair/empty``: fraction of image-directions without any positive pair;
    ``mask_ratio``: fraction of flow pixels the forward-backward check rejects (0 when
    ``data.mask=none`` or k = 1).
    """
    import csv

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[-max(1, int(len(rows) * tail)):] if rows else []
    out = {}
    for key in DIAGNOSTICS:
        vals = []
        for r in rows:
            try:
                v = float(r.get(key) or "nan")
            except ValueError:
                continue
            if math.isfinite(v):
                vals.append(v)
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def collect(cfg: ReproduceConfig, out: Path, tasks: List[Task]) -> Dict:
    """Per-run numbers and per-row summaries (mIoU in percent)."""
    by_name = {t.name: t for t in tasks}
    runs, rows = [], []
    for row_name in cfg.rows:
        row = ROWS[row_name]
        summary = {"row": row_name, "label": row.label, "k": row.k, "mask": row.mask, "seed_miou": row.seed_miou,
                   "modes": {}}
        steps, minutes, diags = [], [], []
        for seed in cfg.seeds:
            rid = f"{row_name}-s{seed}"
            train = dict(by_name[rid].result) if rid in by_name else {}
            if train.get("step") is not None:
                steps.append(train["step"])
                minutes.append(train["seconds"] / 60)
                train["diagnostics"] = train_diagnostics(out / "runs" / rid)
                diags.append(train["diagnostics"])
            for mode in cfg.eval_modes:
                eid = f"{rid}-{mode}"
                scores_file = out / "eval" / eid / "scores.json"
                miou = None
                if scores_file.is_file():
                    miou = json.loads(scores_file.read_text()).get("mIoU")
                runs.append({"row": row_name, "seed": seed, "mode": mode, "mIoU": miou,
                             "train": train or None, "scores": str(scores_file) if miou is not None else None})
        for mode in cfg.eval_modes:
            vals = [r["mIoU"] for r in runs if r["row"] == row_name and r["mode"] == mode and r["mIoU"] is not None]
            mean, std = _mean_std(vals)
            summary["modes"][mode] = {"mean": mean, "std": std, "n": len(vals), "values": vals}
        summary["diagnostics"] = {k: sum(d[k] for d in diags) / len(diags)
                                  for k in DIAGNOSTICS if diags and all(k in d for d in diags)}
        summary["steps_mean"] = sum(steps) / len(steps) if steps else None
        summary["pretrain_minutes_mean"] = sum(minutes) / len(minutes) if minutes else None
        rows.append(summary)
    return {"rows": rows, "runs": runs}


def _fmt(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} (n={n})"


def markdown_table(cfg: ReproduceConfig, results: Dict) -> str:
    mode_cols = [f"mIoU {m} (mean ± std)" for m in cfg.eval_modes]
    head = ["Method", "Frames k", "Mask", "Seeds", "Steps (mean)", "Pretrain min (mean)", *mode_cols,
            "Seed's mIoU (BDD→Cityscapes)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results["rows"]:
        cells = [r["label"], "–" if r["k"] is None else str(r["k"]), r["mask"] or "–",
                 str(max(m["n"] for m in r["modes"].values())),
                 "–" if r["steps_mean"] is None else f"{r['steps_mean']:.0f}",
                 "–" if r["pretrain_minutes_mean"] is None else f"{r['pretrain_minutes_mean']:.1f}"]
        cells += [_fmt(r["modes"][m]["mean"], r["modes"][m]["std"], r["modes"][m]["n"]) for m in cfg.eval_modes]
        cells.append("–" if r["seed_miou"] is None else f"{r['seed_miou']:g}")
        lines.append("| " + " | ".join(cells) + " |")
    pre = [r for r in results["rows"] if r["diagnostics"]]
    if pre:
        lines += ["", "Pretraining diagnostics (means over the last 20% of steps, then over seeds):", "",
                  "| Method | loss | positive pairs per image | images without positives | FB-rejected flow fraction |",
                  "|---|---|---|---|---|"]
        for r in pre:
            d = r["diagnostics"]
            lines.append("| " + " | ".join([r["label"]] + [f"{d[k]:.3f}" if k in d else "–" for k in DIAGNOSTICS])
                         + " |")
    return "\n".join(lines) + "\n"


def bar_chart(cfg: ReproduceConfig, results: Dict, path: Path) -> None:
    """Bars of mean mIoU per row (one group per eval mode), sample-std error bars, per-seed dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    n_modes = len(cfg.eval_modes)
    width = 0.8 / n_modes
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.2))
    for j, mode in enumerate(cfg.eval_modes):
        xs = [i + (j - (n_modes - 1) / 2) * width for i in range(len(rows))]
        means = [r["modes"][mode]["mean"] or 0.0 for r in rows]
        errs = [r["modes"][mode]["std"] or 0.0 for r in rows]
        ax.bar(xs, means, width * 0.9, yerr=errs, capsize=4, label=f"{mode} head", alpha=0.8)
        for x, r in zip(xs, rows):
            vals = r["modes"][mode]["values"]
            ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"].replace(", ", "\n", 1) for r in rows], fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"Synthetic world, frozen backbone; mean ± std over seeds {','.join(map(str, cfg.seeds))}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- command


def run(cfg: ReproduceConfig, command: str = "") -> int:
    """Everything (see the module docstring); 0 when every task succeeded, 1 otherwise."""
    cfg.validate()
    out = Path(cfg.out).resolve()
    data, logs = out / "data", out / "logs"
    try:
        for d in (data, logs, out / "runs", out / "eval"):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {cfg.out}: cannot create ({exc.strerror})") from None
    t0 = time.time()
    needs_shards = any(ROWS[r].k is not None for r in cfg.rows)
    shards = prepare_pretraining_shards(cfg, data, logs) if needs_shards else data / "pretrain_unused"
    cs_root = prepare_eval_set(cfg, data)
    tasks = build_tasks(cfg, out, shards, cs_root)
    failed = run_tasks(tasks, cfg.jobs)
    results = collect(cfg, out, tasks)
    results["config"] = asdict(cfg)
    results["command"] = command
    results["seconds"] = round(time.time() - t0, 1)
    results["failed"] = failed
    table = markdown_table(cfg, results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "table.md", table)
    bar_chart(cfg, results, out / "miou.png")
    print()
    print(table)
    print(f"[reproduce] {len(tasks)} tasks in {results['seconds'] / 60:.1f} min; "
          f"{out / 'table.md'}, {out / 'miou.png'}, {out / 'results.json'}")
    if failed:
        print(f"[reproduce] FAILED: {', '.join(failed)} (logs in {logs})", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    d = ReproduceConfig()
    p = argparse.ArgumentParser(prog="pixpro_of reproduce", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=d.out, help="output folder")
    p.add_argument("--rows", type=_str_list, default=",".join(d.rows), help=f"rows to run, from {', '.join(ROWS)}")
    p.add_argument("--seeds", type=_int_list, default=",".join(map(str, d.seeds)), help="seeds (pretraining and head)")
    p.add_argument("--time-box", type=parse_duration, default="10m",
                   help="wall-clock limit of each pretraining (600, 90s, 10m); the latest checkpoint is the result")
    p.add_argument("--steps", type=int, default=d.steps, help="step budget of each pretraining (schedules span it)")
    p.add_argument("--train-config", default=d.train_config, help="pretraining config file or preset")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra pretraining override (repeatable), e.g. data.image_size=96")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pretraining batch size")
    p.add_argument("--videos", type=int, default=d.videos, help="pretraining videos")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per pretraining video")
    p.add_argument("--size", type=_size, default="256x128", help="pretraining frame WIDTHxHEIGHT")
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="world seed of the pretraining videos")
    p.add_argument("--flow", choices=("dis", "gt"), default=d.flow,
                   help="flow for the k>1 rows: OpenCV DIS computed on the frames, or the world's exact flow")
    p.add_argument("--eval-modes", type=_str_list, default=",".join(d.eval_modes),
                   help="heads to train on each frozen backbone: linear, deeplab or linear,deeplab")
    p.add_argument("--eval-videos", type=int, default=d.eval_videos, help="videos in the evaluation set")
    p.add_argument("--eval-val-videos", type=int, default=d.eval_val_videos, help="of which in val")
    p.add_argument("--eval-frames", type=int, default=d.eval_frames, help="frames per evaluation video")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="keep every n-th evaluation frame")
    p.add_argument("--eval-size", type=_size, default="256x128", help="evaluation image WIDTHxHEIGHT")
    p.add_argument("--eval-seed", type=int, default=d.eval_seed, help="world seed of the evaluation set")
    p.add_argument("--eval-iters", type=int, default=d.eval_iters, help="head training iterations")
    p.add_argument("--eval-batch", type=int, default=d.eval_batch, help="head training batch")
    p.add_argument("--eval-crop", type=_size, default="128x256", help="head training crop HEIGHTxWIDTH")
    p.add_argument("--eval-lr", type=float, default=d.eval_lr, help="head base learning rate")
    p.add_argument("--jobs", type=int, default=d.jobs, help="subprocesses at a time (one thread each)")
    return p


def config_from_args(a: argparse.Namespace) -> ReproduceConfig:
    if a.data_seed == a.eval_seed:
        raise UserError(f"--eval-seed {a.eval_seed}: must differ from --data-seed so the pretraining videos "
                        f"and the evaluation scenes are disjoint")
    return ReproduceConfig(
        out=a.out, rows=tuple(a.rows), seeds=tuple(a.seeds), time_box_s=a.time_box, steps=a.steps,
        train_config=a.train_config, train_overrides=tuple(a.train_set), videos=a.videos, frames=a.frames,
        size=tuple(a.size), data_seed=a.data_seed, flow=a.flow, eval_modes=tuple(a.eval_modes),
        eval_videos=a.eval_videos, eval_val_videos=a.eval_val_videos, eval_frames=a.eval_frames,
        eval_every=a.eval_every, eval_size=tuple(a.eval_size), eval_seed=a.eval_seed, eval_iters=a.eval_iters,
        eval_batch=a.eval_batch, eval_crop=tuple(a.eval_crop), eval_lr=a.eval_lr, jobs=a.jobs,
        batch_size=a.batch_size)


def main(argv: Sequence[str] = ()) -> int:
    args = build_parser().parse_args(list(argv))
    return run(config_from_args(args), command=shlex.join(["python", "-m", "pixpro_of", "reproduce", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
