"""launcher array: many small jobs as one array job with a concurrency cap (issue 23 item 5).

Rendering and dry runs for every scheduler (the array's directives and submit command, the task
index mapped to the task's run directory), shellcheck of the array scripts, the scheduler's
array ids and task states, a job on part of a node asking for its share, one-line refusals, and
the local runner holding the cap with a task that resumes after a stop. The real-scheduler form
is in tests/test_launcher_slurm.py (test_slurm_array_...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from launcher.arrays import ARRAY_SCRIPT, load_tasks, plan_array
from launcher.schedulers import get_scheduler
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fake_schedulers" / "fixture_trainer.py"
sys.path.insert(0, str(FIXTURE.parent))
from fixture_trainer import advance  # noqa: E402

TRAINER = f"{sys.executable} {FIXTURE}"


def expected_state(steps):
    v = 0
    for s in range(steps):
        v = advance(v, s)
    return {"step": steps, "value": v}


def tasks(tmp_path, scheduler, n=3, gpus="1", extra=()):
    common = ["--scheduler", scheduler, "--gpus", gpus, "--trainer-command", TRAINER, *extra]
    return [common + ["--run-dir", str(tmp_path / f"task {i}"), "--name", f"t{i}"] for i in range(n)]


def dry_run(tmp_path, capsys, scheduler, cap, n=3, gpus="1", extra=()):
    f = tmp_path / f"{scheduler}.json"
    f.write_text(json.dumps({"tasks": tasks(tmp_path, scheduler, n, gpus, extra)}))
    rc = cli.main(
        ["array", str(f), "--max-running", str(cap), "--name", "evals", "--dir", str(tmp_path / "arr"), "--dry-run"]
    )
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "scheduler, directives, submit",
    [
        (
            "slurm",
            ["#SBATCH --job-name=evals", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=8", "#SBATCH --requeue"],
            ["sbatch", "--parsable", "--output={arr}/logs/slurm-%A_%a.out", "--array=0-2%1", "{arr}/array.sh"],
        ),
        (
            "pbs",
            ["#PBS -N evals", "#PBS -l select=1:ncpus=8:ngpus=1:mpiprocs=1", "#PBS -l place=scatter", "#PBS -r y"],
            ["qsub", "-J", "0-2", "-W", "max_run_subjobs=1", "{arr}/array.sh"],
        ),
        (
            "sge",
            ["#$ -N evals", "#$ -pe mpi 1", "#$ -l gpu=1", "#$ -r y"],
            ["qsub", "-terse", "-t", "1-3", "-tc", "1", "{arr}/array.sh"],
        ),
    ],
)
def test_array_dry_run_directives_and_submit_command(tmp_path, capsys, scheduler, directives, submit):
    rc, script, err = dry_run(tmp_path, capsys, scheduler, 1)
    assert rc == 0, err
    lines = script.splitlines()
    for d in directives:
        assert d in lines, (d, script)
    assert "#SBATCH --exclusive" not in lines  # one GPU of four: a share of a node
    arr = str(tmp_path / "arr")
    argv = err.splitlines()[0].split()
    assert all(w.format(arr=arr) in argv for w in submit), (submit, argv)
    assert argv[-1] == f"{arr}/{ARRAY_SCRIPT}"
    assert [ln for ln in err.splitlines() if ln.startswith("# task")] == [
        f"# task {i}: {tmp_path / f'task {i}'} (train, 1 node(s) x 1 rank(s), 1 GPU(s) per node)" for i in range(3)
    ]
    # nothing is written by a dry run
    assert not (tmp_path / "arr").exists() and not (tmp_path / "task 0").exists()


def test_pjm_bulk_job_has_no_cap(tmp_path, capsys):
    rc, script, err = dry_run(tmp_path, capsys, "pjm", 0, gpus="4")
    assert rc == 0, err
    assert err.splitlines()[0] == f"pjsub --bulk --sparam 0-2 -x LAUNCHER_LINK=0 {tmp_path / 'arr' / ARRAY_SCRIPT}"
    assert "launcher_index=${PJM_BULKNUM:?" in script
    rc, script, err = dry_run(tmp_path, capsys, "pjm", 2, gpus="4")
    assert rc == 2 and script == ""
    assert err.strip() == (
        "launcher array: error: --max-running 2: PJM bulk jobs have no limit on running sub jobs; "
        "give --max-running 0 (the resource group's own limits apply)"
    )


def _fake_tasks(ap):
    """Replace each task's job.sh by one that says where it runs and under which id."""
    for t in ap.tasks:
        job = Path(t.plan.run_dir) / "job"
        job.mkdir(parents=True, exist_ok=True)
        (job / "job.sh").write_text('echo "$PWD|$LAUNCHER_TASK_JOB_ID"\n')
    path = Path(ap.directory) / ARRAY_SCRIPT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ap.script)
    return path


