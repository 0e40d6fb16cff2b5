"""``python -m pixpro_of reproduce --out DIR``: the mini-reproduction on the synthetic world (``make reproduce``)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Sequence, Tuple

import click

from pixpro_of.reproduction.data import data_commands, prepare_eval_set, prepare_pretraining_shards, shard_dirs
from pixpro_of.reproduction.plan import (
    FINISHED,
    PROFILES,
    ROWS,
    Job,
    ReproduceConfig,
    array_batches,
    array_command,
    build_jobs,
    job_state,
    profile_defaults,
)
from pixpro_of.reproduction.report import bar_chart, collect, markdown_table, propagation_chart
from plumbing.atomic import atomic_write_text
from plumbing.cli import Converted, call, words
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.parse import parse_duration, parse_hxw, parse_wxh


def submit(job: Job) -> Tuple[bool, str]:
    """Run the job's ``launcher submit``; (ok, the launcher's last line)."""
    env = dict(os.environ, **job.env)
    proc = subprocess.run(job.submit, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return proc.returncode == 0, (lines[-1] if lines else f"exit {proc.returncode}")


def dry_run(cfg: ReproduceConfig, out: Path) -> int:
    """Print the data steps and every run's submit command; write and submit nothing."""
    data = out / "data"
    print(
        f"# reproduce --dry-run: profile {cfg.profile}, {cfg.arch}, views {cfg.image_size} px "
        f"({cfg.grid}x{cfg.grid} C5 grid), scheduler {cfg.scheduler}; nothing is written or submitted"
    )
    if any(ROWS[r].k for r in cfg.rows):
        for name, cmd, _ in data_commands(cfg, data):
            print(f"# data: {name}\n{shlex.join(cmd)}")
    print(f"# data: evaluation set (synth.write_dataset, seed {cfg.eval_seed}) -> {data / 'cityscapes'}")
    jobs = build_jobs(cfg, out, shard_dirs(cfg, data), data / "cityscapes")
    n_train = sum(j.kind == "train" for j in jobs)
    if cfg.scheduler != "local":  # a batch system: array jobs with a cap instead of one job per run
        arrays = array_batches(jobs)
        for name, batch in arrays:
            cmd, tasks_file, spec = array_command(cfg, out, name, batch)
            when = "at once" if name == "train" else "as their pretrainings finish (one array per pass)"
            print(
                f"# array {name}: {len(batch)} tasks, at most {cfg.max_running or len(batch)} running at once, "
                f"submitted {when}; tasks file {tasks_file}:"
            )
            for j in batch:  # each task is this 'launcher submit', run by the array job
                print(f"#   task {j.name} -> {j.run_dir}\n{j.shell()}")
            print(shlex.join(cmd))
        print(
            f"# {len(jobs)} runs ({n_train} pretrainings, {len(jobs) - n_train} evaluations) as at least "
            f"{len(arrays)} array jobs, at most {cfg.max_running} tasks of each running at once"
        )
        return 0
    for job in jobs:
        after = f" after {job.after}" if job.after else ""
        print(f"# run {job.name} ({job.kind}{', ' + job.mode if job.mode else ''}{after}) -> {job.run_dir}")
        print(job.shell())
    print(f"# {len(jobs)} runs: {n_train} pretrainings, {len(jobs) - n_train} evaluations")
    return 0


def submit_arrays(cfg: ReproduceConfig, out: Path, ready: List[Job]) -> Dict[str, Tuple[bool, str]]:
    """Submit ``ready`` runs as array jobs (one per kind and mode); {run name: (ok, the launcher's last line)}."""
    result: Dict[str, Tuple[bool, str]] = {}
    for name, batch in array_batches(ready):
        cmd, tasks_file, spec = array_command(cfg, out, name, batch)
        tasks_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(tasks_file, json.dumps(spec, indent=1) + "\n")
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        line = lines[-1] if lines else f"exit {proc.returncode}"
        print(
            f"[reproduce] array {name}: {len(batch)} runs, at most {cfg.max_running or len(batch)} at once: {line}",
            flush=True,
        )
        for j in batch:
            result[j.name] = (proc.returncode == 0, line)
    return result


