"""What a multi-node job needs shared (launcher/sharedfs.py) and the schedulers' mail directives (--mail).

Both are decided when the job is rendered: nothing here starts a job.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import cli
from launcher.options import build_request, parse_job_args
from launcher.sharedfs import NODE_LOCAL, check_shared, local_roots, node_local_root
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "golden" / "launcher" / "shards.manifest"


def render(args, capsys):
    rc = cli.main(["render", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "path,root",
    [
        ("/tmp/me/run", "/tmp"),
        ("/tmp", "/tmp"),
        ("/dev/shm/venv/bin/python", "/dev/shm"),
        ("/var/tmp/x", "/var/tmp"),
        ("/scratch/local/me/run", "/scratch/local"),
        ("/tmpfoo/run", None),
        ("/home/me/tmp/run", None),
        ("/work/project/run", None),
    ],
)
def test_node_local_root(path, root):
    assert node_local_root(path, NODE_LOCAL + ("/scratch/local",)) == root


def test_local_roots_add_the_profiles_variable_but_not_home_or_root():
    assert local_roots("TMPDIR", {"TMPDIR": "/scratch/local/"}) == NODE_LOCAL + ("/scratch/local",)
    assert local_roots("TMPDIR", {"TMPDIR": "/tmp"}) == NODE_LOCAL
    for value in ("/", "/home/me", "relative/dir", ""):
        assert local_roots("TMPDIR", {"TMPDIR": value, "HOME": "/home/me"}) == NODE_LOCAL


def test_a_link_into_a_node_local_folder_counts(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "run").symlink_to(tmp_path / "local")
    assert node_local_root(str(tmp_path / "shared" / "run"), [str(tmp_path / "local")]) == str(tmp_path / "local")


def test_one_node_may_use_node_local_paths_and_the_first_bad_path_is_named():
    check_shared([("--run-dir", "/tmp/run")], 1, NODE_LOCAL)
    with pytest.raises(UserError) as e:
        check_shared([("--run-dir", "/home/me/run"), ("the interpreter", "/dev/shm/py/bin/python")], 2, NODE_LOCAL)
    assert str(e.value) == (
        "the interpreter /dev/shm/py/bin/python is under /dev/shm, which is local to each node, "
        "and the job has 2 nodes: put it on a filesystem every node mounts (home, project or "
        "work space), or add --allow-node-local-paths if /dev/shm is shared on this cluster"
    )


def test_a_multi_node_render_refuses_a_run_dir_or_data_under_tmp_and_the_override_accepts(capsys, monkeypatch):
    monkeypatch.setenv("TMPDIR", "/tmp")
    base = ["--scheduler", "slurm", "--gpus", "8", "--frames", "6"]
    rc, out, err = render(base + ["--run-dir", "/tmp/me/k6"], capsys)
    assert (
        rc == 2
        and out == ""
        and err.strip()
        == (
            "launcher render: error: --run-dir /tmp/me/k6 is under /tmp, which is local to each node, and the job has "
            "2 nodes: put it on a filesystem every node mounts (home, project or work space), or add "
            "--allow-node-local-paths if /tmp is shared on this cluster"
        )
    )
    rc, out, err = render(base + ["--run-dir", "/work/me/k6", "--python", "/dev/shm/env/bin/python"], capsys)
    assert rc == 2 and "the interpreter /dev/shm/env/bin/python is under /dev/shm" in err
    monkeypatch.setenv("TMPDIR", str(MANIFEST.parent))  # the profile's scratch folder, as the login node sets it
    rc, out, err = render(base + ["--run-dir", "/work/me/k6", "--data", str(MANIFEST)], capsys)
    assert rc == 2 and f"--data {MANIFEST} is under {MANIFEST.parent}, which is local to each node" in err
    rc, out, err = render(
        base + ["--run-dir", "/work/me/k6", "--data", str(MANIFEST), "--allow-node-local-paths"], capsys
    )
    assert rc == 0 and out.startswith("#!/bin/bash"), err
    rc, out, err = render(
        ["--scheduler", "slurm", "--gpus", "4", "--frames", "6", "--run-dir", "/tmp/me/k6", "--data", str(MANIFEST)],
        capsys,
    )
    assert rc == 0, "one node: its /tmp is the job's own; " + err


@pytest.mark.parametrize(
    "scheduler,extra,lines",
    [
        ("slurm", [], ["#SBATCH --mail-user=me@example.org,you@example.org", "#SBATCH --mail-type=END,FAIL"]),
        ("pbs", [], ["#PBS -M me@example.org,you@example.org", "#PBS -m ae"]),
        ("sge", [], ["#$ -M me@example.org,you@example.org", "#$ -m ae"]),
        ("pjm", [], ["#PJM --mail-list me@example.org,you@example.org", "#PJM -m e"]),
    ],
)
def test_mail_directives_for_each_scheduler(scheduler, extra, lines, capsys):
    rc, out, err = render(
        [
            "--scheduler",
            scheduler,
            "--gpus",
            "0",
            "--run-dir",
            "/work/me/m",
            "--mail",
            "me@example.org,you@example.org",
            *extra,
        ],
        capsys,
    )
    assert rc == 0, err
    directives = [
        ln
        for ln in out.splitlines()
        if "mail-type" in ln or "example.org" in ln or ln.startswith(("#PBS -m", "#$ -m", "#PJM -m"))
    ]
    assert directives == lines
    rc, out, err = render(["--scheduler", scheduler, "--gpus", "0", "--run-dir", "/work/me/m"], capsys)
    assert rc == 0 and "example.org" not in out and "mail" not in out.lower() and lines[-1] not in out


def test_the_profile_gives_mail_and_notify_and_the_options_override_them(tmp_path, capsys):
    prof = tmp_path / "site.toml"
    prof.write_text(
        'name = "site"\nscheduler = "slurm"\ngpus_per_node = 4\ncpus_per_node = 32\n'
        'mail = "lab@example.org"\nnotify = "touch $LAUNCHER_RUN_DIR/ended"\n'
    )
    base = [
        "--scheduler",
        "slurm",
        "--cluster",
        str(prof),
        "--gpus",
        "4",
        "--frames",
        "6",
        "--run-dir",
        "/work/me/k6",
        "--data",
        str(MANIFEST),
    ]
    rc, out, err = render(base, capsys)
    assert rc == 0 and "#SBATCH --mail-user=lab@example.org\n" in out, err
    rc, out, err = render(base + ["--mail", ""], capsys)
    assert rc == 0 and "mail" not in out.lower(), err
    assert build_request(*parse_job_args(base)).notify == "touch $LAUNCHER_RUN_DIR/ended"
    assert build_request(*parse_job_args(base + ["--notify", "echo hi"])).notify == "echo hi"
    assert build_request(*parse_job_args(base + ["--notify", ""])).notify == ""


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--scheduler", "slurm", "--mail", "me at example.org"],
            "--mail 'me at example.org': 'me at example.org' is not a mail address like user@example.org",
        ),
        (
            ["--scheduler", "pbs", "--mail", "me@example.org;rm -rf ~"],
            "'me@example.org;rm -rf ~' is not a mail address",
        ),
        (
            ["--scheduler", "local", "--mail", "me@example.org"],
            "--mail me@example.org: the local runner sends no mail; use --notify with a command that does",
        ),
    ],
)
def test_bad_mail_is_one_line(args, message, capsys):
    rc, out, err = render([*args, "--gpus", "0", "--run-dir", "/work/me/m"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and message in lines[0], err