@pytest.mark.parametrize(
    "scheduler, env, task, job_id",
    [
        ("slurm", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "77"}, 2, "77_2"),
        ("pbs", {"PBS_ARRAY_INDEX": "1", "PBS_JOBID": "55[1].server"}, 1, "55_1"),
        ("sge", {"SGE_TASK_ID": "1", "JOB_ID": "9"}, 0, "9_0"),  # Grid Engine counts tasks from 1
        ("pjm", {"PJM_BULKNUM": "2", "PJM_JOBID": "4321[2]"}, 2, "4321_2"),
    ],
)
def test_array_script_maps_the_task_index_to_its_run_directory(tmp_path, scheduler, env, task, job_id):
    ap = plan_array(tasks(tmp_path, scheduler, gpus="4" if scheduler == "pjm" else "1"), 0, "a", str(tmp_path / "arr"))
    script = _fake_tasks(ap)
    base = {"PATH": os.environ["PATH"]}
    r = subprocess.run(["bash", str(script)], env=dict(base, **env), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{tmp_path / f'task {task}'}|{job_id}"
    index_var = get_scheduler(scheduler).array_index_var
    wrong = dict(env, **{index_var: "5"})
    r = subprocess.run(["bash", str(script)], env=dict(base, **wrong), capture_output=True, text=True)
    base_index = get_scheduler(scheduler).array_index_base
    assert r.returncode == 1 and r.stderr.strip() == (f"launcher array: task index {5 - base_index} is not one of 0..2")
    r = subprocess.run(["bash", str(script)], env=base, capture_output=True, text=True)
    assert r.returncode != 0 and f"{index_var}: this script runs as a task of a {scheduler} array job" in r.stderr


def test_task_scripts_take_the_array_task_id_and_plain_scripts_do_not(tmp_path):
    ap = plan_array(tasks(tmp_path, "slurm"), 2, "a", str(tmp_path / "arr"))
    s = ap.tasks[1].script
    assert 'LAUNCHER_JOB_ID="${SLURM_JOB_ID:?' in s
    assert 'LAUNCHER_JOB_ID="${LAUNCHER_TASK_JOB_ID:-$LAUNCHER_JOB_ID}"\nunset LAUNCHER_TASK_JOB_ID\n' in s
    assert f"RUN_DIR='{tmp_path / 'task 1'}'" in s


def test_array_scripts_pass_bash_n_and_shellcheck(tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (Debian package 'shellcheck')")
    files = []
    for sched in ("slurm", "pbs", "sge", "pjm"):
        ap = plan_array(
            tasks(tmp_path / sched, sched, gpus="4" if sched == "pjm" else "1"), 0, "a", str(tmp_path / sched / "arr")
        )
        files.append(tmp_path / f"{sched}.sh")
        files[-1].write_text(ap.script)
        files.append(tmp_path / f"{sched}-task.sh")
        files[-1].write_text(ap.tasks[0].script)
    for f in files:
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (f, r.stderr)
    r = subprocess.run(["shellcheck", "--severity=info", *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize(
    "words, message",
    [
        (
            ["--gpus", "2"],
            "task 1: its resources differ from task 0's ('#SBATCH --ntasks-per-node=2' vs "
            "'#SBATCH --ntasks-per-node=1'); an array job asks for one set of resources for every task",
        ),
        (
            ["--chain", "2"],
            "task 1: --chain 2: a task of an array job is one job (it requeues or chains itself when it "
            "must resume); leave --chain out",
        ),
        (["--gpus", "-1"], "task 1: --gpus -1: must be 0 (CPU ranks) or more"),
    ],
)
def test_array_refuses_in_one_line(tmp_path, capsys, words, message):
    ts = tasks(tmp_path, "slurm", 2)
    ts[1] += words
    f = tmp_path / "t.json"
    f.write_text(json.dumps(ts))
    rc = cli.main(["array", str(f), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"launcher array: error: {message}\n"


def test_tasks_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserError, match=r"^TASKS .*bad.json: not JSON"):
        load_tasks(str(bad))
    bad.write_text(json.dumps({"tasks": [["--gpus", 1]]}))
    with pytest.raises(UserError, match=r"task 0 is not a list of words"):
        load_tasks(str(bad))
    with pytest.raises(UserError, match=r"missing.json: no such file"):
        load_tasks(str(tmp_path / "missing.json"))
    bad.write_text(json.dumps({"common": ["--gpus", "0"], "tasks": [["--name", "a"]]}))
    assert load_tasks(str(bad)) == [["--gpus", "0", "--name", "a"]]


def test_share_of_a_node(tmp_path, capsys):
    def render(*args):
        rc = cli.main(["render", "--trainer-command", TRAINER, "--run-dir", str(tmp_path / "r"), *args])
        out = capsys.readouterr()
        assert rc == 0, out.err
        return out.out.splitlines()

    one = render("--scheduler", "slurm", "--gpus", "1")
    assert "#SBATCH --cpus-per-task=8" in one and "#SBATCH --exclusive" not in one  # 32 CPUs x 1/4
    whole = render("--scheduler", "slurm", "--gpus", "4")
    assert "#SBATCH --cpus-per-task=8" in whole and "#SBATCH --exclusive" in whole
    half = render("--scheduler", "pbs", "--gpus", "2")
    assert "#PBS -l select=1:ncpus=16:ngpus=2:mpiprocs=2" in half and "#PBS -l place=scatter" in half
    full = render("--scheduler", "pbs", "--gpus", "4")
    assert "#PBS -l select=1:ncpus=32:ngpus=4:mpiprocs=4" in full and "#PBS -l place=scatter:excl" in full
    rc = cli.main(
        ["render", "--scheduler", "slurm", "--gpus", "1", "--cpus-per-rank", "9", "--trainer-command", TRAINER]
    )
    assert rc == 2 and capsys.readouterr().err.strip() == (
        "launcher render: error: --cpus-per-rank 9: 1 ranks per node x 9 CPUs exceed the 8 CPUs of the job's share "
        "(1 of 4 GPUs) of a node of profile slurm; use at most 8"
    )


def test_scheduler_array_ids_and_task_states():
    slurm, pbs, sge = get_scheduler("slurm"), get_scheduler("pbs"), get_scheduler("sge")
    assert slurm.array_task_id(slurm.parse_array_id("812;cluster\n"), 3) == "812_3"
    assert "--array" in slurm.status_argv(["812_3"]) and "--array" not in slurm.status_argv(["812"])
    assert slurm.parse_status("812_0|RUNNING|None\n812_1|PENDING|JobArrayTaskLimit\n", ["812_0", "812_1"]) == {
        "812_0": "running",
        "812_1": "queued (JobArrayTaskLimit)",
    }
    assert pbs.array_task_id(pbs.parse_array_id("1234[].pbs\n"), 2) == "1234[2].pbs"
    assert pbs.status_argv(["1234[2].pbs"]) == ["qstat", "-x", "-t", "1234[2].pbs"]
    assert sge.array_task_id(sge.parse_array_id("77.1-3:1\n"), 0) == "77.1"
    out = (
        "job-ID prior name user state submit/start-at queue slots ja-task-ID\n"
        "   77 0.5 a u r 01/01/2026 10:00:00 all.q@n1 1 1\n"
        "   77 0.5 a u qw 01/01/2026 10:00:00  1 2-3:1\n"
        "   78 0.5 b u qw 01/01/2026 10:00:00  1\n"
    )
    assert sge.parse_status(out, ["77.1", "77.2", "77.3", "78"]) == {
        "77.1": "running (r)",
        "77.2": "queued (qw)",
        "77.3": "queued (qw)",
        "78": "queued (qw)",
    }


def test_local_array_holds_the_cap_and_a_stopped_task_resumes(tmp_path):
    common = [
        "--scheduler",
        "local",
        "--gpus",
        "0",
        "--nodes",
        "1",
        "--ranks-per-node",
        "1",
        "--walltime",
        "120",
        "--trainer-command",
        TRAINER,
        "steps=6",
        "step_time=0.1",
    ]
    spec = {
        "common": common,
        "tasks": [
            ["--run-dir", str(tmp_path / f"t{i}"), *(["deadline_at_step=3"] if i == 1 else [])] for i in range(3)
        ],
    }
    f = tmp_path / "tasks.json"
    f.write_text(json.dumps(spec))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "array",
            str(f),
            "--max-running",
            "1",
            "--dir",
            str(tmp_path / "arr"),
            "--wait",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "arr" / "array.json").read_text())
    assert record["max_running"] == 1 and record["tasks"] == [str(tmp_path / f"t{i}") for i in range(3)]
    for i in range(3):
        run = tmp_path / f"t{i}"
        assert json.loads((run / "checkpoints" / "state.json").read_text()) == expected_state(6)
        events = [ln.split("\t") for ln in (run / "job" / "events.tsv").read_text().splitlines()]
        assert {e[1] for e in events} == {f"{record['job_id']}_{i}"}
        assert events[-1][3] == "finished"
        if i == 1:
            assert any(e[3].startswith("checkpointed: timeout 1") for e in events)
        runner = json.loads((run / "job" / "local.json").read_text())
        assert runner["state"] == "finished" and runner["restarts"] == (1 if i == 1 else 0)
    # the cap: one task at a time, so each task starts (its first event) no earlier than the one before
    # it finished (its last event); events carry whole seconds, so the same second counts as after
    spans = sorted(
        (ev[0][0], ev[-1][0])
        for ev in (
            [ln.split("\t") for ln in (tmp_path / f"t{i}" / "job" / "events.tsv").read_text().splitlines()]
            for i in range(3)
        )
    )
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    assert spans[-1][1] > spans[0][0], spans  # three tasks of a second or more each cannot share one second
