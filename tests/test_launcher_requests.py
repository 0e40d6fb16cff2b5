"""launcher: every request is checked before anything is written or submitted; a dry run never
submits; a failed submit leaves nothing behind; the script runs the submitting interpreter and
activates its environment. Fast: nothing here starts a job on a real scheduler."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from launcher.clusters import load_profile, parse_duration
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fake_schedulers"
MANIFEST = ROOT / "tests" / "golden" / "launcher" / "shards.manifest"


def run_cli(args, capsys):
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(args, capsys, command="render"):
    rc, out, err = run_cli([command, *args], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1, (rc, out, err)
    assert lines[0].startswith(f"launcher {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--scheduler", "slurm", "--gpus", "1000000000"],
            "--gpus 1000000000 needs 250000000 nodes; profile slurm allows at most 256 nodes (1024 GPUs)",
        ),
        (
            ["--scheduler", "slurm", "--gpus", "0", "--nodes", "300"],
            "--nodes 300; profile slurm allows at most 256 nodes",
        ),
        (
            ["--scheduler", "local", "--gpus", "16"],
            "--gpus 16 needs 2 nodes; profile local allows at most 1 nodes (8 GPUs)",
        ),
        (["--walltime", "99:99:99"], "--walltime: '99:99:99': minutes and seconds must be 0-59"),
        (["--walltime", "1-25:00:00"], "hours must be 0-23 after a day count"),
        (["--preset", "nosuchpreset"], "--preset 'nosuchpreset': no such trainer preset (presets: cpu_small, "),
        (["--max-timeouts", "-3"], "--max-timeouts -3: must be 0 or more"),
        (["--max-preemptions", "-1"], "--max-preemptions -1: must be 0 or more"),
        (["--name", ""], "--name: the run name is empty"),
        (["--name", "x" * 300], "--name: 300 bytes is too long for a file name; use at most 200"),
        (["--name=-rf"], "--name '-rf': give a name without '/' that does not start with '-'"),
        (
            ["--profile-dir", "/no/such/profiles"],
            "--profile-dir: /no/such/profiles is not a directory of cluster profiles",
        ),
        (["--data", "/etc/passwd"], "--data: /etc/passwd: cannot read manifest"),
        (
            ["--scheduler", "pbs", "--cluster", "abci3", "--gpus", "8"],
            "profile abci3 needs --group: the cluster charges every job to a group or project",
        ),
        (["--scheduler", "sge", "--cluster", "abci2", "--gpus", "4"], "profile abci2 needs --group"),
        (
            ["--scheduler", "slurm", "--gpus", "4", "--cpus-per-rank", "64"],
            "--cpus-per-rank 64: 4 ranks per node x 64 CPUs exceed the 32 CPUs of a node of profile slurm; use "
            "at most 8",
        ),
        (["--scheduler", "slurm", "--gpus", "4", "--cpus-per-rank", "0"], "--cpus-per-rank 0: must be at least 1"),
        (
            ["--scheduler", "slurm", "--gpus", "32", "--data", str(MANIFEST)],
            "was packed for 4 node set(s) but the job has 8 nodes; repack with 'hdf5_tools pack --nodes 8'",
        ),
    ],
)
def test_bad_requests_are_one_line_errors_that_say_what_works(args, message, capsys):
    assert message in one_line_error(args, capsys)


def test_a_request_is_refused_by_submit_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "r"
    one_line_error(["--scheduler", "slurm", "--gpus", "1000000000", "--run-dir", str(run)], capsys, "submit")
    assert not run.exists()


def test_run_dir_problems_are_one_line_errors(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a directory" in one_line_error(["--run-dir", str(afile)], capsys)
    if os.geteuid() != 0:  # root writes anywhere: the read-only case needs another user
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        msg = one_line_error(["--run-dir", str(ro / "run"), "--trainer-command", "true"], capsys, "submit")
        assert "cannot create the run directory" in msg
    long = tmp_path / ("y" * 256)
    assert "longer than a file name may be" in one_line_error(["--run-dir", str(long)], capsys)


def test_profile_values_of_the_wrong_type_are_named(tmp_path):
    for body, message in [
        ('gpus_per_node = "four"', "gpus_per_node = 'four' must be a whole number"),
        ("exclusive = 1", "exclusive = 1 must be true or false"),
        ('modules = "cuda"', "modules = 'cuda' must be a list of strings"),
        ("mpirun_flags = [1, 2]", "mpirun_flags = [1, 2] must be a list of strings"),
        ("queue = 3", "queue = 3 must be a string"),
        ('activate = "maybe"', "activate 'maybe' is not 'auto' or 'none'"),
        ("max_nodes = 0", "max_nodes >= 1"),
    ]:
        p = tmp_path / "bad.toml"
        p.write_text(f'name = "bad"\nscheduler = "slurm"\n{body}\n')
        with pytest.raises(UserError, match=f"profile {p}: " if "=" in message else "profile"):
            load_profile(str(p))
        try:
            load_profile(str(p))
        except UserError as exc:
            assert message in str(exc), (body, str(exc))


def test_walltime_fields_in_range():
    assert parse_duration("100:39:00") == 100 * 3600 + 39 * 60
    assert parse_duration("2-23:59:59") == 2 * 86400 + 23 * 3600 + 59 * 60 + 59
    with pytest.raises(UserError, match="0-59"):
        parse_duration("01:60")


def test_frames_builds_a_preset_for_any_clip_length(capsys):
    rc, out, _ = run_cli(["render", "--scheduler", "slurm", "--frames", "3", "data.synthetic=true"], capsys)
    assert rc == 0
    assert "--config pixpro_k6" in out and "data.k=3" in out
    rc, out, _ = run_cli(["render", "--scheduler", "slurm", "--frames", "2", "data.synthetic=true"], capsys)
    assert rc == 0 and "--config pixpro_k2" in out and "data.k=" not in out


def test_sge_asks_for_gpus_per_slot(capsys):
    rc, out, _ = run_cli(["render", "--scheduler", "sge", "--gpus", "16", "--group", "p"], capsys)
    assert rc == 0
    assert "#$ -pe mpi 16\n" in out and "#$ -l gpu=1\n" in out  # 16 GPUs, not 16 x 4


def test_cpus_per_rank_can_be_set(capsys):
    rc, out, _ = run_cli(["render", "--scheduler", "slurm", "--gpus", "0", "--cpus-per-rank", "1"], capsys)
    assert rc == 0 and "#SBATCH --cpus-per-task=1\n" in out
    rc, out, _ = run_cli(["render", "--scheduler", "slurm", "--gpus", "0"], capsys)
    assert "#SBATCH --cpus-per-task=16\n" in out  # the profile's share of a 32-CPU node


def test_the_job_runs_this_interpreter_and_activates_its_environment(capsys):
    rc, out, _ = run_cli(["render", "--scheduler", "pbs", "--gpus", "4"], capsys)
    assert rc == 0
    assert f"LAUNCHER_PYTHON={shlex.quote(sys.executable)}\n" in out
    assert f"{shlex.quote(sys.executable)} -m pixpro_of train" in out
    if sys.prefix != sys.base_prefix:  # a venv (make setup's .venv)
        assert f"source {shlex.quote(os.path.join(sys.prefix, 'bin', 'activate'))}\n" in out
    # A profile's python wins, and then no environment of ours is activated.
    rc, out, _ = run_cli(["render", "--scheduler", "pbs", "--gpus", "4", "--python", "/opt/site/python3"], capsys)
    assert "LAUNCHER_PYTHON=/opt/site/python3\n" in out and "/bin/activate" not in out


def test_the_job_forwards_its_environment_to_every_rank(tmp_path, capsys):
    prof = tmp_path / "site.toml"
    prof.write_text('name = "site"\nscheduler = "pbs"\ngpus_per_node = 4\nenv = { NCCL_IB_HCA = "mlx5" }\n')
    rc, out, _ = run_cli(
        ["render", "--scheduler", "pbs", "--cluster", str(prof), "--gpus", "8", "--data", str(MANIFEST)], capsys
    )
    assert rc == 0
    fwd = [l for l in out.splitlines() if l.startswith("launcher_forward=(")][0]
    for var in ("PATH", "LD_LIBRARY_PATH", "NCCL_IB_HCA", "OMPI_ALLOW_RUN_AS_ROOT"):
        assert f" {var}" in fwd or f"({var}" in fwd
    # The staging mpirun and the training mpirun both take the -x list.
    assert out.count('"${launcher_mpi_env[@]}"') == 2
    assert 'if [ "$(id -u)" -eq 0 ]; then' in out  # root switches only when the job runs as root


def test_a_dry_run_never_submits(tmp_path, capsys):
    run = tmp_path / "dry"
    env_path = os.environ["PATH"]
    os.environ["PATH"] = "/nonexistent"  # no sbatch could run anyway
    try:
        rc, out, err = run_cli(
            [
                "submit",
                "--dry-run",
                "--scheduler",
                "slurm",
                "--run-dir",
                str(run),
                "--frames",
                "6",
                "data.synthetic=true",
            ],
            capsys,
        )
    finally:
        os.environ["PATH"] = env_path
    assert rc == 0 and not run.exists()
    assert out.startswith("#!/bin/bash") and "dry_run=true" not in out
    assert err.strip().startswith("sbatch --parsable")


def _fake_env(tmp_path: Path) -> dict:
    env = dict(os.environ, FAKE_SCHED_DIR=str(tmp_path / "sched"), PYTHONPATH=str(ROOT))
    env["PATH"] = f"{FAKES}:{Path(sys.executable).parent}:{env['PATH']}"
    return env


def test_a_failed_submit_leaves_nothing_and_the_retry_works(tmp_path):
    run = tmp_path / "retry"
    args = [
        sys.executable,
        "-m",
        "launcher.cli",
        "submit",
        "--scheduler",
        "pbs",
        "--gpus",
        "0",
        "--run-dir",
        str(run),
        "--trainer-command",
        "true",
    ]
    env = _fake_env(tmp_path)
    (tmp_path / "emptybin").mkdir()
    no_qsub = dict(env, PATH=str(tmp_path / "emptybin"))
    r = subprocess.run(args, env=no_qsub, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "qsub: command not found" in r.stderr
    assert not run.exists()
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (run / "job" / "request.json").is_file()


def test_a_percent_sign_in_the_run_dir_is_escaped_for_slurm(tmp_path, capsys):
    rc, _, err = run_cli(["render", "--scheduler", "slurm", "--run-dir", str(tmp_path / "100%run")], capsys)
    assert rc == 0
    assert f"--output={tmp_path}/100%%run/logs/slurm-%j.out" in err


def test_list_shows_the_ids_of_links_a_job_submitted(tmp_path, capsys):
    run = tmp_path / "runs" / "chained"
    (run / "job").mkdir(parents=True)
    (run / "job" / "request.json").write_text(json.dumps({"scheduler": "pbs", "profile": "pbs"}))
    (run / "job" / "jobs.tsv").write_text(
        "2026-01-01T00:00:00Z\tsubmit\t0\t100.server\t100.server\n2026-01-01T01:00:00Z\textend\t1\t\t101.server\n"
    )  # the job script records raw qsub output
    rc, out, _ = run_cli(["list", str(tmp_path / "runs")], capsys)
    assert rc == 0
    assert "101.server" in out.splitlines()[1]