def run(cfg: ReproduceConfig, command: str = "") -> int:
    """Everything (see the module docstring); 0 when every run succeeded, 1 otherwise."""
    cfg.validate()
    out = Path(cfg.out).resolve()
    if cfg.dry_run:
        return dry_run(cfg, out)
    data, logs = out / "data", out / "logs"
    try:
        for d in (data, logs, out / "runs", out / "eval"):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {cfg.out}: cannot create ({exc.strerror})") from None
    t0 = time.time()
    shards = prepare_pretraining_shards(cfg, data, logs)
    cs_root = (
        prepare_eval_set(cfg, data) if any(m in cfg.eval_modes for m in ("linear", "deeplab")) else data / "cityscapes"
    )
    jobs = build_jobs(cfg, out, shards, cs_root)
    states = drive(cfg, jobs)
    results = collect(cfg, jobs, states)
    results["config"] = asdict(cfg)
    results["command"] = command
    results["seconds"] = round(time.time() - t0, 1)
    table = markdown_table(cfg, results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "table.md", table)
    bar_chart(cfg, results, out / "miou.png")
    propagation_chart(cfg, results, out / "propagation.png")
    print()
    print(table)
    print(
        f"[reproduce] {len(jobs)} runs in {results['seconds'] / 60:.1f} min; "
        f"{out / 'table.md'}, {out / 'miou.png'}, {out / 'propagation.png'}, {out / 'results.json'}"
    )
    pending = [n for n, (s, _) in states.items() if s in ("new", "running")]
    if results["failed"]:
        print(f"[reproduce] FAILED: {'; '.join(results['failed'])}", file=sys.stderr)
        return 1
    if pending:
        print(f"[reproduce] {len(pending)} runs not finished yet; run the same command again to collect them")
    return 0


def drive(cfg: ReproduceConfig, jobs: List[Job]) -> Dict[str, Tuple[str, str]]:
    """Submit every run whose pretraining is ready, until all have ended (one pass with ``--no-wait``)."""
    by_name = {j.name: j for j in jobs}
    states = {j.name: job_state(j) for j in jobs}
    for j in jobs:
        if states[j.name][0] in FINISHED:
            print(f"[reproduce] {j.name}: done already ({states[j.name][1]})", flush=True)
    reported = {n for n, (s, _) in states.items() if s in FINISHED or s == "failed"}
    order = [j for j in jobs if j.kind == "train"] + [j for j in jobs if j.kind != "train"]  # pretrainings queue first
    out = Path(cfg.out).resolve()
    while True:
        ready = []
        for j in order:
            state = states[j.name][0]
            if state != "new":
                continue
            if j.after:
                dep = states[j.after][0]
                if dep == "failed":
                    states[j.name] = ("failed", f"not run: pretraining {j.after} failed")
                    continue
                if dep not in FINISHED:
                    continue
            ready.append(j)
        # a batch system: every ready run of one kind and mode in one array job; here: one run each
        submitted = submit_arrays(cfg, out, ready) if cfg.scheduler != "local" else {j.name: submit(j) for j in ready}
        for j in ready:
            ok, line = submitted[j.name]
            if ok:
                states[j.name] = ("running", "submitted")
                print(f"[reproduce] {j.name}: submitted ({j.run_dir})", flush=True)
            else:
                states[j.name] = ("failed", f"submit failed: {line}")
        for n, (s, detail) in states.items():
            if n not in reported and (s in FINISHED or s == "failed"):
                reported.add(n)
                print(f"[reproduce] {n}: {s} ({detail})", flush=True)
        waiting = [
            n
            for n, (s, _) in states.items()
            if s == "running" or (s == "new" and by_name[n].after and states[by_name[n].after][0] in ("new", "running"))
        ]
        if not waiting or not cfg.wait:
            return states
        time.sleep(cfg.poll_s)
        for n, (s, _) in list(states.items()):
            if s == "running":
                states[n] = job_state(by_name[n])


# ----------------------------------------------------------------------------- command line


def _duration(text: str) -> float:
    """Seconds (plumbing.parse's grammar); a bare number is refused: it was seconds here before."""
    return parse_duration(text, bare_number=False)


def _int_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None


