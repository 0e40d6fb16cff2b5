"""launcher.supervise: a stop signal to the rank launcher, to the supervisor, or to every process
at once ends in a checkpoint on every rank and exit 75, under real mpirun, horovodrun and torchrun.
Without the supervisor, SIGTERM to mpirun aborts the job (exit 1, ranks killed): that contrast is
tested too, so the test fails if the supervisor stops mattering."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import supervise

HERE = Path(__file__).resolve().parent
RANK = HERE / "dist_workers" / "stop_rank.py"
ROOT = HERE.parent

pytestmark = pytest.mark.mpi


def _env(mpi_env):
    return dict(mpi_env, PYTHONPATH=str(ROOT))


def _start(argv, env, tmp_path, new_session=True):
    return subprocess.Popen(
        argv,
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )


def _wait_up(out: Path, n: int, proc, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if len(list(out.glob("up*"))) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stdout.read()}")
        time.sleep(0.1)
    raise AssertionError("ranks did not start")


def _pid_named(root: int, name: str) -> int:
    table = supervise._proc_table()
    for pid in supervise._descendants(root, table):
        if table[pid][1] == name or supervise._base(table[pid][2]) == name:
            return pid
    raise AssertionError(f"no {name} below {root}")


def _stopped(out: Path, n: int):
    files = sorted(out.glob("rank*.txt"))
    assert len(files) == n, f"{len(files)} of {n} ranks checkpointed"
    return [f.read_text().split() for f in files]


MPIRUN = ["mpirun", "-np", "2", "--oversubscribe", "-bind-to", "none"]


def test_sigterm_to_plain_mpirun_aborts_the_ranks(mpi_env, tmp_path):
    """The failure the supervisor exists for: mpirun answers SIGTERM by killing the ranks."""
    p = _start([*MPIRUN, sys.executable, str(RANK), str(tmp_path)], _env(mpi_env), tmp_path)
    _wait_up(tmp_path, 2, p)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    assert rc != 75
    assert len(list(tmp_path.glob("rank*.txt"))) < 2  # not every rank got to its checkpoint


@pytest.mark.parametrize("target", ["launcher", "supervisor", "everyone"])
def test_stop_under_mpirun_checkpoints_every_rank_and_exits_75(target, mpi_env, tmp_path):
    argv = [
        sys.executable,
        "-m",
        "launcher.supervise",
        "--shield",
        "--",
        *MPIRUN,
        sys.executable,
        str(RANK),
        str(tmp_path),
    ]
    p = _start(argv, _env(mpi_env), tmp_path)
    _wait_up(tmp_path, 2, p)
    t0 = time.time()
    if target == "launcher":
        os.kill(_pid_named(p.pid, "mpirun"), signal.SIGTERM)
    elif target == "supervisor":
        p.send_signal(signal.SIGTERM)
    else:  # SLURM's requeue/preemption and PBS's qdel: SIGTERM to every process of the job
        os.killpg(p.pid, signal.SIGTERM)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 75, out
    assert time.time() - t0 < 20
    stops = _stopped(tmp_path, 2)
    assert all(s[1] in ("SIGUSR2", "SIGTERM") for s in stops), stops
    assert "supervise: stop requested" in out


def test_exit_codes_pass_through_without_a_stop(mpi_env, tmp_path):
    env = _env(mpi_env)
    ok = subprocess.run(
        [sys.executable, "-m", "launcher.supervise", "--shield", "--", sys.executable, "-c", "import sys; sys.exit(0)"],
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.supervise",
            "--shield",
            "--",
            *MPIRUN,
            sys.executable,
            str(RANK),
            str(tmp_path),
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 3, bad.stdout + bad.stderr  # a failure is not turned into "resume me"
    usage = subprocess.run(
        [sys.executable, "-m", "launcher.supervise", "--bogus"], env=env, capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1 and "unknown option '--bogus'" in usage.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "launcher.supervise", "--", "no-such-launcher"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 127 and "no-such-launcher: command not found" in missing.stderr


def test_leftovers_of_a_launcher_that_exited_on_its_own_are_ended(mpi_env, tmp_path):
    """mpirun under SLURM leaves the srun of a dead node's daemon behind, and that srun waits for
    SLURM to declare the node down (minutes): the supervisor ends such leftovers after a grace
    period and returns the launcher's own code (tests/test_twonode.py kills a real node)."""
    script = "sleep 300 & echo $! > leftover.pid; exit 3"
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "launcher.supervise", "--shield", "--", "bash", "-c", script],
        env=_env(mpi_env),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.time() - t0
    assert r.returncode == 3, r.stderr
    assert took < supervise.LEFTOVER_GRACE_S + 10, took
    assert "bash exited 3 and left 1 process(es) running" in r.stderr and "sleep (pid" in r.stderr
    pid = int((tmp_path / "leftover.pid").read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the leftover process still runs"


def test_the_shield_blocks_sigterm_in_the_launcher_only(mpi_env, tmp_path):
    """The launcher starts with SIGTERM blocked; the ranks Open MPI starts have it unblocked."""
    script = (
        "import signal; b = signal.pthread_sigmask(signal.SIG_BLOCK, []); "
        "print(signal.SIGTERM in b, signal.SIGUSR2 in b)"
    )
    r = subprocess.run(
        [sys.executable, "-m", "launcher.supervise", "--shield", "--", sys.executable, "-c", script],
        env=_env(mpi_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.split() == ["True", "False"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.supervise",
            "--shield",
            "--",
            "mpirun",
            "-np",
            "1",
            sys.executable,
            "-c",
            script,
        ],
        env=_env(mpi_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr


@pytest.mark.slow
def test_sigterm_to_horovodrun_checkpoints_and_exits_75(mpi_env, tmp_path):
    if not shutil.which("horovodrun", path=mpi_env["PATH"]):
        pytest.skip("horovodrun is not installed")
    argv = [
        sys.executable,
        "-m",
        "launcher.supervise",
        "--shield",
        "--",
        "horovodrun",
        "--mpi",
        "-np",
        "2",
        "--mpi-args=--oversubscribe",
        sys.executable,
        str(RANK),
        str(tmp_path),
    ]
    p = _start(argv, _env(mpi_env), tmp_path)
    _wait_up(tmp_path, 2, p, timeout=120)
    # horovodrun execs "sh -c 'mpirun ...'": the stop goes to that mpirun, not to the shell.
    table = supervise._proc_table()
    horovodrun = [q for q in table if table[q][0] == p.pid][0]
    assert supervise.forward_targets(horovodrun) == [_pid_named(p.pid, "mpirun")]
    os.kill(horovodrun, signal.SIGTERM)  # the process the user started as horovodrun
    out = p.communicate(timeout=90)[0]
    assert p.returncode == 75, out
    _stopped(tmp_path, 2)


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_and_exits_75(mpi_env, tmp_path):
    torchrun = shutil.which("torchrun", path=mpi_env["PATH"])
    if not torchrun:
        pytest.skip("torchrun is not installed")
    argv = [
        sys.executable,
        "-m",
        "launcher.supervise",
        "--shield",
        "--",
        torchrun,
        "--standalone",
        "--nproc-per-node=2",
        "--no-python",
        sys.executable,
        str(RANK),
        str(tmp_path),
    ]
    p = _start(argv, _env(mpi_env), tmp_path)
    _wait_up(tmp_path, 2, p, timeout=120)
    os.kill(_pid_named(p.pid, "torchrun"), signal.SIGTERM)
    out = p.communicate(timeout=90)[0]
    assert p.returncode == 75, out
    _stopped(tmp_path, 2)
