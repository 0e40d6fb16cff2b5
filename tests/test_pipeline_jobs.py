"""``launcher pipeline`` through the local scheduler: pack -> flow -> verify -> train -> convert -> eval as
dependent jobs on the synthetic world. A stage that fails leaves the later ones cancelled (never
run) and ``status`` names it; ``resume`` continues from the first unfinished stage; the pipeline's
shards, weights and evaluation equal those of the same commands run one by one by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

PY = sys.executable
pytestmark = [pytest.mark.mpi, pytest.mark.slow]
TRAIN = ["run.max_steps=3", "run.deterministic=true", "data.num_workers=0", "log.tensorboard=false"]
PROBE = [
    "--arch",
    "resnet18",
    "--iters",
    "3",
    "--batch",
    "2",
    "--crop",
    "64x64",
    "--warmup-iters",
    "1",
    "--max-val",
    "2",
    "--workers",
    "0",
]


def run(env, cwd, *argv, timeout=600):
    r = subprocess.run([*map(str, argv)], env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (argv, r.stdout[-1000:], r.stderr[-2000:])
    return r


def wait_for(pred, timeout, what, pipe=None):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.3)
    extra = ""
    if pipe is not None:
        for log in sorted(Path(pipe).glob("*/logs/run.log")):
            extra += f"\n==== {log}\n{log.read_text()[-1500:]}"
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")


def stopped(pipe, stage):
    p = Path(pipe) / stage / "job" / "stopped"
    return p.read_text().strip() if p.exists() else None


def checksums(manifest):
    m = json.loads(Path(manifest).read_text())
    return [(Path(s["file"]).name, s.get("size"), s.get("crc32") or s.get("checksum")) for s in m["shards"]]


def weights(run_dir):
    import torch

    latest = (Path(run_dir) / "checkpoints" / "latest").read_text().strip()
    return torch.load(Path(run_dir) / "checkpoints" / latest, map_location="cpu", weights_only=False)


def test_pipeline_fails_cancels_resumes_and_matches_the_commands_by_hand(tmp_path, mpi_env):
    env = dict(mpi_env, PATH=f"{Path(PY).parent}:{mpi_env['PATH']}")
    videos, world = tmp_path / "bdd", tmp_path / "eval_world"
    (videos / "videos" / "train").mkdir(parents=True)  # no video yet: pack fails
    run(
        env,
        tmp_path,
        PY,
        "-m",
        "pixpro_of",
        "synth",
        "--out",
        world,
        "--videos",
        "3",
        "--video-frames",
        "3",
        "--size",
        "128x64",
        "--format",
        "cityscapes",
        "--val-videos",
        "1",
        "--seed",
        "1000",
        "--quiet",
    )
    pipe = tmp_path / "pipe"
    t0 = time.time()
    r = run(
        env,
        tmp_path,
        PY,
        "-m",
        "launcher.cli",
        "pipeline",
        "--scheduler",
        "local",
        "--gpus",
        "0",
        "--frames",
        "2",
        "--preset",
        "cpu_small",
        "--videos",
        videos,
        "--flow-model",
        "dis",
        "--dir",
        pipe,
        "--eval-data",
        world,
        "--eval-mode",
        "linear",
        "--eval-args",
        " ".join(PROBE),
        *TRAIN,
    )
    assert [l.split(": ")[1] for l in r.stderr.splitlines() if l.startswith("launcher: stage")] == [
        f"stage {s}" for s in ("pack", "flow", "verify", "train", "convert", "eval")
    ]
    # pack fails; every later stage is cancelled and never runs
    wait_for(
        lambda: all(stopped(pipe, s) for s in ("pack", "flow", "verify", "train", "convert", "eval")),
        120,
        "the failed pack to cancel the later stages",
        pipe,
    )
    assert stopped(pipe, "pack").startswith("pack command exited ")
    assert stopped(pipe, "train") == f"cancelled: stage pack did not finish ({stopped(pipe, 'pack')})"
    for stage in ("flow", "verify", "train", "convert", "eval"):
        assert not (pipe / stage / "logs" / "run.log").exists(), f"{stage} must never start"
    status = run(env, tmp_path, PY, "-m", "launcher.cli", "status", pipe).stdout
    assert (
        "pack     failed: pack command exited" in status and "train    cancelled: stage pack did not finish" in status
    )
    # the videos arrive; resume runs every stage from the first unfinished one
    run(
        env,
        tmp_path,
        PY,
        "-m",
        "pixpro_of",
        "synth",
        "--out",
        tmp_path / "bddsrc",
        "--videos",
        "8",
        "--video-frames",
        "6",
        "--size",
        "128x64",
        "--format",
        "bdd",
        "--seed",
        "3",
        "--quiet",
    )
    for f in (tmp_path / "bddsrc").rglob("*"):
        if f.is_file():
            dst = videos / f.relative_to(tmp_path / "bddsrc")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
    t1 = time.time()
    run(env, tmp_path, PY, "-m", "launcher.cli", "resume", pipe)
    wait_for(
        lambda: (pipe / "eval" / "done").exists() or stopped(pipe, "eval") is not None,
        300,
        "the resumed pipeline to finish",
        pipe,
    )
    pipeline_s = time.time() - t1
    status = run(env, tmp_path, PY, "-m", "launcher.cli", "status", pipe).stdout
    assert [l.split()[:2] for l in status.splitlines()[1:]] == [
        [s, "done"] for s in ("pack", "flow", "verify", "train", "convert", "eval")
    ]
    # the same commands, one by one, by hand
    hand = tmp_path / "hand"
    hand.mkdir()
    t2 = time.time()
    run(
        env,
        hand,
        PY,
        "-m",
        "hdf5_tools.cli",
        "pack",
        videos,
        hand / "shards",
        "--nodes",
        "1",
        "-j",
        "2",
        "--no-progress",
    )
    run(
        env,
        hand,
        "mpirun",
        "-np",
        "2",
        PY,
        "-m",
        "hdf5_tools.cli",
        "flow",
        hand / "shards",
        "--model",
        "dis",
        "--no-progress",
    )
    run(
        env,
        hand,
        "mpirun",
        "-np",
        "2",
        PY,
        "-m",
        "pixpro_of",
        "train",
        "--run-dir",
        hand / "train",
        "--config",
        "cpu_small",
        "data.k=2",
        "dist.backend=horovod",
        *TRAIN,
        f"data.shards=[{hand / 'shards' / 'manifest.json'}]",
    )
    run(
        env,
        hand,
        PY,
        "-m",
        "pixpro_of",
        "eval",
        "seg",
        "--backbone",
        hand / "train",
        "--out",
        hand / "eval",
        "--data",
        world,
        "--mode",
        "linear",
        *PROBE,
    )
    hand_s = time.time() - t2
    assert checksums(pipe / "pack" / "shards" / "manifest.json") == checksums(hand / "shards" / "manifest.json")
    import torch

    a, b = weights(pipe / "train"), weights(hand / "train")
    assert a["step"] == b["step"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]), "bit-identical weights"
    got = json.loads((pipe / "eval" / "eval" / "scores.json").read_text())["mIoU"]
    assert got == json.loads((hand / "eval" / "scores.json").read_text())["mIoU"]
    assert (pipe / "convert" / "encoder_d2.pkl").stat().st_size > 1000
    print(
        f"pipeline (local): failed pack + cancellations {t1 - t0:.1f} s; resumed pipeline {pipeline_s:.1f} s; "
        f"the same stages by hand {hand_s:.1f} s (without convert)"
    )
