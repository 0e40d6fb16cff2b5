"""launcher: profiles, resource math, rendering (golden scripts, bash -n, shellcheck), quoting,
and one-line errors for bad requests. Fast: nothing here submits a job.

Regenerate the golden scripts after an intended template change with
``LAUNCHER_UPDATE_GOLDEN=1 pytest tests/test_launcher.py`` and read the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from launcher.clusters import available_profiles, load_profile, parse_duration
from launcher.options import build_request, parse_job_args
from launcher.request import passthrough_args, plan_job, safe_job_name
from launcher.schedulers import AFTER, LINK
from launcher.shellwords import array, sh_argv
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "launcher"
MANIFEST = GOLDEN / "shards.manifest"
SHIPPED = ["abci2", "abci3", "local", "pbs", "pjm", "sge", "slurm", "tsubame3"]


def render(args, capsys):
    """Run ``launcher render ARGS``; (exit code, stdout, stderr)."""
    rc = cli.main(["render", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def plan_for(argv):
    args, extra = parse_job_args(argv)
    return plan_job(build_request(args, extra))


# ------------------------------------------------------------------ profiles


def test_shipped_profiles_load_and_match_their_scheduler():
    assert set(SHIPPED) <= set(available_profiles())
    sched = {p: load_profile(p).scheduler for p in SHIPPED}
    assert sched == {
        "abci2": "sge",
        "abci3": "pbs",
        "local": "local",
        "pbs": "pbs",
        "pjm": "pjm",
        "sge": "sge",
        "slurm": "slurm",
        "tsubame3": "sge",
    }
    abci3 = load_profile("abci3")
    assert (abci3.gpus_per_node, abci3.queue, abci3.local_dir_var) == (8, "rt_HF", "PBS_LOCALDIR")
    abci2 = load_profile("abci2")
    assert (abci2.gpus_per_node, abci2.node_resource, abci2.group_on_command_line) == (4, "rt_F", True)
    assert load_profile("slurm").can_requeue and not load_profile("pbs").can_requeue
    assert load_profile("abci3").max_walltime_s == 168 * 3600


def test_user_profile_dir_is_searched_first_and_bad_keys_are_named(tmp_path):
    (tmp_path / "abci3.toml").write_text('name = "abci3"\nscheduler = "pbs"\ngpus_per_node = 2\n')
    assert load_profile("abci3", str(tmp_path)).gpus_per_node == 2
    (tmp_path / "broken.toml").write_text('name = "broken"\nscheduler = "pbs"\ngpus_per_nod = 2\n')
    with pytest.raises(UserError, match=r"broken.toml: unknown key 'gpus_per_nod'"):
        load_profile("broken", str(tmp_path))
    (tmp_path / "badvar.toml").write_text('name = "b"\nscheduler = "pbs"\nlocal_dir_var = "X; rm"\n')
    with pytest.raises(UserError, match="local_dir_var"):
        load_profile(str(tmp_path / "badvar.toml"))


def test_parse_duration_forms():
    assert parse_duration("01:30:00") == 5400
    assert parse_duration("2:15") == 2 * 3600 + 15 * 60
    assert parse_duration("90") == 5400
    assert parse_duration("1-00:00:00") == 86400
    for bad in ("abc", "1:2:3:4", "0", "-5"):
        with pytest.raises(UserError, match="--walltime"):
            parse_duration(bad)


# ------------------------------------------------------------------ resource math


@pytest.mark.parametrize(
    "cluster,sched,gpus,nodes,rpn",
    [
        ("abci3", "pbs", 16, 2, 8),
        ("abci2", "sge", 16, 4, 4),
        ("tsubame3", "sge", 8, 2, 4),
        ("pjm", "pjm", 16, 4, 4),
        ("slurm", "slurm", 2, 1, 2),
        ("abci3", "pbs", 8, 1, 8),
    ],
)
def test_gpus_become_nodes_and_ranks(cluster, sched, gpus, nodes, rpn):
    plan = plan_for(
        ["--scheduler", sched, "--cluster", cluster, "--gpus", str(gpus), "--global-batch", "256", "--group", "grp01"]
    )
    assert (plan.nodes, plan.ranks_per_node, plan.ranks) == (nodes, rpn, gpus)
    assert plan.per_rank_batch == 256 // gpus
    assert "data.batch_size=256" in plan.command_overrides  # the trainer's batch is global


def test_frames_select_preset_and_other_options_pass_through(tmp_path):
    plan = plan_for(
        [
            "--scheduler",
            "slurm",
            "--gpus",
            "4",
            "--frames",
            "6",
            "--run-dir",
            str(tmp_path / "r"),
            "--lr",
            "0.5",
            "optim.wd=1e-5",
            "--amp",
            "--epochs=3",
        ]
    )
    # The job runs the interpreter that submitted it (absolute path), not whatever "python3" is there.
    assert plan.command_argv == (
        sys.executable,
        "-m",
        "pixpro_of",
        "train",
        "--run-dir",
        str(tmp_path / "r"),
        "--config",
        "pixpro_k6",
    )
    assert plan.command_overrides == ("dist.backend=horovod", "lr=0.5", "optim.wd=1e-5", "amp=true", "epochs=3")
    cpu = plan_for(["--gpus", "0", "--preset", "cpu_small", "--frames", "2"])
    assert cpu.command_argv[-2:] == ("--config", "cpu_small") and "data.k=2" in cpu.command_overrides
    assert plan_for(["--scheduler", "slurm", "--launch", "torchrun"]).backend == "ddp"
    assert "dist.backend=ddp" in plan_for(["--scheduler", "slurm", "--launch", "srun"]).command_overrides
    cfg = tmp_path / "my.yaml"
    cfg.write_text("data: {k: 2}\n")
    plan = plan_for(["--config", str(cfg), "--python", "/opt/py/bin/python"])
    assert plan.command_argv[0] == "/opt/py/bin/python" and plan.command_argv[-2:] == ("--config", str(cfg))
    with pytest.raises(UserError, match="--config: trainer config /no/such.yaml does not exist"):
        plan_for(["--config", "/no/such.yaml"])


def test_cpu_runs_use_cpu_ranks():
    plan = plan_for(["--gpus", "0"])
    assert (plan.nodes, plan.ranks_per_node, plan.gpus_per_node) == (1, 2, 0)
    plan = plan_for(["--gpus", "0", "--ranks-per-node", "3", "--nodes", "2", "--scheduler", "slurm"])
    assert (plan.nodes, plan.ranks) == (2, 6)


def test_trainer_options_are_not_taken_as_abbreviated_launcher_options(capsys):
    # --ch and --na go to the trainer, not to --chain/--name: its own config check refuses them ...
    rc, out, err = render(["--scheduler", "pbs", "--gpus", "4", "--ch", "3", "--na", "x"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "the trainer refuses this config: " in err and "'ch=3'" in err
    # ... and a custom trainer command (which the launcher cannot check) receives them as key=value
    rc, out, err = render(
        ["--scheduler", "pbs", "--gpus", "4", "--trainer-command", "python3 train.py", "--ch", "3", "--na", "x"], capsys
    )
    assert rc == 0 and len(err.strip().splitlines()) == 1  # no --chain 3
    assert "dist.backend=horovod ch=3 na=x)" in out


def test_the_trainer_checks_the_config_before_anything_is_submitted(tmp_path, capsys):
    # The launcher knows the trainer by its command line only: the trainer resolves the job's config.
    run = tmp_path / "r"
    rc = cli.main(["submit", "--gpus", "0", "--preset", "cpu_small", "--run-dir", str(run), "optim.nosuch=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not run.exists()
    assert err[0].startswith("launcher submit: error: the trainer refuses this config: ") and "optim.nosuch" in err[0]
    rc, out, _ = render(["--gpus", "0", "--preset", "cpu_small", "data.batch_size=4"], capsys)
    assert rc == 0 and "data.batch_size=4" in out


def test_passthrough_rejects_stray_words():
    assert passthrough_args(["a=1", "--b", "2", "--c"]) == ["a=1", "b=2", "c=true"]
    with pytest.raises(UserError, match="unexpected argument 'stray'"):
        passthrough_args(["stray"])


def test_safe_job_name():
    assert safe_job_name("pixpro k6; rm -rf /") == "pixpro_k6__rm_-rf__"
    assert safe_job_name("6frames") == "r6frames"
    assert len(safe_job_name("x" * 200)) == 64


# ------------------------------------------------------------------ bad requests: one line, exit 2


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--scheduler", "pbs", "--cluster", "abci3", "--gpus", "12"],
            "--gpus 12 does not fill whole nodes of profile abci3 (8 GPUs per node); use 8 or 16",
        ),
        (
            ["--scheduler", "sge", "--cluster", "abci2", "--gpus", "6"],
            "--gpus 6 does not fill whole nodes of profile abci2 (4 GPUs per node); use 4 or 8",
        ),
        (["--scheduler", "pbs", "--cluster", "nosuch"], "--cluster: unknown profile 'nosuch' (available: "),
        (
            ["--scheduler", "sge", "--cluster", "tsubame3", "--walltime", "25:00:00"],
            "--walltime 25:00:00 exceeds the maximum 24:00:00 of profile tsubame3",
        ),
        (
            ["--scheduler", "slurm", "--data", "/nonexistent/shards.manifest"],
            "--data: shard manifest /nonexistent/shards.manifest does not exist",
        ),
        (
            ["--scheduler", "slurm", "--gpus", "8", "--global-batch", "100"],
            "--global-batch 100 does not divide over 8 ranks; use a multiple of 8 such as 96 or 104",
        ),
        (["--scheduler", "slurm", "--cluster", "abci3"], "--cluster abci3 is a pbs profile, not slurm"),
        (["--scheduler", "pbs", "--launch", "srun"], "--launch srun needs --scheduler slurm"),
        (["--scheduler", "pbs", "--group", "grp;rm"], "--group 'grp;rm': only letters"),
        (["--walltime", "soon"], "--walltime: 'soon' is not a duration"),
        (["--chain", "3"], "--chain is for batch schedulers"),
        (
            ["--scheduler", "local", "--gpus", "12"],
            "--gpus 12 does not fill whole nodes of profile local (8 GPUs per node); use 8 or 16",
        ),
    ],
)
def test_bad_requests_are_one_line_errors(args, message, capsys):
    rc, out, err = render(args, capsys)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launcher render: error: "), err
    assert message in lines[0]


def test_submit_refuses_an_existing_run(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "job").mkdir(parents=True)
    (run / "job" / "request.json").write_text("{}")
    rc = cli.main(["submit", "--run-dir", str(run), "--gpus", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a run; continue it with 'launcher resume" in err
    (run / "done").write_text("")
    rc = cli.main(["submit", "--run-dir", str(run), "--gpus", "0"])
    assert rc == 2 and "holds a finished run" in capsys.readouterr().err


# ------------------------------------------------------------------ rendering

GOLDEN_CASES = {
    # name: extra args; every case also gets --frames 6 --data MANIFEST --global-batch 256
    "slurm": ["--scheduler", "slurm", "--cluster", "slurm", "--gpus", "8", "--group", "grp01", "--queue", "gpu"],
    "slurm-srun": ["--scheduler", "slurm", "--cluster", "slurm", "--gpus", "8", "--launch", "srun"],
    "slurm-torchrun": ["--scheduler", "slurm", "--cluster", "slurm", "--gpus", "8", "--launch", "torchrun"],
    "slurm-chain": ["--scheduler", "slurm", "--cluster", "slurm", "--gpus", "8", "--chain", "3"],
    "pbs": ["--scheduler", "pbs", "--cluster", "pbs", "--gpus", "8", "--group", "grp01", "--queue", "workq"],
    "abci3": ["--scheduler", "pbs", "--cluster", "abci3", "--gpus", "16", "--group", "grp01", "--walltime", "24:00:00"],
    "abci3-horovodrun": [
        "--scheduler",
        "pbs",
        "--cluster",
        "abci3",
        "--gpus",
        "16",
        "--group",
        "grp01",
        "--launch",
        "horovodrun",
    ],
    "sge": ["--scheduler", "sge", "--cluster", "sge", "--gpus", "8", "--group", "proj1"],
    "abci2": ["--scheduler", "sge", "--cluster", "abci2", "--gpus", "16", "--group", "grp01", "--chain", "2"],
    "tsubame3": ["--scheduler", "sge", "--cluster", "tsubame3", "--gpus", "8", "--group", "grp01"],
    "pjm": ["--scheduler", "pjm", "--cluster", "pjm", "--gpus", "16", "--group", "jh0001", "--walltime", "168:00:00"],
    "local": ["--scheduler", "local", "--cluster", "local", "--gpus", "0"],
}


def _render_case(name, capsys):
    args = GOLDEN_CASES[name] + [
        "--frames",
        "6",
        "--data",
        str(MANIFEST),
        "--global-batch",
        "256",
        "--name",
        f"golden-{name}",
        "--run-dir",
        f"/runs/golden-{name}",
    ]
    rc, out, err = render(args, capsys)
    assert rc == 0, err
    # The job's interpreter is this one (python or python3, wherever it lives), and it activates
    # this interpreter's environment.
    out, err = out.replace(sys.executable, "<PYTHON>"), err.replace(sys.executable, "<PYTHON>")
    out = out.replace(sys.prefix, "<PREFIX>")
    return out.replace(str(ROOT), "<REPO>"), err.replace(str(ROOT), "<REPO>")


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_scripts(name, capsys):
    script, submit = _render_case(name, capsys)
    text = (
        script + "\n# ---- submit command(s) on stderr ----\n" + "".join("# " + l + "\n" for l in submit.splitlines())
    )
    path = GOLDEN / f"{name}.sh"
    if os.environ.get("LAUNCHER_UPDATE_GOLDEN") or not path.exists():
        if not os.environ.get("LAUNCHER_UPDATE_GOLDEN"):
            pytest.fail(f"{path} is missing: run with LAUNCHER_UPDATE_GOLDEN=1 and read it")
        path.write_text(text)
    assert text == path.read_text(), (
        f"{name}: rendered script differs from {path} (LAUNCHER_UPDATE_GOLDEN=1 regenerates)"
    )


def test_rendered_scripts_have_the_scheduler_facts(capsys):
    s, sub = _render_case("abci3", capsys)
    assert "#PBS -q rt_HF\n" in s and "#PBS -l select=2:mpiprocs=8\n" in s and "#PBS -P grp01\n" in s
    assert "#PBS -l walltime=24:00:00\n" in s and 'LAUNCHER_LOCALDIR="${PBS_LOCALDIR:-/tmp}"' in s
    assert "module load hpcx/2.20" in s and 'cat "$PBS_NODEFILE"' in s
    assert sub.startswith("qsub -v LAUNCHER_LINK=0 ")
    s, sub = _render_case("abci2", capsys)
    assert "#$ -l rt_F=4\n" in s and "#$ -l h_rt=" in s and "-g" not in s.split("#$ -r y")[0].replace("-gr", "")
    first, second = sub.strip().splitlines()
    assert " -g grp01 " in first and "-hold_jid" not in first
    assert " -hold_jid '<job id of link 0>' " in second
    assert "btl_tcp_if_include bond0" in s and "$SGE_JOB_HOSTLIST" in s
    s, sub = _render_case("slurm", capsys)
    for d in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gres=gpu:4",
        "--partition=gpu",
        "--account=grp01",
        "--requeue",
        "--signal=B:USR2@300",
        "--open-mode=append",
    ):
        assert f"#SBATCH {d}\n" in s
    assert 'launcher_out=$(scontrol requeue "${SLURM_JOB_ID}" 2>&1)' in s
    assert "--dependency" not in sub
    s, sub = _render_case("slurm-chain", capsys)
    assert "#SBATCH --no-requeue\n" in s and "scontrol requeue" not in s
    assert sub.strip().splitlines()[2].count("'--dependency=afterany:<job id of link 1>'") == 1
    s, _ = _render_case("pjm", capsys)
    for d in ("-L node=4", "--mpi proc=16", "-L rscgrp=cxgfs-small", "-L elapse=168:00:00", "-g jh0001"):
        assert f"#PJM {d}\n" in s
    # the step job id a sub job waits for comes from the policy (launcher.outcome: 4567_2 -> 4567)
    assert "LAUNCHER_AFTER=$launcher_arg2" in s and '--sparam jid="${LAUNCHER_AFTER}"' in s
    s, _ = _render_case("local", capsys)
    assert "#SBATCH" not in s and "launcher_hosts() { echo localhost; }" in s
    for case in GOLDEN_CASES:
        s, _ = _render_case(case, capsys)
        assert '--deadline "$LAUNCHER_DEADLINE_ISO"' in s and "--config pixpro_k6" in s
        assert "launcher_command+=('data.shards=['\"$LAUNCHER_DATA_DIR/manifest.json]\")" in s
        assert (
            'hdf5_tools.cli stage <REPO>/tests/golden/launcher/shards.manifest --to "$LAUNCHER_DATA_DIR" '
            '--run "$RUN_DIR"'
        ) in s


def _all_variants():
    out = []
    for prof in SHIPPED:
        sched = load_profile(prof).scheduler
        # 4 nodes: the default batch (1024, fp32 ResNet-50) at 64 per GPU fits the 16 GiB cards
        # (the trainer refuses a per-GPU batch that cannot fit a profile's gpu_memory_gib)
        gpus = "0" if prof == "local" else str(load_profile(prof).gpus_per_node * 4)
        for method in ("mpirun", "horovodrun", "torchrun") + (("srun",) if sched == "slurm" else ()):
            for chain in ("1",) if sched == "local" else ("1", "3"):
                for data in ([], ["--data", str(MANIFEST)]) if chain == "1" else ([],):
                    out.append(
                        [
                            "--scheduler",
                            sched,
                            "--cluster",
                            prof,
                            "--gpus",
                            gpus,
                            "--launch",
                            method,
                            "--chain",
                            chain,
                            "--group",
                            "g1",
                        ]
                        + data
                    )
    return out


def test_every_rendered_script_passes_bash_n_and_shellcheck(tmp_path, capsys):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (Debian package 'shellcheck')")
    files = []
    for i, args in enumerate(_all_variants()):
        rc, out, err = render(args + ["--run-dir", f"/runs/v{i}"], capsys)
        assert rc == 0, (args, err)
        f = tmp_path / f"v{i}.sh"
        f.write_text(out)
        files.append(f)
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (args, r.stderr)
    assert len(files) >= 60
    r = subprocess.run(["shellcheck", "--severity=info", *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[:4000]


def test_user_template_dir_overrides_a_block(tmp_path, capsys):
    (tmp_path / "slurm.sh.j2").write_text(
        '{% extends "base.sh.j2" %}\n{% block directives %}\n#SBATCH --job-name={{ job.name|directive }}\n'
        "#SBATCH --constraint=site-special\n{% endblock %}\n"
        '{% block job_env %}\nLAUNCHER_JOB_ID="$SLURM_JOB_ID"\nLAUNCHER_RESTART_COUNT=0\n'
        "launcher_hosts() { hostname; }\n{% endblock %}\n"
    )
    rc, out, err = render(["--scheduler", "slurm", "--template-dir", str(tmp_path)], capsys)
    assert rc == 0, err
    assert "#SBATCH --constraint=site-special\n" in out and "--gres" not in out
    (tmp_path / "slurm.sh.j2").write_text("{{ job.no_such_field }}")
    rc, out, err = render(["--scheduler", "slurm", "--template-dir", str(tmp_path)], capsys)
    assert rc == 2 and "no_such_field" in err


def test_render_prints_the_exact_submit_commands(capsys):
    rc, out, err = render(["--scheduler", "pbs", "--gpus", "4", "--chain", "2", "--run-dir", "/r/x y"], capsys)
    assert rc == 0 and out.startswith("#!/bin/bash\n#PBS -N ")
    lines = err.strip().splitlines()
    assert lines[0] == "qsub -v LAUNCHER_LINK=0 -o '/r/x y/logs/pbs.out' '/r/x y/job/job.sh'"
    assert lines[1] == (
        "qsub -v LAUNCHER_LINK=1 -o '/r/x y/logs/pbs.out' -W 'depend=afterany:<job id of link 0>' '/r/x y/job/job.sh'"
    )


def test_sh_argv_turns_placeholders_into_variables():
    assert (
        sh_argv(["sbatch", f"--dependency=afterany:{AFTER}", f"LINK={LINK}", "/a b/job.sh"])
        == 'sbatch --dependency=afterany:"${LAUNCHER_AFTER}" LINK="${LAUNCHER_NEXT_LINK}" \'/a b/job.sh\''
    )
    assert sh_argv([f"x y{AFTER}"]) == "'x y'\"${LAUNCHER_AFTER}\""
    assert sh_argv([array("launcher_mpi_env"), "", "a,b"]) == "\"${launcher_mpi_env[@]}\" '' 'a,b'"


# ------------------------------------------------------------------ quoting: nothing executes


def test_hostile_values_execute_nothing(tmp_path, mpi_env):
    """Job names, paths, trainer values and profile env values with ; $( ) backticks quotes
    newlines and spaces reach the trainer literally and run nothing."""
    fixture = ROOT / "tests" / "fake_schedulers" / "fixture_trainer.py"
    bad = "x; touch PWNED_a $(touch PWNED_b) `touch PWNED_c` ' \" \\ \n end"
    run_dir = tmp_path / "run $(touch PWNED_d) `touch PWNED_e`; 'q\" \n2"
    profdir = tmp_path / "profiles"
    profdir.mkdir()
    (profdir / "hostile.toml").write_text(
        'name = "hostile"\nscheduler = "local"\ncpu_ranks_per_node = 1\nmpirun_flags = ["--oversubscribe"]\n'
        '[env]\nHOSTILE = "$(touch PWNED_f); `touch PWNED_g`"\n'
    )
    env = dict(mpi_env, PATH=f"{Path(sys.executable).parent}:{mpi_env['PATH']}")
    cmd = [
        sys.executable,
        "-m",
        "launcher.cli",
        "submit",
        "--scheduler",
        "local",
        "--cluster",
        "hostile",
        "--profile-dir",
        str(profdir),
        "--gpus",
        "0",
        "--name",
        bad,
        "--run-dir",
        str(run_dir),
        "--wait",
        "--trainer-command",
        f"{sys.executable} {fixture}",
        "steps=1",
        "step_time=0",
        f"note={bad}",
        "--msg",
        bad,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, (
        r.stderr,
        (run_dir / "logs" / "run.log").read_text() if (run_dir / "logs" / "run.log").exists() else "",
    )
    assert list(tmp_path.rglob("PWNED*")) == [] and list(Path.cwd().glob("PWNED*")) == []
    import json

    argv = json.loads((run_dir / "argv.log").read_text().splitlines()[0])
    assert f"note={bad}" in argv and f"msg={bad}" in argv
    assert argv[argv.index("--run-dir") + 1] == str(run_dir)
    assert (run_dir / "done").exists()


# ------------------------------------------------------------------ what the job will read, checked at submit


def test_data_the_job_reads_is_checked_before_submitting(tmp_path, capsys):
    """No shards, a folder, a shard for a manifest, missing flow pairs: one line at submit, not on the node."""
    import numpy as np

    from hdf5_tools import fake_sources
    from hdf5_tools.pack import PackConfig, pack

    full = tmp_path / "full"  # synth: carries its exact flows
    pack(PackConfig(src="synth:videos=2,frames=6,size=64x48,seed=0", out=str(full), nodes=2, progress=False))
    src = tmp_path / "src"  # frames only: every flow pair missing until 'hdf5_tools flow'
    for i in range(3):
        fake_sources.write_frame_folder(
            src, "train", f"v{i}", jpegs=[fake_sources.encode(np.zeros((16, 16, 3), np.uint8))] * 4
        )
    bare = tmp_path / "bare"
    pack(PackConfig(src=str(src), out=str(bare), nodes=2, shard_size=1, progress=False))
    (tmp_path / "empty").mkdir()

    def err(*args):
        rc, out, e = render(["--gpus", "0", "--run-dir", str(tmp_path / "r"), *map(str, args)], capsys)
        lines = e.strip().splitlines()
        assert rc == 2 and out == "" and len(lines) == 1, e
        return lines[0].removeprefix("launcher render: error: ")

    assert err("--frames", "6") == (
        "--data: the trainer config pixpro_k6 reads shards (data.synthetic=false) and none are given; add --data "
        "SHARDS/manifest.json (written by 'hdf5_tools pack'), or data.synthetic=true for the synthetic world"
    )
    assert err("--frames", "3").startswith("--data: the trainer config pixpro_k6 reads shards")
    assert err("--frames", "6", "--data", bare) == (
        f"--data: 9 of 9 flow pairs are missing (3 of 3 shards) and data.k=6 reads them from the shards; fill them "
        f"with 'hdf5_tools flow {bare} --model raft-small --weights raft-small.pth' (or --model dis), or estimate "
        f"them in training with data.flow_source=raft data.raft_weights=FILE"
    )
    shard = bare / "shard-n000-00000.h5"
    assert err("--frames", "6", "--data", shard) == (
        f"--data: {shard}: cannot read manifest: this is an HDF5 shard; give the manifest.json that "
        f"'hdf5_tools pack' wrote beside the shards (or its folder)"
    )
    assert err("--frames", "6", "--data", tmp_path / "empty") == (
        f"--data: {tmp_path / 'empty'} is a folder without a manifest.json; give the OUT folder of 'hdf5_tools pack' "
        f"or its manifest.json"
    )
    rc, _, e = render(
        ["--scheduler", "slurm", "--gpus", "0", "--nodes", "3", "--frames", "6", "--data", str(full)], capsys
    )
    assert rc == 2 and f"--data: {full}/manifest.json was packed for 2 node set(s) but the job has 3 nodes" in e

    def ok(*args):
        rc, out, e = render(["--gpus", "0", "--run-dir", str(tmp_path / "r"), *map(str, args)], capsys)
        assert rc == 0, e
        return out

    # The folder pack wrote finds its manifest.json; the job stages it the same way.
    assert f"hdf5_tools.cli stage {full / 'manifest.json'} --to" in ok("--frames", "6", "--data", full)
    ok("--frames", "6", "--data", full / "manifest.json")
    ok("--frames", "1", "--data", bare)  # k = 1 reads no flow
    ok("--frames", "6", "--data", bare, "data.flow_source=none", "data.mask=none")  # the no-flow control
    ok("--frames", "6", "data.synthetic=true")  # the synthetic world, packed by the trainer
    ok("--frames", "6", f"data.shards=[{full}]")  # the config names its shards
    ok("--preset", "cpu_small")  # the small preset uses the synthetic world
