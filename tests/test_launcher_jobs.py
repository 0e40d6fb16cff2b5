"""launcher end to end, without a cluster: jobs really run.

PBS Pro and PJM through the fake ``qsub``/``qstat``/``qdel``/``pjsub``/``pjstat``/``pjdel`` in
``tests/fake_schedulers`` (they run the script with the variables the real schedulers set), and
the ``local`` scheduler through ``launcher.local_runner``. The trainer is the fixture
``tests/fake_schedulers/fixture_trainer.py`` (same exit codes as the real one). Every run must
end with the state of an uninterrupted run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fake_schedulers"
FIXTURE = FAKES / "fixture_trainer.py"
sys.path.insert(0, str(FAKES))
from fixture_trainer import advance  # noqa: E402

pytestmark = pytest.mark.mpi
TRAINER = f"{sys.executable} {FIXTURE}"


def expected_state(steps):
    v = 0
    for s in range(steps):
        v = advance(v, s)
    return {"step": steps, "value": v}


@pytest.fixture
def env(tmp_path, mpi_env):
    e = dict(mpi_env)
    e["PATH"] = f"{FAKES}:{Path(sys.executable).parent}:{e['PATH']}"
    e["FAKE_SCHED_DIR"] = str(tmp_path / "fakesched")
    e["FAKE_KILL_DELAY"] = "5"
    return e


def launcher(env, cwd, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *map(str, args)],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(pred, timeout, what, run_dir=None):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.2)
    extra = ""
    if run_dir is not None:
        for f in ("job/events.tsv", "logs/run.log"):
            p = Path(run_dir) / f
            extra += f"\n==== {f}\n" + (p.read_text()[-3000:] if p.exists() else "(missing)")
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")


def finished(run_dir):
    ev = Path(run_dir) / "job" / "events.tsv"
    return lambda: (
        ev.exists()
        and (ev.read_text().rstrip().endswith("finished") or "\tstop:" in ev.read_text() or "\tfail:" in ev.read_text())
    )


def jobs_tsv(run_dir):
    return [l.split("\t") for l in (Path(run_dir) / "job" / "jobs.tsv").read_text().splitlines()]


def notify_cmd(tmp_path):
    """A --notify command that records the outcome and when it ran (told(tmp_path) reads it back)."""
    return f'printf "%s|%s|%s\\n" "$LAUNCHER_OUTCOME" "$(date +%s.%N)" "$LAUNCHER_SUMMARY" >> {tmp_path}/told.txt'


def told(tmp_path):
    p = tmp_path / "told.txt"
    return [line.split("|") for line in p.read_text().splitlines()] if p.exists() else []


def calls(env):
    p = Path(env["FAKE_SCHED_DIR"]) / "calls.log"
    return p.read_text().splitlines() if p.exists() else []


def test_pbs_chain_presubmitted_then_extended_by_the_job(env, tmp_path):
    run = tmp_path / "pbs run"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--scheduler",
        "pbs",
        "--gpus",
        "0",
        "--ranks-per-node",
        "2",
        "--chain",
        "2",
        "--name",
        "pbs-chain",
        "--run-dir",
        run,
        "--walltime",
        "00:10:00",
        "--trainer-command",
        TRAINER,
        "steps=9",
        "stop_every=3",
        "step_time=0.05",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["100.fakepbs", "101.fakepbs"]
    wait_for(finished(run), 90, "the chain to finish", run)
    assert json.loads((run / "checkpoints" / "state.json").read_text()) == expected_state(9)
    rows = jobs_tsv(run)
    assert [(k, link) for _, k, link, *_ in rows] == [("submit", "0"), ("chain", "1"), ("extend", "2")]
    assert rows[2][4] == "102.fakepbs"
    submits = [c for c in calls(env) if c.startswith("qsub")]
    assert "-W depend=afterany:100.fakepbs" in submits[1]
    assert "-W depend=afterany:101.fakepbs" in submits[2] and "LAUNCHER_LINK=2" in submits[2]
    events = (run / "job" / "events.tsv").read_text()
    assert "chain: link 1 is already queued" in events and "chain: submitted link 2" in events
    assert (run / "job" / "timeout.count").read_text().strip() == "2"
    steps = [l.split() for l in (run / "steps.log").read_text().splitlines()]
    assert [int(s[0]) for s in steps] == list(range(1, 10))
    assert [s[1] for s in steps] == ["100.fakepbs"] * 3 + ["101.fakepbs"] * 3 + ["102.fakepbs"] * 3

    # status is rate-limited: the second query within --min-interval reuses the answer
    n0 = sum(c.startswith("qstat") for c in calls(env))
    s1 = launcher(env, tmp_path, "status", run)
    s2 = launcher(env, tmp_path, "status", run)
    assert s1.returncode == 0 and "state    done" in s1.stdout and "102.fakepbs  link 2  extend  finished" in s1.stdout
    assert "resumes  2 after timeouts, 0 after preemptions" in s1.stdout
    assert sum(c.startswith("qstat") for c in calls(env)) == n0 + 1
    launcher(env, tmp_path, "status", run, "--min-interval", "0")
    assert sum(c.startswith("qstat") for c in calls(env)) == n0 + 2
    # the same scheduler answers (the ages of the newest step and checkpoint move on with the clock)
    assert [l for l in s2.stdout.splitlines() if l.startswith("job ")] == [
        l for l in s1.stdout.splitlines() if l.startswith("job ")
    ]
    logs = launcher(env, tmp_path, "logs", run, "-n", "0")
    assert logs.stdout.count("launcher: start restart=") == 3 and "fixture: done" in logs.stdout
    lst = launcher(env, tmp_path, "list", tmp_path)
    assert "pbs run" in lst.stdout and "done" in lst.stdout
    again = launcher(env, tmp_path, "submit", "--scheduler", "pbs", "--gpus", "0", "--run-dir", run)
    assert again.returncode == 2 and "finished run" in again.stderr


def test_pjm_step_jobs_continue_the_run(env, tmp_path):
    run = tmp_path / "pjm"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--scheduler",
        "pjm",
        "--gpus",
        "0",
        "--ranks-per-node",
        "2",
        "--run-dir",
        run,
        "--walltime",
        "00:10:00",
        "--group",
        "jh0001",
        "--trainer-command",
        TRAINER,
        "steps=6",
        "stop_every=3",
        "step_time=0.05",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "100_0"
    wait_for(finished(run), 90, "the PJM step jobs to finish", run)
    assert json.loads((run / "checkpoints" / "state.json").read_text()) == expected_state(6)
    # each step job loaded the profile's modules in order (tests/fake_schedulers/module)
    loaded = (Path(env["FAKE_SCHED_DIR"]) / "modules.log").read_text().split()
    assert loaded == ["cuda/10.2.89_440.33.01", "nccl/2.7.3", "gcc/8.4.0", "cudnn/8.2.1", "openmpi/4.0.4"] * 2
    assert [row[3:5] for row in jobs_tsv(run)] == [
        ["100_0", "[INFO] PJM 0000 pjsub Job 100_0 submitted."],
        ["", "[INFO] PJM 0000 pjsub Job 100_1 submitted."],
    ]
    submits = [c for c in calls(env) if c.startswith("pjsub")]
    assert "--sparam jid=100" in submits[1] and "-x LAUNCHER_LINK=1" in submits[1]
    status = launcher(env, tmp_path, "status", run)
    assert "100_1  link 1  extend  finished (not in queue)" in status.stdout


@pytest.mark.slow
def test_pbs_walltime_sigterm_without_warning_signal_resumes(env, tmp_path):
    """PBS has no warning signal: at the walltime the job gets SIGTERM (then SIGKILL); the
    script passes it on, the trainer checkpoints, and the chain continues the run."""
    run = tmp_path / "wall"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--scheduler",
        "pbs",
        "--gpus",
        "0",
        "--ranks-per-node",
        "1",
        "--run-dir",
        run,
        "--walltime",
        "00:00:06",
        "--trainer-command",
        TRAINER,
        "steps=40",
        "step_time=0.2",
        "ignore_deadline=1",
    )
    assert r.returncode == 0, r.stderr
    wait_for(finished(run), 150, "the run to finish across walltime kills", run)
    assert json.loads((run / "checkpoints" / "state.json").read_text()) == expected_state(40)
    events = (run / "job" / "events.tsv").read_text()
    assert "received SIGTERM" in (run / "logs" / "run.log").read_text()
    assert "checkpointed: timeout 1 of 20" in events
    links = {row[2] for row in jobs_tsv(run)}
    assert len(links) >= 2


def test_budget_stops_the_run_and_resume_continues_it(env, tmp_path):
    run = tmp_path / "budget"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--scheduler",
        "pbs",
        "--gpus",
        "0",
        "--ranks-per-node",
        "1",
        "--run-dir",
        run,
        "--walltime",
        "00:10:00",
        "--max-timeouts",
        "1",
        "--mail",
        "me@example.org",
        "--notify",
        notify_cmd(tmp_path),
        "--trainer-command",
        TRAINER,
        "steps=9",
        "stop_every=3",
        "step_time=0.05",
    )
    assert r.returncode == 0, r.stderr
    script = (run / "job" / "job.sh").read_text()
    assert "#PBS -M me@example.org\n#PBS -m ae\n" in script
    wait_for(finished(run), 90, "the timeout budget to stop the run", run)
    assert (run / "job" / "stopped").read_text().strip() == "timeout budget of 1 used up"
    wait_for(lambda: told(tmp_path), 30, "the notify command", run)
    assert [t[0] for t in told(tmp_path)] == ["budget"]
    assert told(tmp_path)[0][2] == f"run {run}: budget (timeout budget of 1 used up) in job 101.fakepbs"
    st = launcher(env, tmp_path, "status", run)
    assert "state    stopped: timeout budget of 1 used up" in st.stdout
    assert json.loads((run / "checkpoints" / "state.json").read_text())["step"] == 6
    rs = launcher(env, tmp_path, "resume", run)
    assert rs.returncode == 0, rs.stderr
    wait_for(lambda: (run / "done").exists() and finished(run)(), 60, "the resumed run", run)
    assert json.loads((run / "checkpoints" / "state.json").read_text()) == expected_state(9)
    assert not (run / "job" / "stopped").exists()
    assert jobs_tsv(run)[-1][1:3] == ["resume", "2"]
    wait_for(lambda: len(told(tmp_path)) == 2, 30, "the second notification", run)
    assert [t[0] for t in told(tmp_path)] == ["budget", "done"], "resume releases the run's next end"
    delay = float(told(tmp_path)[1][1]) - (run / "done").stat().st_mtime
    print(f"notify: {delay:.2f} s from the done marker to the notify command (fake PBS)")
    assert 0 <= delay < 30


def test_refused_chain_extension_stops_the_run(env, tmp_path):
    run = tmp_path / "refused"
    r = launcher(
        dict(env, FAKE_REFUSE_LINK="2"),
        tmp_path,
        "submit",
        "--scheduler",
        "pbs",
        "--gpus",
        "0",
        "--ranks-per-node",
        "1",
        "--run-dir",
        run,
        "--trainer-command",
        TRAINER,
        "steps=9",
        "stop_every=3",
        "step_time=0.05",
    )
    assert r.returncode == 0, r.stderr
    wait_for(finished(run), 60, "the refused extension", run)
    events = (run / "job" / "events.tsv").read_text()
    assert "chain: submitted link 1" in events
    assert "fail: could not submit link 2: qsub: Maximum number of jobs already in queue" in events
    assert (run / "job" / "stopped").read_text().strip() == "could not submit link 2 of the chain"
    assert json.loads((run / "checkpoints" / "state.json").read_text())["step"] == 6


def test_trainer_failure_stops_the_chain(env, tmp_path):
    run = tmp_path / "fail"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--scheduler",
        "pbs",
        "--gpus",
        "0",
        "--ranks-per-node",
        "1",
        "--chain",
        "2",
        "--run-dir",
        run,
        "--notify",
        notify_cmd(tmp_path),
        "--trainer-command",
        TRAINER,
        "steps=9",
        "fail_at=2",
        "step_time=0.05",
    )
    assert r.returncode == 0, r.stderr
    ev = run / "job" / "events.tsv"
    wait_for(lambda: ev.exists() and "skip: the run was stopped" in ev.read_text(), 60, "link 1 to skip", run)
    assert (run / "job" / "stopped").read_text().startswith("trainer exited 3 in job 100.fakepbs")
    assert not (run / "done").exists()
    assert [(t[0], t[2]) for t in told(tmp_path)] == [
        ("failed", f"run {run}: failed (trainer exited 3) in job 100.fakepbs")
    ]


def test_pbs_cancel_stops_the_running_link_and_deletes_the_queued_one(env, tmp_path):
    run = tmp_path / "cancel"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--scheduler",
        "pbs",
        "--gpus",
        "0",
        "--ranks-per-node",
        "1",
        "--chain",
        "2",
        "--run-dir",
        run,
        "--trainer-command",
        TRAINER,
        "steps=200",
        "step_time=0.1",
    )
    assert r.returncode == 0, r.stderr
    steps_log = run / "steps.log"
    wait_for(lambda: steps_log.exists() and len(steps_log.read_text().splitlines()) >= 3, 60, "first steps", run)
    c = launcher(env, tmp_path, "cancel", run)
    assert c.returncode == 0, c.stderr
    assert "qdel 100.fakepbs 101.fakepbs" in calls(env)
    ev = run / "job" / "events.tsv"
    wait_for(lambda: "not continuing" in ev.read_text(), 30, "the running link to stop", run)
    assert (run / "job" / "stopped").read_text().strip() == "cancelled by the user"
    assert json.loads((run / "checkpoints" / "state.json").read_text())["step"] >= 3
    time.sleep(1.0)
    assert "\t101.fakepbs\t" not in ev.read_text(), "the queued link must never start"
    st = launcher(env, tmp_path, "status", run, "--min-interval", "0")
    assert "state    stopped: cancelled by the user" in st.stdout


def test_local_cancel_then_resume_from_checkpoint(env, tmp_path):
    run = tmp_path / "local"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--gpus",
        "0",
        "--run-dir",
        run,
        "--trainer-command",
        TRAINER,
        "--notify",
        notify_cmd(tmp_path),
        "steps=30",
        "step_time=0.1",
    )
    assert r.returncode == 0, r.stderr
    steps_log = run / "steps.log"
    wait_for(lambda: steps_log.exists() and len(steps_log.read_text().splitlines()) >= 5, 60, "first steps", run)
    busy = launcher(env, tmp_path, "resume", run)
    assert busy.returncode == 2 and "is still running" in busy.stderr and "launcher cancel" in busy.stderr
    c = launcher(env, tmp_path, "cancel", run)
    assert c.returncode == 0, c.stderr
    state_file = run / "job" / "local.json"
    wait_for(lambda: json.loads(state_file.read_text())["state"] == "cancelled", 30, "the runner to stop", run)
    saved = json.loads((run / "checkpoints" / "state.json").read_text())
    assert 5 <= saved["step"] < 30
    assert "the run was stopped (cancelled by the user), not continuing" in (run / "job" / "events.tsv").read_text()
    st = launcher(env, tmp_path, "status", run)
    assert "stopped: cancelled by the user" in st.stdout and "cancelled (restarts 0" in st.stdout
    assert [t[0] for t in told(tmp_path)] == ["stopped"]
    rs = launcher(env, tmp_path, "resume", run, "--wait")
    assert rs.returncode == 0, rs.stderr
    assert json.loads((run / "checkpoints" / "state.json").read_text()) == expected_state(30)
    steps = [int(l.split()[0]) for l in steps_log.read_text().splitlines()]
    assert steps == list(range(1, 31)), "resumed from the checkpoint, no step repeated"
    assert [t[0] for t in told(tmp_path)] == ["stopped", "done"]


def test_local_walltime_warning_signal_and_rerun(env, tmp_path):
    """The local runner plays a batch system's time limit: USR2 before the end, the trainer
    checkpoints and exits 75, the runner runs the script again until the run is done."""
    run = tmp_path / "lw"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--gpus",
        "0",
        "--ranks-per-node",
        "1",
        "--run-dir",
        run,
        "--walltime",
        "00:00:05",
        "--wait",
        "--trainer-command",
        TRAINER,
        "steps=25",
        "step_time=0.2",
        "ignore_deadline=1",
        timeout=150,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "checkpoints" / "state.json").read_text()) == expected_state(25)
    state = json.loads((run / "job" / "local.json").read_text())
    assert state["state"] == "finished" and state["restarts"] >= 1
    log = (run / "logs" / "run.log").read_text()
    assert "received SIGUSR2" in log
    assert "SIGUSR2" in {l.split()[1] for l in (run / "stops.log").read_text().splitlines()}
    assert int((run / "job" / "timeout.count").read_text()) == state["restarts"]


def test_local_job_stages_shards_once_per_node_and_passes_the_staged_manifest(env, tmp_path):
    """The job runs ``hdf5_tools stage`` (one copier per node under mpirun) before training."""
    shards = tmp_path / "shards"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdf5_tools.cli",
            "pack",
            "synth:videos=2,frames=3,size=32x24,seed=0",
            str(shards),
            "--nodes",
            "1",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    nodelocal = tmp_path / "nodelocal"
    nodelocal.mkdir()
    run = tmp_path / "staged run"
    r = launcher(
        dict(env, TMPDIR=str(nodelocal)),
        tmp_path,
        "submit",
        "--gpus",
        "0",
        "--run-dir",
        run,
        "--data",
        shards / "manifest.json",
        "--wait",
        "--trainer-command",
        TRAINER,
        "steps=2",
        "step_time=0",
        timeout=150,
    )
    assert r.returncode == 0, r.stderr
    # Staged into a directory private to the run and the job, removed when the job ended.
    job_id = (run / "job" / "jobs.tsv").read_text().split("\t")[3]
    staged = nodelocal / f"pixpro-g0-{job_id}"
    argv = json.loads((run / "argv.log").read_text().splitlines()[0])
    assert argv[-1] == f"data.shards=[{staged}/manifest.json]"
    log = (run / "logs" / "run.log").read_text()
    assert "stage: node 0 of 1: copied 1 shards" in log, log[-2000:]
    assert list(nodelocal.iterdir()) == []
    events = (run / "job" / "events.tsv").read_text()
    assert "\tstaged in " in events and events.index("staged in") < events.index("train:")


@pytest.mark.slow
def test_real_trainer_under_the_local_scheduler(env, tmp_path):
    """``python -m pixpro_of train`` (cpu_small preset, 2 Horovod ranks through mpirun) started by
    the job script: it gets the run dir, the deadline and the backend, and finishes."""
    run = tmp_path / "real"
    r = launcher(
        env,
        tmp_path,
        "submit",
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--run-dir",
        run,
        "--wait",
        "--python",
        sys.executable,
        "run.epochs=1",
        "optim.warmup_epochs=0",
        "data.num_workers=0",
        "log.tensorboard=false",
        timeout=400,
    )
    log = (run / "logs" / "run.log").read_text() if (run / "logs" / "run.log").exists() else ""
    assert r.returncode == 0, (r.stderr, log[-3000:])
    assert (run / "done").exists() and (run / "checkpoints" / "latest").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dist"]["backend"] == "horovod"
    deadline = float(cfg["stop"]["deadline"].lstrip("@"))
    start = [l for l in (run / "job" / "events.tsv").read_text().splitlines() if "\ttrain:" in l][0]
    iso = start.split("deadline ")[1]
    from datetime import datetime

    assert deadline == datetime.fromisoformat(iso).timestamp()
    assert (run / "job" / "events.tsv").read_text().rstrip().endswith("finished")
