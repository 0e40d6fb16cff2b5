"""Real Grid Engine (Debian's 8.1.9) on this machine, driven through the launcher with the generic
``sge`` profile as shipped (parallel environment ``mpi``, ``-notify``, a chain of ``-hold_jid``
links), training the real model (cpu_small, 2 Horovod ranks under mpirun).

- A deadline stop (the job's walltime minus the profile's margin) ends a link with a checkpoint;
  the pre-submitted ``-hold_jid`` link, and links the jobs submit themselves, resume it; the final
  weights equal those of the same training run uninterrupted.
- ``launcher cancel`` (stop marker + ``qdel``) on a ``-notify`` job: Grid Engine sends SIGUSR2
  before the kill, the trainer checkpoints at the next step, the job exits cleanly without
  continuing the chain, and ``launcher resume`` finishes the run to the same weights.

The module fixture installs the cell when missing (``.ci/gridengine/install.sh``), starts
sge_qmaster and sge_execd (``.ci/gridengine/start.sh``) and stops, by PID, the ones it started.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_clusters import (TOTAL_STEPS, TRAIN_ARGS, assert_same_weights, checkpoint_steps,  # noqa: E402
                            dump_run, event_texts, grid_engine, metrics_step, reference_run, script_times,
                            wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.mpi]


@pytest.fixture(scope="module")
def sge():
    with grid_engine() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory.mktemp("sge-reference"))


def launcher(sge, *args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], env=sge.env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout)


def submit(sge, run_dir: Path, name: str, *options: str, extra=(), command="submit"):
    # The generic profile as shipped, CPU ranks (--gpus 0: 2 ranks on one node, -pe mpi 2).
    out = launcher(sge, command, "--scheduler", "sge", "--gpus", "0", "--preset", "cpu_small",
                   "--python", sys.executable, "--name", name, "--run-dir", str(run_dir), *options,
                   *TRAIN_ARGS, *extra, cwd=run_dir.parent)
    assert out.returncode == 0, out.stderr
    if command == "render":
        return out.stdout
    ids = out.stdout.split()
    assert ids and all(i.isdigit() for i in ids), out.stdout
    return ids


def job_listed(sge, job_id: str) -> bool:
    return any(line.split()[:1] == [job_id] for line in sge.run("qstat", check=False).stdout.splitlines())


def metrics_steps(run_dir: Path):
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows if r and r[0].isdigit()]


def test_sge_hold_jid_chain_through_deadline_stops_ends_with_uninterrupted_weights(sge, reference, tmp_path):
    run_dir = tmp_path / "chain"
    # A 4-minute walltime: the job script gives the trainer a deadline 3 minutes after the job
    # starts; the trainer's own stop.margin_s is chosen from the reference run's timing so that
    # it stops at that deadline about halfway through the 16 steps, and every later link (the
    # pre-submitted one, then any the jobs submit themselves) resumes from its checkpoint.
    times = script_times(submit(sge, run_dir, "sge-chain", "--walltime", "00:04:00", command="render"))
    margin = reference.stop_margin_for(times["LAUNCHER_WALLTIME_S"], times["LAUNCHER_MARGIN_S"])
    t0 = time.time()
    ids = submit(sge, run_dir, "sge-chain", "--walltime", "00:04:00", "--chain", "2",
                 extra=[f"stop.margin_s={margin}"])
    assert len(ids) == 2
    # The second link waits for the first through -hold_jid.
    detail = sge.run("qstat", "-j", ids[1], check=False).stdout
    assert any(l.split(":")[0].strip() == "jid_predecessor_list" and ids[0] in l for l in detail.splitlines()) \
        or not job_listed(sge, ids[0]), detail
    try:
        wait_for(lambda: (run_dir / "done").exists() and event_texts(run_dir)[-1:] == ["finished"], 420,
                 "the chain to finish the run")
        wait_for(lambda: not any(job_listed(sge, i) for i in ids), 60, "the chain's jobs to leave the queue")
    except AssertionError:
        print(dump_run(run_dir, sge.run("qstat", "-f", check=False).stdout))
        raise
    elapsed = time.time() - t0
    texts = event_texts(run_dir)
    print(f"sge chain: {elapsed:.0f} s; events:\n" + "\n".join(texts))
    assert any(t.startswith("checkpointed: timeout 1 of") for t in texts), texts
    assert "chain: link 1 is already queued" in texts
    starts = [t for t in texts if t.startswith("start restart=")]
    assert len(starts) >= 2
    # Every job that stopped at its deadline left a checkpoint the next one resumed from: each
    # step ran exactly once, in order, across the links.
    assert metrics_steps(run_dir) == list(range(1, TOTAL_STEPS + 1))
    assert (run_dir / "job" / "timeout.count").read_text().strip() == str(len(starts) - 1)
    jobs = [l.split("\t") for l in (run_dir / "job" / "jobs.tsv").read_text().splitlines()]
    assert [j[3] for j in jobs[:2]] == ids
    if len(starts) > 2:  # later links were submitted by the jobs themselves
        assert [j[1] for j in jobs[2:]] == ["extend"] * (len(starts) - 2), jobs
    assert_same_weights(run_dir, reference, "a -hold_jid chain with deadline stops")
    status = launcher(sge, "status", str(run_dir), cwd=tmp_path)
    assert status.returncode == 0 and "state    done" in status.stdout, status.stdout + status.stderr


def test_sge_notify_qdel_stops_the_run_cleanly_and_resume_finishes_it(sge, reference, tmp_path):
    run_dir = tmp_path / "cancel"
    (job_id,) = submit(sge, run_dir, "sge-cancel", "--walltime", "00:30:00")
    try:
        wait_for(lambda: metrics_step(run_dir) >= 3, 240, "step 3 of the first job")
        # The launcher's way to stop a run: the stopped marker, then qdel (with -notify, Grid
        # Engine sends SIGUSR2 and waits the queue's notify time before SIGKILL).
        out = launcher(sge, "cancel", str(run_dir), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "qdel" in out.stderr
        wait_for(lambda: not job_listed(sge, job_id), 90, "the cancelled job to end")
    except AssertionError:
        print(dump_run(run_dir, sge.run("qstat", "-f", check=False).stdout))
        raise
    texts = event_texts(run_dir)
    print("sge cancel: events:\n" + "\n".join(texts))
    stopped_at = metrics_step(run_dir)
    assert 3 <= stopped_at < TOTAL_STEPS, texts
    # A checkpoint at the step where the signal arrived, not an older periodic one.
    assert checkpoint_steps(run_dir)[-1] == stopped_at
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}.pt"
    assert any(t.startswith("checkpointed; the run was stopped (cancelled by the user)") for t in texts), texts
    assert "launcher: received SIGUSR2" in (run_dir / "logs" / "run.log").read_text()
    assert not (run_dir / "done").exists()
    jobs = (run_dir / "job" / "jobs.tsv").read_text().splitlines()
    assert len(jobs) == 1, "a cancelled run submits no further link"
    status = launcher(sge, "status", str(run_dir), "--min-interval", "0", cwd=tmp_path)
    assert status.returncode == 0 and "stopped: cancelled by the user" in status.stdout, status.stdout

    out = launcher(sge, "resume", str(run_dir), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (resumed,) = out.stdout.split()
    try:
        wait_for(lambda: (run_dir / "done").exists() and event_texts(run_dir)[-1:] == ["finished"], 300,
                 "the resumed run to finish")
    except AssertionError:
        print(dump_run(run_dir, sge.run("qstat", "-f", check=False).stdout))
        raise
    assert metrics_steps(run_dir) == list(range(1, TOTAL_STEPS + 1)), "the resumed job lost or repeated steps"
    assert_same_weights(run_dir, reference, "qdel -notify and launcher resume")
    wait_for(lambda: not job_listed(sge, resumed), 60, "the resumed job to leave the queue")
