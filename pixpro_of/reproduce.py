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

import json
import re
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence, Tuple

import click

from plumbing.atomic import atomic_write_text
from plumbing.cli import Converted, call, command as cli_command, words
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
    """``600``, ``90s``, ``10m``, ``1h30m`` -> seconds (ValueError otherwise)."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", t)
    if not t or not m:
        raise ValueError(f"expected a duration such as 600, 90s, 10m or 1h30m, got {text!r}")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def _size(text: str) -> Tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"expected AxB such as 256x128, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _int_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None


def _str_list(text: str) -> Tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _options(f):
    """The options of ``reproduce``; defaults are :class:`ReproduceConfig`'s."""
    d = ReproduceConfig()
    size, ints, strs = Converted(_size, "AxB"), Converted(_int_list, "N,N,..."), Converted(_str_list, "A,B,...")
    options = [
        click.option("--out", default=d.out, show_default=True, help="output folder"),
        click.option("--rows", type=strs, default=",".join(d.rows), show_default=True,
                     help=f"rows to run, from {', '.join(ROWS)}"),
        click.option("--seeds", type=ints, default=",".join(map(str, d.seeds)), show_default=True,
                     help="seeds (pretraining and head)"),
        click.option("--time-box", type=Converted(parse_duration, "DURATION"), default="10m", show_default=True,
                     help="wall-clock limit of each pretraining (600, 90s, 10m); the latest checkpoint is the result"),
        click.option("--steps", type=int, default=d.steps, show_default=True,
                     help="step budget of each pretraining (schedules span it)"),
        click.option("--train-config", default=d.train_config, show_default=True,
                     help="pretraining config file or preset"),
        click.option("--train-set", multiple=True, metavar="KEY=VALUE",
                     help="extra pretraining override (repeatable), e.g. data.image_size=96"),
        click.option("--batch-size", type=int, default=d.batch_size, show_default=True, help="pretraining batch size"),
        click.option("--videos", type=int, default=d.videos, show_default=True, help="pretraining videos"),
        click.option("--video-frames", type=int, default=d.frames, show_default=True,
                     help="frames per pretraining video"),
        click.option("--size", type=size, default="256x128", show_default=True, help="pretraining frame WIDTHxHEIGHT"),
        click.option("--data-seed", type=int, default=d.data_seed, show_default=True,
                     help="world seed of the pretraining videos"),
        click.option("--flow", type=click.Choice(("dis", "gt")), default=d.flow, show_default=True,
                     help="flow for the k>1 rows: OpenCV DIS computed on the frames, or the world's exact flow"),
        click.option("--eval-modes", type=strs, default=",".join(d.eval_modes), show_default=True,
                     help="heads to train on each frozen backbone: linear, deeplab or linear,deeplab"),
        click.option("--eval-videos", type=int, default=d.eval_videos, show_default=True,
                     help="videos in the evaluation set"),
        click.option("--eval-val-videos", type=int, default=d.eval_val_videos, show_default=True, help="of which in val"),
        click.option("--eval-frames", type=int, default=d.eval_frames, show_default=True,
                     help="frames per evaluation video"),
        click.option("--eval-every", type=int, default=d.eval_every, show_default=True,
                     help="keep every n-th evaluation frame"),
        click.option("--eval-size", type=size, default="256x128", show_default=True, help="evaluation image WIDTHxHEIGHT"),
        click.option("--eval-seed", type=int, default=d.eval_seed, show_default=True,
                     help="world seed of the evaluation set"),
        click.option("--eval-iters", type=int, default=d.eval_iters, show_default=True, help="head training iterations"),
        click.option("--eval-batch", type=int, default=d.eval_batch, show_default=True, help="head training batch"),
        click.option("--eval-crop", type=size, default="128x256", show_default=True, help="head training crop HEIGHTxWIDTH"),
        click.option("--eval-lr", type=float, default=d.eval_lr, show_default=True, help="head base learning rate"),
        click.option("--jobs", type=int, default=d.jobs, show_default=True,
                     help="subprocesses at a time (one thread each)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def config_from_args(a) -> ReproduceConfig:
    """The ReproduceConfig of parsed options (an object with one attribute per option, see :func:`parse_args`)."""
    if a.data_seed == a.eval_seed:
        raise UserError(f"--eval-seed {a.eval_seed}: must differ from --data-seed so the pretraining videos "
                        f"and the evaluation scenes are disjoint")
    return ReproduceConfig(
        out=a.out, rows=tuple(a.rows), seeds=tuple(a.seeds), time_box_s=a.time_box, steps=a.steps,
        train_config=a.train_config, train_overrides=tuple(a.train_set), videos=a.videos, frames=a.video_frames,
        size=tuple(a.size), data_seed=a.data_seed, flow=a.flow, eval_modes=tuple(a.eval_modes),
        eval_videos=a.eval_videos, eval_val_videos=a.eval_val_videos, eval_frames=a.eval_frames,
        eval_every=a.eval_every, eval_size=tuple(a.eval_size), eval_seed=a.eval_seed, eval_iters=a.eval_iters,
        eval_batch=a.eval_batch, eval_crop=tuple(a.eval_crop), eval_lr=a.eval_lr, jobs=a.jobs,
        batch_size=a.batch_size)


@cli_command("reproduce", epilog="Examples: python -m pixpro_of reproduce --out reproduce_out (make reproduce); "
                                 "python -m pixpro_of reproduce --rows random,k2-mask --seeds 0 --steps 50 "
                                 "--time-box 2m --out tiny")
@_options
@click.pass_context
def command(ctx: click.Context, **opts) -> int:
    """The mini-reproduction on the synthetic world: the seed's table, in miniature, on CPUs."""
    return run(config_from_args(SimpleNamespace(**opts)),
               command=shlex.join(["python", "-m", "pixpro_of", "reproduce", *words(ctx)]))


def parse_args(argv: Sequence[str] = ()) -> SimpleNamespace:
    """The options of ``argv`` as ``reproduce`` parses them, defaults filled in."""
    with command.make_context("reproduce", list(argv)) as ctx:
        return SimpleNamespace(**{k: v for k, v in ctx.params.items()})


def main(argv: Sequence[str] = ()) -> int:
    return call(command, argv, "pixpro_of reproduce")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
