"""The trainer under real `mpirun -np 2` with each backend (issue 7, trainer level).

Uses the shipped CPU preset on the synthetic world: 16 videos, global batch 4, 4 steps per epoch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

COMMON = ["--config", "cpu_small", "run.deterministic=true", "data.num_workers=0", "log.tensorboard=false"]


def _train_cmd(run_dir: Path, np_: int, backend: str, *extra: str):
    py = [sys.executable, "-m", "pixpro_of", "train", "--run-dir", str(run_dir), *COMMON, *extra]
    if np_ == 1:
        return py + ["dist.backend=single"]
    return ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_)] + py + [f"dist.backend={backend}"]


def _final_model(run_dir: Path) -> dict:
    ckdir = run_dir / "checkpoints"
    name = (ckdir / "latest").read_text().strip()
    return torch.load(ckdir / name, map_location="cpu", weights_only=True)


def _run(cmd, env, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _rank_pids(root_pid: int) -> dict:
    """{rank: pid} of the processes below ``root_pid`` that Open MPI started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != root_pid:
            continue
        for item in env:
            if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                found[int(item.split(b"=", 1)[1])] = int(entry.name)
    return found


def _wait_for_step(run_dir: Path, step: int, proc, timeout=240) -> None:
    csv = run_dir / "metrics.csv"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        if csv.exists():
            lines = csv.read_text().splitlines()[1:]
            if lines and int(lines[-1].split(",")[0]) >= step:
                return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_two_ranks_match_one_rank_at_same_global_batch(backend, tmp_path, mpi_env):
    one, two = tmp_path / "one", tmp_path / "two"
    res = _run(_train_cmd(one, 1, backend, "run.epochs=2"), mpi_env)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _run(_train_cmd(two, 2, backend, "run.epochs=2"), mpi_env)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _final_model(one), _final_model(two)
    assert a["step"] == b["step"] == 8
    assert b["world_size"] == 2
    for k, v in a["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(b["model"][k], v), k


@pytest.mark.mpi
@pytest.mark.slow
def test_kill_and_resume_under_two_ranks_is_bit_identical(tmp_path, mpi_env):
    ref, run = tmp_path / "ref", tmp_path / "killed"
    extra = ("run.epochs=3", "checkpoint.every_steps=2")
    res = _run(_train_cmd(ref, 2, "horovod", *extra), mpi_env)
    assert res.returncode == 0, res.stderr[-3000:]
    proc = subprocess.Popen(
        _train_cmd(run, 2, "horovod", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=mpi_env,
        start_new_session=True,
    )
    try:
        _wait_for_step(run, 7, proc)
    finally:
        # Open MPI gives each rank its own process group: kill the ranks and mpirun, as a
        # scheduler killing the job's cgroup would. No process gets a chance to checkpoint.
        for pid in list(_rank_pids(proc.pid).values()) + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=60)
    assert not (run / "done").exists()
    res = _run(_train_cmd(run, 2, "horovod", *extra), mpi_env)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _final_model(ref), _final_model(run)
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), f"{k} differs after kill -9 + resume"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            if torch.is_tensor(sa[key]):
                assert torch.equal(sa[key], sb[key])


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_signal_to_rank1_only_stops_every_rank_at_the_same_step(backend, tmp_path, mpi_env):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(run, 2, backend, "run.epochs=20"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=mpi_env,
        start_new_session=True,
    )
    try:
        _wait_for_step(run, 2, proc)
        ranks = _rank_pids(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGUSR2)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            for pid in list(_rank_pids(proc.pid).values()) + [proc.pid]:
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 75, out[-3000:]
    ck = _final_model(run)
    assert 2 <= ck["step"] < 80
    import re

    logs = run / "logs"
    r0 = re.findall(r"stopping at step (\d+): (.*)", (logs / "train.log").read_text())
    r1 = re.findall(r"stopping at step (\d+): (.*)", (logs / "train.rank1.log").read_text())
    assert r0 and r1, "both ranks must log their stop"
    assert int(r0[-1][0]) == int(r1[-1][0]) == ck["step"], (r0, r1, ck["step"])
    assert r0[-1][1] == "requested on another rank"
    assert "SIGUSR2" in r1[-1][1]


@pytest.mark.mpi
@pytest.mark.slow
def test_resume_with_a_different_world_size_continues_the_same_sample_order(tmp_path, mpi_env):
    """A 1-rank run stopped mid-epoch and resumed on 2 ranks ends like the uninterrupted 1-rank run.

    Same global batch: the interleaved sampler gives the same global sample sequence and every
    sample's RNG is keyed by its global position, so only floating-point summation order differs.
    """
    ref, run = tmp_path / "ref", tmp_path / "resized"
    extra = ("run.epochs=3",)
    res = _run(_train_cmd(ref, 1, "single", *extra), mpi_env)
    assert res.returncode == 0, res.stderr[-3000:]
    proc = subprocess.Popen(
        _train_cmd(run, 1, "single", *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mpi_env
    )
    _wait_for_step(run, 5, proc)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-2000:]
    stopped_at = _final_model(run)["step"]
    assert 5 <= stopped_at < 12
    res = _run(_train_cmd(run, 2, "horovod", *extra), mpi_env)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _final_model(ref), _final_model(run)
    assert a["step"] == b["step"] == 12 and b["world_size"] == 2
    for k, v in a["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
