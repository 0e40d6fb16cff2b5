"""Watching a run: ``launcher status``, ``launcher logs -f`` and ``launcher list`` on a real local run.

One run of the fixture trainer (``tests/fake_schedulers/fixture_trainer.py``, which writes
metrics.csv and train.log as the trainer does) under the local runner: it checkpoints after 6 of
its 12 steps and exits 75, the runner runs the job script again (the local requeue), the second
link finishes. ``logs -f`` started before the first link follows both links and ends by itself;
``status`` shows progress, the checkpoint, the budgets and the links' environment records.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fake_schedulers" / "fixture_trainer.py"
pytestmark = pytest.mark.mpi


def launcher(env, cwd, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *map(str, args)],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(pred, timeout, what, run_dir):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    log = Path(run_dir) / "logs" / "run.log"
    raise AssertionError(f"timed out waiting for {what}\n" + (log.read_text()[-3000:] if log.exists() else ""))


def test_status_logs_follow_and_list_on_a_requeued_local_run(tmp_path, mpi_env):
    env = dict(mpi_env)
    pipe = tmp_path / "pipe"
    run = pipe / "train"
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
        "--max-timeouts",
        "5",
        "--trainer-command",
        f"{sys.executable} {FIXTURE}",
        "steps=12",
        "stop_every=6",
        "step_time=0.5",
    )
    assert r.returncode == 0, r.stderr
    follow = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "logs", str(run), "-f"],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    # while the first link trains: step/total, samples/s and the ETA at the clock's rate
    steps = run / "steps.log"
    wait_for(lambda: steps.exists() and len(steps.read_text().splitlines()) >= 3, 90, "three steps", run)
    st = launcher(env, tmp_path, "status", run)
    assert st.returncode == 0, st.stderr
    m = re.search(
        r"^progress step (\d+)/12 \((\d+)%\), ([\d.]+) samples/s, ETA (\S+) at that rate "
        r"\(time in the queue not counted\); last step logged (\S+) ago$",
        st.stdout,
        re.MULTILINE,
    )
    assert m, st.stdout
    step = int(m.group(1))
    assert 3 <= step <= 6 and int(m.group(2)) == round(100 * step / 12)
    assert 1.0 < float(m.group(3)) < 2.5  # one sample per 0.5 s step
    assert re.fullmatch(r"\d+s", m.group(4)) and int(m.group(4)[:-1]) <= 12  # 6..9 steps at 2 steps/s
    assert "state    in progress" in st.stdout

    out, err = follow.communicate(timeout=120)  # ends by itself once the run is done
    assert follow.returncode == 0, err
    assert (run / "done").exists()
    log = (run / "logs" / "run.log").read_text()
    assert out.count("launcher: start restart=") == 2 and log.count("launcher: start restart=") == 2
    assert "launcher: checkpointed: timeout 1 of 5" in out and out.rstrip().endswith("launcher: finished")
    missing = [line for line in log.splitlines() if line not in out]
    assert not missing, f"logs -f left out {missing[:3]}"
    assert "waiting for the first job" in err or "launcher: start restart=0" in out

    # environment records: one per link (a local restart keeps its job id and counts restarts)
    recs = sorted((run / "job" / "env").glob("link-*.json"))
    job_id = json.loads((run / "job" / "local.json").read_text())["job_id"]
    assert [p.name for p in recs] == [f"link-0-r0-{job_id}.json", f"link-0-r1-{job_id}.json"]
    assert json.loads(recs[0].read_text())["hosts"] == ["localhost"]
    assert "launcher: environment: python " in log and "warning" not in log

    t0 = time.monotonic()
    st = launcher(env, tmp_path, "status", run)
    status_s = time.monotonic() - t0
    print(f"launcher status on a finished run: {status_s:.2f} s\n{st.stdout}")
    lines = st.stdout.splitlines()
    assert "state    done" in lines and "progress step 12/12 (100%), " in st.stdout
    assert re.search(r"^checkpt  state\.json, written \d+s ago$", st.stdout, re.MULTILINE)
    assert "resumes  1 after timeouts, 0 after preemptions (budgets: 5 timeouts, 100 preemptions)" in lines
    assert re.search(rf"^env      python .* 1 host\(s\) \(job/env/link-0-r1-{job_id}\.json\)$", st.stdout, re.MULTILINE)
    assert "warning" not in st.stdout

    # a link that ran with another torch than the first: one warning line
    first = json.loads(recs[0].read_text())
    torch_now = first["packages"]["torch"]
    first["packages"]["torch"] = "0.0.1"
    recs[0].write_text(json.dumps(first))
    st = launcher(env, tmp_path, "status", run)
    warn = [l for l in st.stdout.splitlines() if l.startswith("warning  ")]
    assert warn == [
        f"warning  link 0 restart 1 (job {job_id}) ran with another environment than link 0 "
        f"(job {job_id}): torch {torch_now} (first: 0.0.1)"
    ]

    # the run as the train stage of a pipeline: its line has step/total and the ETA
    (pipe / "pipeline.json").write_text(
        json.dumps(
            {
                "stages": [
                    {"name": "train", "run_dir": str(run), "needs": []},
                    {"name": "convert", "run_dir": str(pipe / "convert"), "needs": ["train"]},
                ]
            }
        )
    )
    ps = launcher(env, tmp_path, "status", pipe)
    assert ps.returncode == 0, ps.stderr
    assert ps.stdout.splitlines()[1].startswith(f"train    done  step 12/12, ETA done  job {job_id}")
    assert ps.stdout.splitlines()[2].startswith("convert  not submitted  job -")

    # every run under a directory in one table; the pipeline with its stages
    other = tmp_path / "runs" / "early"
    (other / "job").mkdir(parents=True)
    (other / "job" / "request.json").write_text((run / "job" / "request.json").read_text())
    (other / "job" / "stopped").write_text("staging failed (exit 1)\n")
    lst = launcher(env, tmp_path, "list", tmp_path)
    assert lst.returncode == 0, lst.stderr
    rows = [l.split() for l in lst.stdout.splitlines()]
    assert rows[0] == ["RUN", "STEP", "SAMPLES/S", "ETA", "SCHEDULER", "LAST", "JOB", "STATE"]
    assert rows[1] == ["pipe", "-", "-", "-", "-", "-", "convert:", "not", "submitted"]
    assert rows[2][:2] == ["train", "12/12"] and rows[2][3:] == ["done", "local", job_id, "done"]
    assert 1.0 < float(rows[2][2]) < 2.5
    assert rows[3] == ["convert", "-", "-", "-", "-", "-", "not", "submitted"]
    assert rows[4] == ["runs/early", "-", "-", "stopped", "local", "-", "stopped:", "staging", "failed", "(exit", "1)"]
    assert len(rows) == 5

    # what the scheduler's own output file holds is shown when the job never reached run.log
    (other / "logs").mkdir()
    (other / "logs" / "slurm-77.out").write_text(
        "/var/spool/slurmd/job00077/slurm_script: line 52: cd: /tmp/runs/early: No such file or directory\n"
    )
    (other / "logs" / "slurm-78.out").write_text("")
    lg = launcher(env, tmp_path, "logs", other)
    assert lg.returncode == 0, lg.stderr
    assert lg.stdout.splitlines() == [
        "==> logs/slurm-77.out (the scheduler's own output) <==",
        "/var/spool/slurmd/job00077/slurm_script: line 52: cd: /tmp/runs/early: No such file or directory",
    ]
    (other / "logs" / "slurm-77.out").unlink()
    lg = launcher(env, tmp_path, "logs", other)
    assert lg.returncode == 2 and "run.log does not exist yet (no job of this run has started)" in lg.stderr


def test_watch_commands_do_not_import_torch(tmp_path):
    code = (
        "import sys; import launcher.status, launcher.list_runs, launcher.logs, launcher.envrecord, "
        "launcher.progress; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=HERE.parent)
    assert out.stdout.strip() == "False", out.stderr


def test_follow_reads_whole_lines_and_output_files_written_anew(tmp_path):
    from launcher.job_files import RunDir
    from launcher.logs import Follower

    rd = RunDir(str(tmp_path / "run"))
    rd.logs.mkdir(parents=True)
    f = Follower(rd)
    rd.log.write_text("launcher: start restart=0\nlauncher: trai")
    assert f.poll() == "launcher: start restart=0\n"  # a line being written comes when it is whole
    with open(rd.log, "a") as out:
        out.write("n: mpirun with 2 ranks\n")
    assert f.poll() == "launcher: train: mpirun with 2 ranks\n"
    pbs = rd.logs / "pbs.out"
    pbs.write_text("=>> PBS: job killed: walltime 3610 exceeded limit 3600\n")
    assert f.poll() == "[pbs.out] =>> PBS: job killed: walltime 3610 exceeded limit 3600\n"
    (rd.logs / "train.log").write_text("the trainer's own log is not the scheduler's\n")
    assert f.poll() == ""
    # the next job's output file replaces the last one's (a new file, here no longer than the old)
    new = rd.logs / "pbs.out.new"
    new.write_text("short\n")
    new.replace(pbs)
    assert f.poll() == "[pbs.out] short\n"
    pbs.write_text("x\n")  # truncated and written again in place
    assert f.poll() == "[pbs.out] x\n"
