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

This module is the command: :func:`run` puts the parts together and the command line (the last
section) builds a :class:`~pixpro_of.reproduction.plan.ReproduceConfig`. What runs (rows, data,
tasks) is :mod:`pixpro_of.reproduction.plan`, how the subprocesses run is
:mod:`pixpro_of.reproduction.runner`, the table and chart are :mod:`pixpro_of.reproduction.report`.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence, Tuple

from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError
from pixpro_of.reproduction.plan import (ROWS, ReproduceConfig, build_tasks, prepare_eval_set,
                                         prepare_pretraining_shards)
from pixpro_of.reproduction.report import bar_chart, collect, markdown_table
from pixpro_of.reproduction.runner import run_tasks


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


# ----------------------------------------------------------------------------- command line


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