def _str_list(text: str) -> Tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


#: option name -> (ReproduceConfig field, type, help). Defaults come from the profile (``--profile``).
_SIZE, _HXW = Converted(parse_wxh, "WIDTHxHEIGHT"), Converted(parse_hxw, "HEIGHTxWIDTH")
_INTS, _STRS = Converted(_int_list, "N,N,..."), Converted(_str_list, "A,B,...")
_DUR = Converted(_duration, "DURATION")
_UNITS = "90s, 10m, 1h30m or HH:MM:SS; a bare number is refused: it meant seconds here before, minutes elsewhere"
OPTIONS = [
    ("--rows", "rows", _STRS, f"rows to run, from {', '.join(ROWS)}"),
    ("--seeds", "seeds", _INTS, "seeds (pretraining and head)"),
    (
        "--time-box",
        "time_box_s",
        _DUR,
        f"wall-clock box of each pretraining: its deadline; the latest checkpoint is the result ({_UNITS})",
    ),
    ("--steps", "steps", int, "step budget of each pretraining (schedules span it)"),
    (
        "--lr",
        "lr",
        float,
        "peak learning rate per pretraining step (optim.base_lr = LR x 256 / batch); "
        "0 = the trainer config's rule, base_lr x batch / 256",
    ),
    ("--train-config", "train_config", str, "pretraining config file or preset"),
    ("--arch", "arch", click.Choice(("resnet18", "resnet34", "resnet50")), "backbone (model.arch)"),
    ("--image-size", "image_size", int, "view side in pixels (data.image_size); the C5 grid is its 1/32"),
    ("--batch-size", "batch_size", int, "global pretraining batch"),
    ("--threads", "threads", int, "run.threads of each pretraining (0 = torch's default)"),
    ("--workers", "workers", int, "data.num_workers of each pretraining"),
    ("--device", "device", click.Choice(("cpu", "cuda", "auto")), "run.device of each pretraining"),
    ("--videos", "videos", int, "pretraining videos"),
    ("--video-frames", "frames", int, "frames per pretraining video"),
    ("--size", "size", _SIZE, "pretraining frame WIDTHxHEIGHT"),
    ("--data-seed", "data_seed", int, "world seed of the pretraining videos"),
    (
        "--flow",
        "flow",
        click.Choice(("dis", "gt")),
        "flow of the estimated-flow rows (k6, k2-*): OpenCV DIS or the world's exact flow",
    ),
    ("--prep-threads", "prep_threads", int, "threads of the DIS flow step"),
    ("--eval-modes", "eval_modes", _STRS, "evaluations: linear, deeplab, propagate (comma-separated)"),
    ("--deeplab-rows", "deeplab_rows", _STRS, "rows with the DeepLabV3 column: row names, main, all or none"),
    ("--eval-videos", "eval_videos", int, "videos in the segmentation set"),
    ("--eval-val-videos", "eval_val_videos", int, "of which in val"),
    ("--eval-frames", "eval_frames", int, "frames per segmentation video"),
    ("--eval-every", "eval_every", int, "keep every n-th segmentation frame"),
    ("--eval-size", "eval_size", _SIZE, "segmentation image WIDTHxHEIGHT"),
    ("--eval-seed", "eval_seed", int, "world seed of the segmentation set"),
    ("--eval-iters", "eval_iters", int, "head training iterations"),
    ("--eval-batch", "eval_batch", int, "head training batch"),
    ("--eval-crop", "eval_crop", _HXW, "head training crop HEIGHTxWIDTH, height first (eval seg --crop)"),
    ("--eval-lr", "eval_lr", float, "head base learning rate"),
    ("--eval-device", "eval_device", str, "device of the evaluations (cpu, cuda)"),
    ("--eval-workers", "eval_workers", int, "data-loading workers of the head training"),
    ("--eval-walltime", "eval_walltime_s", _DUR, f"walltime of each evaluation run ({_UNITS})"),
    ("--prop-videos", "prop_videos", int, "held-out videos for label propagation"),
    ("--prop-frames", "prop_frames", int, "frames per propagation video (distances 1..N-1)"),
    ("--prop-size", "prop_size", _SIZE, "propagation frame WIDTHxHEIGHT"),
    ("--prop-seed", "prop_seed", int, "world seed of the propagation videos"),
    (
        "--scheduler",
        "scheduler",
        click.Choice(("local", "slurm", "pbs", "sge", "pjm")),
        "the launcher's scheduler for every run",
    ),
    ("--cluster", "cluster", str, "launcher cluster profile (default: the scheduler's generic one)"),
    ("--profile-dir", "profile_dir", str, "directory of user cluster profiles"),
    ("--group", "group", str, "group/project/account to charge (launcher --group)"),
    ("--queue", "queue", str, "queue/partition (launcher --queue)"),
    ("--gpus", "gpus", int, "GPUs per pretraining (0 = one CPU rank); evaluations get 1 (or 0)"),
    ("--jobs", "jobs", int, "local scheduler: runs at once on this machine"),
    ("--max-running", "max_running", int, "batch schedulers: runs of one array job at once (0 = no cap)"),
    ("--poll", "poll_s", _DUR, f"time between looks at the run directories ({_UNITS})"),
]


