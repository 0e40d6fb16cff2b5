"""``python -m pixpro_of demo --out DIR``: the main job on the embedded default (the synthetic world)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import click

from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.runs import RunLayout

MARKER = ".pixpro_demo"


def _stage(name: str, cmd: List[str], out: Path, env: Dict[str, str]) -> float:
    t0 = time.time()
    log = out / "logs" / f"{name}.log"
    shown = " ".join(str(c) for c in cmd).replace(str(out) + "/", "")
    print(f"[demo] {name}: {shown}", flush=True)
    with open(log, "w") as f:
        f.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        f.flush()
        rc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=out, env=env).returncode
    dt = time.time() - t0
    if rc != 0:
        tail = log.read_text().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise UserError(f"stage {name!r} failed with exit code {rc}; full log: {log}")
    print(f"[demo] {name}: ok in {dt:.1f}s", flush=True)
    return dt


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UserError(f"--out {out}: exists and is not a previous demo output; choose another folder")
        shutil.rmtree(out)
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by python -m pixpro_of demo; the next demo run replaces this folder\n")
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create ({exc.strerror})") from None


@cli_command("demo", epilog="Example: python -m pixpro_of demo --out demo_out --np 2 (make demo)")
@click.option("--out", default="demo_out", show_default=True, help="output folder, replaced on each run")
@click.option("--np", "np_", type=int, default=2, show_default=True, help="MPI ranks for flow and training")
@click.option("--videos", type=int, default=16, show_default=True, help="pretraining videos")
@click.option("--video-frames", type=int, default=12, show_default=True, help="frames per video (k = 6 needs >= 6)")
@click.option("--size", default="256x128", show_default=True, help="frame size WIDTHxHEIGHT (passed to synth --size)")
@click.option("--epochs", type=int, default=12, show_default=True, help="pretraining epochs")
@click.option("--probe-iters", type=int, default=150, show_default=True, help="linear-probe iterations")
def command(out, np_, videos, video_frames, size, epochs, probe_iters) -> int:
    """The main job on the synthetic world, end to end: synth, pack, flow, train, pictures, convert, probe."""
    args = SimpleNamespace(
        out=out, np=np_, videos=videos, video_frames=video_frames, size=size, epochs=epochs, probe_iters=probe_iters
    )
    if args.np < 1 or args.videos < 2 or args.video_frames < 6 or args.epochs < 2 or args.probe_iters < 1:
        raise UserError("need --np >= 1, --videos >= 2, --video-frames >= 6, --epochs >= 2, --probe-iters >= 1")
    out = Path(args.out).resolve()
    _prepare(out)

    py = sys.executable
    bindir = str(Path(py).parent)
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    mpirun = ["mpirun", "-np", str(args.np)]
    t0 = time.time()
    times: Dict[str, float] = {}

    def stage(name: str, cmd: List[str]) -> None:
        times[name] = _stage(name, cmd, out, env)

    stage(
        "synth-pretrain",
        [
            py,
            "-m",
            "pixpro_of",
            "synth",
            "--out",
            out / "world",
            "--videos",
            args.videos,
            "--video-frames",
            args.video_frames,
            "--size",
            args.size,
            "--format",
            "bdd",
            "--seed",
            0,
            "--quiet",
        ],
    )
    stage(
        "synth-eval",
        [
            py,
            "-m",
            "pixpro_of",
            "synth",
            "--out",
            out / "eval_world",
            "--videos",
            6,
            "--video-frames",
            6,
            "--size",
            args.size,
            "--format",
            "cityscapes",
            "--val-videos",
            2,
            "--seed",
            1000,
            "--quiet",
        ],
    )
    stage(
        "pack",
        [
            py,
            "-m",
            "hdf5_tools.cli",
            "pack",
            out / "world",
            out / "shards",
            "--nodes",
            1,
            "--split",
            "train",
            "--no-progress",
        ],
    )
    stage("flow", mpirun + [py, "-m", "hdf5_tools", "flow", out / "shards", "--model", "dis", "--no-progress"])
    shards = sorted((out / "shards").glob("*.h5"))
    stage("verify", [py, "-m", "hdf5_tools.cli", "verify", *shards, "--deep"])
    stage(
        "train",
        [
            py,
            "-m",
            "launcher.cli",
            "submit",
            "--scheduler",
            "local",
            "--gpus",
            0,
            "--frames",
            6,
            "--preset",
            "cpu_small",
            "--data",
            out / "shards" / "manifest.json",
            "--run-dir",
            out / "run",
            "--python",
            py,
            "--wait",
            f"run.epochs={args.epochs}",
        ],
    )
    (out / "pictures").mkdir(exist_ok=True)
    first_video = json.loads((out / "shards" / "manifest.json").read_text())["shards"][0]["videos"][0]
    first_video = first_video["name"] if isinstance(first_video, dict) else first_video
    stage(
        "viz-pairs",
        [
            py,
            "-m",
            "pixpro_of",
            "viz",
            "pairs",
            "--shards",
            *shards,
            "--video",
            0,
            "--t",
            0,
            "--frames",
            6,
            "--image-size",
            128,
            "--seed",
            3,
            "--out",
            out / "pictures" / "positive_pairs.png",
        ],
    )
    stage(
        "viz-flow",
        [
            py,
            "-m",
            "hdf5_tools",
            "viz",
            shards[0],
            "--video",
            first_video,
            "--t",
            0,
            "--frames",
            6,
            "--mask",
            "both",
            "--out",
            out / "pictures" / "flow",
        ],
    )
    stage("convert-d2", [py, "-m", "pixpro_of", "convert", out / "run", "--to", "detectron2", out / "encoder_d2.pkl"])
    stage("convert-tv", [py, "-m", "pixpro_of", "convert", out / "run", "--to", "torchvision", out / "encoder_tv.pth"])
    probe = [
        "--data",
        out / "eval_world",
        "--mode",
        "linear",
        "--arch",
        "resnet18",
        "--iters",
        args.probe_iters,
        "--batch",
        4,
        "--crop",
        "128x128",
        "--warmup-iters",
        10,
        "--lr",
        0.05,
        "--seed",
        0,
    ]
    stage(
        "eval-pretrained",
        [py, "-m", "pixpro_of", "eval", "seg", "--backbone", out / "run", "--out", out / "eval" / "pretrained", *probe],
    )
    stage(
        "eval-random",
        [py, "-m", "pixpro_of", "eval", "seg", "--backbone", "random", "--out", out / "eval" / "random", *probe],
    )

    scores = {name: json.loads((out / "eval" / name / "scores.json").read_text()) for name in ("pretrained", "random")}
    latest = RunLayout(out / "run").latest_checkpoint()
    lines = [
        "# pixpro_of demo",
        "",
        f"Synthetic world: {args.videos} videos x {args.video_frames} frames at {args.size} (DIS flow), "
        f"PixPro + flow k = 6, ResNet-18, {args.epochs} epochs on {args.np} CPU ranks (Horovod over mpirun).",
        "",
        "| backbone (frozen) | linear-probe mIoU (%) |",
        "|---|---|",
        f"| random init | {scores['random']['mIoU']:.2f} |",
        f"| PixPro + flow (k = 6) | {scores['pretrained']['mIoU']:.2f} |",
        "",
        "| what | where |",
        "|---|---|",
        f"| checkpoint | {latest.relative_to(out)} |",
        "| run directory (config, metrics.csv, TensorBoard, logs) | run/ |",
        "| exported encoder | encoder_d2.pkl (detectron2), encoder_tv.pth (torchvision) |",
        "| pictures | pictures/positive_pairs.png, pictures/flow/, eval/*/predictions.png |",
        "| scores | eval/pretrained/scores.json, eval/random/scores.json |",
        "| stage logs | logs/ |",
        "",
        f"Total {time.time() - t0:.0f} s: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()),
        "",
    ]
    (out / "summary.md").write_text("\n".join(lines))
    print("\n".join(line for line in lines[2:]))
    print(f"[demo] everything is under {out} (summary: {out / 'summary.md'})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "pixpro_of demo")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
