"""Every stage as a job (launcher submit --stage ...): pack, flow, verify, train, convert, eval on the
synthetic world through the local scheduler, compared with the same commands run by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli

PY = sys.executable
pytestmark = [pytest.mark.mpi, pytest.mark.slow]
SYNTH = "synth:videos=4,frames=6,size=128x64,seed=5"


def launcher(env, cwd, *args, timeout=600):
    return subprocess.run(
        [PY, "-m", "launcher.cli", *map(str, args)],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run(env, cwd, *argv, timeout=600):
    r = subprocess.run([*map(str, argv)], env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (argv, r.stderr[-2000:])
    return r


def events(run_dir):
    p = Path(run_dir) / "job" / "events.tsv"
    return [l.split("\t")[3] for l in p.read_text().splitlines()] if p.exists() else []


def checksums(manifest):
    m = json.loads(Path(manifest).read_text())
    return [(Path(s["file"]).name, s.get("size"), s.get("crc32") or s.get("checksum")) for s in m["shards"]]


def submit_stage(env, cwd, stage, run_dir, *args):
    r = launcher(env, cwd, "submit", "--scheduler", "local", "--stage", stage, "--run-dir", run_dir, "--wait", *args)
    log = Path(run_dir) / "logs" / "run.log"
    assert r.returncode == 0, (stage, r.stderr[-1500:], log.read_text()[-3000:] if log.exists() else "")
    assert (Path(run_dir) / "done").exists(), (stage, events(run_dir))
    assert events(run_dir)[-1] == "finished"
    return r


def test_stages_as_jobs_match_the_commands_by_hand(tmp_path, mpi_env):
    env = dict(mpi_env, PATH=f"{Path(PY).parent}:{mpi_env['PATH']}")
    jobs, hand = tmp_path / "jobs", tmp_path / "hand"
    hand.mkdir()
    # by hand: pack, then DIS flow with 2 ranks
    run(
        env,
        hand,
        PY,
        "-m",
        "hdf5_tools.cli",
        "pack",
        SYNTH,
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
    # as jobs: the same commands through the launcher's templates, policy and supervisor
    submit_stage(env, tmp_path, "pack", jobs / "pack", "--videos", SYNTH, "--gpus", "0")
    manifest = jobs / "pack" / "shards" / "manifest.json"
    assert manifest.is_file()
    submit_stage(
        env, tmp_path, "flow", jobs / "flow", "--data", jobs / "pack" / "shards", "--gpus", "0", "--model", "dis"
    )
    assert checksums(manifest) == checksums(hand / "shards" / "manifest.json"), "byte-identical shards"
    submit_stage(env, tmp_path, "verify", jobs / "verify", "--data", manifest, "--require-flows")
    # a finished stage run again is a no-op: the link skips at once
    before = len(events(jobs / "verify"))
    r = subprocess.run(
        [PY, "-m", "launcher.local_runner", "--job-id", "again", str(jobs / "verify" / "job" / "job.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and events(jobs / "verify")[before:] == [
        "start restart=0 host=" + events(jobs / "verify")[before].split("host=")[1],
        "skip: the run is done",
    ]
    # train two steps on the packed world, then convert and evaluate its weights
    submit_stage(
        env,
        tmp_path,
        "train",
        jobs / "train",
        "--data",
        manifest,
        "--gpus",
        "0",
        "--frames",
        "2",
        "--preset",
        "cpu_small",
        "run.max_steps=2",
    )
    submit_stage(env, tmp_path, "convert", jobs / "convert", "--from-run", jobs / "train")
    assert (jobs / "convert" / "encoder_d2.pkl").stat().st_size > 1000
    world = tmp_path / "eval_world"
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
    probe = [
        "--data",
        world,
        "--mode",
        "linear",
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
    submit_stage(env, tmp_path, "eval", jobs / "eval", "--from-run", jobs / "train", "--gpus", "0", "--", *probe)
    by_job = json.loads((jobs / "eval" / "eval" / "scores.json").read_text())
    run(
        env,
        tmp_path,
        PY,
        "-m",
        "pixpro_of",
        "eval",
        "seg",
        "--backbone",
        jobs / "train",
        "--out",
        hand / "eval",
        *probe,
    )
    assert by_job["mIoU"] == json.loads((hand / "eval" / "scores.json").read_text())["mIoU"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--stage", "pack"], "--stage pack reads --videos"),
        (["--stage", "pack", "--videos", "/no/such/bdd"], "--videos /no/such/bdd: no such folder"),
        (["--stage", "flow"], "--stage flow reads --data"),
        (["--stage", "convert", "--from-run", "/no/run"], "--from-run /no/run: not a run directory"),
        (["--stage", "eval", "--gpus", "8", "--from-run", "."], "--stage eval is one process"),
        (["--stage", "nope"], "Invalid value for '--stage'"),
    ],
)
def test_a_stage_without_its_input_is_refused_in_one_line(args, message, capsys, tmp_path):
    (tmp_path / "job").mkdir()
    args = [a if a != "." else str(tmp_path) for a in args]
    rc = cli.main(["render", "--scheduler", "slurm", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_stage_scripts_run_one_process_or_ranks(capsys, tmp_path):
    (tmp_path / "job").mkdir()
    rc = cli.main(
        [
            "render",
            "--scheduler",
            "pbs",
            "--stage",
            "eval",
            "--from-run",
            str(tmp_path),
            "--data-key",
            "x",
            "--",
            "--data",
            "/cs",
            "--mode",
            "linear",
        ]
    )
    out = capsys.readouterr().out
    assert (
        rc == 0 and "launcher_ranks=()" in out and "--deadline" not in out.split("launcher_command=(")[1].split(")")[0]
    )
    # one GPU of a 4-GPU, 32-CPU node: its share of the CPUs, not the whole node
    assert "#PBS -l select=1:ncpus=8:ngpus=1:mpiprocs=1" in out and "LAUNCHER_STAGE=eval" in out
    assert "excl" not in out.split("#PBS -l place=")[1].split("\n")[0]
    assert "eval seg --backbone" in out and "--mode linear" in out