def _options(f):
    opts = [
        click.option("--out", default="reproduce_out", show_default=True, help="output folder"),
        click.option(
            "--profile",
            type=click.Choice(tuple(PROFILES)),
            default="cpu",
            show_default=True,
            help="defaults for this machine (cpu: resnet18, 128-px views) or one GPU per pretraining "
            "(gpu: resnet50, 224-px views, 10-minute box)",
        ),
    ]
    for flag, _, typ, text in OPTIONS:
        opts.append(click.option(flag, type=typ, default=None, help=text + " [default: the profile's]"))
    opts += [
        click.option(
            "--train-set",
            multiple=True,
            metavar="KEY=VALUE",
            help="extra pretraining override (repeatable), e.g. optim.base_lr=0.5",
        ),
        click.option("--no-wait", is_flag=True, help="submit what is ready, write the table so far, and exit"),
        click.option("--dry-run", is_flag=True, help="print every run's submit command; write and submit nothing"),
    ]
    for option in reversed(opts):
        f = option(f)
    return f


def config_from_args(a) -> ReproduceConfig:
    """The ReproduceConfig of parsed options: the profile's defaults, then every option given."""
    d = profile_defaults(a.profile)
    for flag, name, _, _ in OPTIONS:
        v = getattr(a, flag[2:].replace("-", "_"))
        if v is not None:
            d[name] = tuple(v) if isinstance(v, (list, tuple)) else v
    if "none" in d["deeplab_rows"]:
        d["deeplab_rows"] = ()
    if d["data_seed"] == d["eval_seed"]:
        raise UserError(
            f"--eval-seed {d['eval_seed']}: must differ from --data-seed so the pretraining videos "
            f"and the evaluation scenes are disjoint"
        )
    d.update(out=a.out, train_overrides=tuple(a.train_set), wait=not a.no_wait, dry_run=a.dry_run)
    return ReproduceConfig(**d)


@cli_command(
    "reproduce",
    epilog="Examples: python -m pixpro_of reproduce --out reproduce_out (make reproduce); "
    "python -m pixpro_of reproduce --profile gpu --dry-run; "
    "python -m pixpro_of reproduce --profile gpu --scheduler slurm --gpus 8 --out rep; "
    "python -m pixpro_of reproduce --rows random,k6-noflow --seeds 0 --steps 50 "
    "--time-box 2m --out tiny",
)
@_options
@click.pass_context
def command(ctx: click.Context, **opts) -> int:
    """The reproduction on the synthetic world: the seed's table with its controls, every run through the launcher."""
    return run(
        config_from_args(SimpleNamespace(**opts)),
        command=shlex.join(["python", "-m", "pixpro_of", "reproduce", *words(ctx)]),
    )


def parse_args(argv: Sequence[str] = ()) -> SimpleNamespace:
    """The options of ``argv`` as ``reproduce`` parses them."""
    with command.make_context("reproduce", list(argv)) as ctx:
        return SimpleNamespace(**{k: v for k, v in ctx.params.items()})


def main(argv: Sequence[str] = ()) -> int:
    return call(command, argv, "pixpro_of reproduce")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
