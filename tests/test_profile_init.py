"""``launcher profile init/show/list``: the parsers on the real schedulers' answers, the profile
written from them (loads, validates, says where each value came from), the one-line errors, and
the job script's handling of a profile's ``modules``.

``tests/cluster_answers/`` holds what the suite's real one-node SLURM 22.05, OpenPBS 23.06 and
Grid Engine 8.1.9 clusters answered (captured from the daemons the scheduler test modules start);
GPU clusters are those answers with GPU lines added in their own formats. The same commands run
against the live daemons in tests/test_launcher_{slurm,pbs,sge}.py, where the written profile
runs a job unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from launcher import cluster_probe as cp
from launcher.clusters import ClusterProfile, load_profile, profile_from_dict
from launcher.profile_init import build, toml_value
from launcher.profile_show import profile_keys
from plumbing.errors import UserError

ANSWERS = Path(__file__).resolve().parent / "cluster_answers"
ROOT = Path(__file__).resolve().parents[1]


def answer(name: str) -> str:
    return (ANSWERS / name).read_text()


def asker(table):
    """``ask`` from a table {argv tuple: text}; an unexpected command fails the test."""
    asked = []

    def ask(argv):
        asked.append(tuple(argv))
        assert tuple(argv) in table, f"unexpected command {argv}"
        return table[tuple(argv)]

    ask.asked = asked
    return ask


SLURM = {
    tuple(cp.SLURM_PARTITIONS): answer("slurm-scontrol-show-partition-o.txt"),
    tuple(cp.slurm_nodes_argv("launchertest")): answer("slurm-sinfo-N-p-launchertest.txt"),
}
PBS = {
    tuple(cp.PBS_SERVER): answer("pbs-qstat-Bf.txt"),
    tuple(cp.PBS_QUEUES): answer("pbs-qstat-Qf.txt"),
    tuple(cp.PBS_NODES): answer("pbs-pbsnodes-av.txt"),
}
SGE = {
    tuple(cp.SGE_QUEUES): answer("sge-qconf-sql.txt"),
    tuple(cp.sge_queue_argv("all.q")): answer("sge-qconf-sq-all.q.txt"),
    tuple(cp.SGE_PES): answer("sge-qconf-spl.txt"),
    tuple(cp.sge_pe_argv("mpi")): answer("sge-qconf-sp-mpi.txt"),
    tuple(cp.SGE_COMPLEXES): answer("sge-qconf-sc.txt"),
    tuple(cp.SGE_HOSTS): answer("sge-qhost-q-F.txt"),
}


def lines_of(text: str):
    """{key: (value or None when commented out, the comment above it)} of a written profile."""
    out, note = {}, ""
    for line in text.splitlines():
        if (
            line.startswith("# ")
            and " = " in line
            and not line[2:].startswith(("sinfo", "scontrol", "qstat", "pbsnodes", "qconf", "qhost"))
        ):
            key = line[2:].split(" = ", 1)[0]
            if key.isidentifier():
                out[key] = (None, note)
                continue
        if line.startswith("#"):
            note = line[2:]
        elif " = " in line:
            key, value = line.split(" = ", 1)
            out[key] = (tomllib.loads(f"v = {value}")["v"], note)
    return out


def loads(text: str) -> ClusterProfile:
    return profile_from_dict(tomllib.loads(text), "written.toml")


# ------------------------------------------------------------------ SLURM


def test_slurm_answers_of_the_test_cluster():
    text, _ = build("slurm", None, "mine", asker(SLURM))
    got = lines_of(text)
    assert got["queue"] == ("launchertest", "scontrol show partition: Default=YES (partition launchertest)")
    assert got["gpus_per_node"] == (0, "sinfo: Gres=(null): no GPUs on any of the 1 nodes")
    assert got["cpus_per_node"] == (2, "sinfo: CPUs=2 on 1 of 1 nodes")
    assert got["exclusive"][0] is False and "OverSubscribe=NO ExclusiveUser=NO" in got["exclusive"][1]
    assert got["warning_signal"][0] == "USR2" and got["can_requeue"][0] is True
    # MaxTime=UNLIMITED, DefaultTime=NONE: nothing to learn, a commented line saying what to fill in
    assert got["max_walltime"] == (
        None,
        "scontrol show partition: MaxTime=UNLIMITED: the launcher needs a bound "
        "(default 24:00:00): your site's job time limit",
    )
    assert got["default_walltime"][0] is None and "DefaultTime=NONE" in got["default_walltime"][1]
    assert got["modules"][0] == [] and "module avail" in got["modules"][1]
    for key in ("gpu_memory_gib", "setup", "python", "mpirun_flags", "mail", "notify", "local_dir_var"):
        assert got[key][0] is None, key
    prof = loads(text)
    assert (prof.queue, prof.cpus_per_node, prof.gpus_per_node, prof.exclusive) == ("launchertest", 2, 0, False)
    assert prof.max_walltime_s == 24 * 3600 and prof.default_walltime_s == 3600  # the defaults


def test_slurm_gpu_partition_with_limits():
    """A university GPU partition: 4x A100 on 3 of 4 nodes, 2-day limit, 4-hour default, whole nodes."""
    line = answer("slurm-scontrol-show-partition-o.txt").strip()
    gpu = (
        line.replace("PartitionName=launchertest", "PartitionName=gpu")
        .replace("Default=YES", "Default=NO")
        .replace("MaxTime=UNLIMITED", "MaxTime=2-00:00:00")
        .replace("DefaultTime=NONE", "DefaultTime=04:00:00")
        .replace("OverSubscribe=NO", "OverSubscribe=EXCLUSIVE")
        .replace("TotalNodes=1", "TotalNodes=4")
    )
    nodes = "".join(
        f"g{i:02d}|64|512000|{g}\n"
        for i, g in enumerate(["gpu:a100:4(S:0-1)", "gpu:a100:4(S:0-1)", "gpu:a100:4(S:0-1)", "gpu:a100:2(S:0)"])
    )
    ask = asker({tuple(cp.SLURM_PARTITIONS): line + "\n" + gpu + "\n", tuple(cp.slurm_nodes_argv("gpu")): nodes})
    text, _ = build("slurm", "gpu", "uni", ask)
    got = lines_of(text)
    assert got["queue"] == ("gpu", "--queue (partition gpu)")
    assert got["gpus_per_node"] == (4, "sinfo: Gres=gpu:a100:4(S:0-1) on 3 of 4 nodes")
    assert got["cpus_per_node"] == (64, "sinfo: CPUs=64 on 4 of 4 nodes")
    assert got["max_walltime"] == ("48:00:00", "scontrol show partition: MaxTime=2-00:00:00")
    assert got["default_walltime"] == ("04:00:00", "scontrol show partition: DefaultTime=04:00:00")
    assert got["exclusive"][0] is True and got["max_nodes"][0] == 4
    assert 'description = "SLURM partition gpu: 4 nodes, 4 GPUs, 64 CPUs, 500 GiB each"' in text
    prof = loads(text)
    assert (prof.max_walltime_s, prof.default_walltime_s, prof.gpus_per_node) == (48 * 3600, 4 * 3600, 4)


def test_slurm_times_and_gres():
    assert cp.slurm_seconds("7-00:00:00") == 7 * 86400
    assert cp.slurm_seconds("12:00:00") == 12 * 3600
    assert cp.slurm_seconds("30:00") == 30 * 60  # MM:SS, not HH:MM
    assert cp.slurm_seconds("90") == 90 * 60
    assert cp.slurm_seconds("1-12") == 36 * 3600
    assert cp.slurm_seconds("UNLIMITED") is None and cp.slurm_seconds("NONE") is None
    assert cp.slurm_gpus("gpu:a100:4(S:0-1),mps:400") == 4
    assert cp.slurm_gpus("gpu:4") == 4 and cp.slurm_gpus("(null)") == 0
    assert cp.slurm_gpus("gpu:v100:2(S:0,1),gpu:t4:2") == 4


def test_unknown_queues_are_one_line_naming_the_ones_there_are():
    with pytest.raises(UserError, match=r"^--queue gpu: no such partition \(there are: launchertest\)$"):
        build("slurm", "gpu", "x", asker(SLURM))
    with pytest.raises(UserError, match=r"^--queue gpu: no such queue \(there are: workq, rt_HF\)$"):
        build("pbs", "gpu", "x", asker(PBS))
    with pytest.raises(UserError, match=r"^--queue gpu.q: no such cluster queue \(there are: all.q\)$"):
        build("sge", "gpu.q", "x", asker(SGE))


# ------------------------------------------------------------------ PBS


def test_pbs_answers_of_the_test_cluster():
    text, _ = build("pbs", None, "mine", asker(PBS))
    got = lines_of(text)
    assert got["queue"] == ("workq", "qstat -Bf: default_queue = workq (queue_type Execution)")
    assert got["gpus_per_node"] == (0, "pbsnodes: no resources_available.ngpus on any of the 1 nodes")
    assert got["cpus_per_node"] == (2, "pbsnodes: resources_available.ncpus = 2 on 1 of 1 nodes")
    assert got["place"][0] == "scatter" and "sharing = default_shared" in got["place"][1]
    assert got["can_requeue"][0] is False
    assert got["max_walltime"][0] is None and "resources_max.walltime: not set" in got["max_walltime"][1]
    prof = loads(text)
    assert (prof.queue, prof.cpus_per_node, prof.place) == ("workq", 2, "scatter")


def test_pbs_gpu_queue_with_walltime_limits():
    nodes = answer("pbs-pbsnodes-av.txt")
    gpu_nodes = "".join(
        nodes.replace("vm\n", f"gn{i}\n", 1)
        .replace(
            "     resources_available.ncpus = 2\n",
            "     resources_available.ncpus = 96\n     resources_available.ngpus = 8\n",
        )
        .replace("sharing = default_shared", "sharing = default_excl")
        for i in range(3)
    )
    queues = answer("pbs-qstat-Qf.txt").replace(
        "Queue: rt_HF\n",
        "Queue: rt_HF\n    resources_max.walltime = 168:00:00\n"
        "    resources_default.walltime = 01:00:00\n    resources_max.nodect = 2\n",
    )
    ask = asker(
        {tuple(cp.PBS_SERVER): answer("pbs-qstat-Bf.txt"), tuple(cp.PBS_QUEUES): queues, tuple(cp.PBS_NODES): gpu_nodes}
    )
    got = lines_of(build("pbs", "rt_HF", "abci-like", ask)[0])
    assert got["gpus_per_node"] == (8, "pbsnodes: resources_available.ngpus = 8 on 3 of 3 nodes")
    assert got["cpus_per_node"][0] == 96
    assert got["max_nodes"] == (2, "qstat -Qf: resources_max.nodect = 2")
    assert got["max_walltime"] == ("168:00:00", "qstat -Qf: resources_max.walltime=168:00:00")
    assert got["default_walltime"] == ("01:00:00", "qstat -Qf: resources_default.walltime=01:00:00")
    assert got["place"][0] == "scatter:excl"


def test_pbs_blocks_join_continued_lines():
    blocks = cp.parse_pbs_blocks(answer("pbs-qstat-Qf.txt"), "Queue:")
    assert list(blocks) == ["workq", "rt_HF"]
    assert blocks["workq"]["state_count"].endswith("Begun:0")
    assert blocks["rt_HF"]["started"] == "False"
    assert cp.pbs_seconds("48:00:00") == 48 * 3600 and cp.pbs_seconds("3600") == 3600


# ------------------------------------------------------------------ Grid Engine


def test_sge_answers_of_the_test_cluster():
    ask = asker(SGE)
    text, _ = build("sge", None, "mine", ask)
    got = lines_of(text)
    assert got["queue"] == ("all.q", "qconf -sql: all.q, the default cluster queue")
    assert got["parallel_env"] == (
        "mpi",
        "qconf -sq all.q: pe_list mpi; qconf -sp mpi: allocation_rule $fill_up, control_slaves TRUE; slots 2 per host",
    )
    assert got["gpus_per_node"] == (0, "qconf -sc: no consumable complex named like gpu: jobs cannot ask for GPUs")
    assert got["cpus_per_node"] == (2, "qhost: NCPU=2 on 1 of 1 hosts of all.q")
    assert got["warning_signal"][0] == "USR2" and "notify 00:00:60" in got["warning_signal"][1]
    assert got["local_dir_var"][0] == "TMPDIR" and got["node_resource"][0] is None
    assert got["max_walltime"][0] is None and "h_rt=INFINITY" in got["max_walltime"][1]
    assert ("qconf", "-sp", "mpi") in ask.asked
    prof = loads(text)
    assert (prof.parallel_env, prof.warning_signal, prof.gpu_resource) == ("mpi", "USR2", "gpu")


def test_sge_gpu_complex_and_h_rt():
    table = dict(SGE)
    table[tuple(cp.SGE_COMPLEXES)] = answer("sge-qconf-sc.txt").replace(
        "h_core ", "gpu                 gpu        INT       <=    YES         YES        0        0\nh_core ", 1
    )
    table[tuple(cp.sge_queue_argv("all.q"))] = (
        answer("sge-qconf-sq-all.q.txt")
        .replace("h_rt                  INFINITY", "h_rt                  72:00:00")
        .replace("slots                 2", "slots                 1,[vm=4]")
    )
    table[tuple(cp.SGE_HOSTS)] = answer("sge-qhost-q-F.txt").replace(
        "   hl:arch=lx-amd64", "   hc:gpu=4.000000\n   hl:arch=lx-amd64"
    )
    got = lines_of(build("sge", "all.q", "gpu", asker(table))[0])
    assert got["gpu_resource"] == ("gpu", "qconf -sc: gpu is a consumable complex (YES)")
    assert got["gpus_per_node"] == (4, "qhost -F: gpu=4 on 1 of 1 hosts of all.q")
    assert got["max_walltime"] == ("72:00:00", "qconf -sq all.q: h_rt=72:00:00")
    assert "slots 1,[vm=4] per host" in got["parallel_env"][1]
    assert cp.sge_values("1,[vm=4],[@gpu=8]") == ("1", {"vm": "4", "@gpu": "8"})


# ------------------------------------------------------------------ PJM, the written file, the commands


def test_pjm_from_the_options_alone():
    got = lines_of(
        build("pjm", "cx-small", "flow", asker({}), gpus_per_node=4, cpus_per_node=40, max_walltime="168:00:00")[0]
    )
    assert got["queue"] == ("cx-small", "--queue (PJM resource group, -L rscgrp=)")
    assert got["gpus_per_node"] == (4, "--gpus-per-node") and got["cpus_per_node"] == (40, "--cpus-per-node")
    assert got["max_walltime"] == ("168:00:00", "--max-walltime")
    assert got["local_dir_var"][0] is None and "PJM_LOCALTMP" in got["local_dir_var"][1]
    text, _ = build("pjm", None, "bare", asker({}))
    assert lines_of(text)["queue"][0] is None
    loads(text)


def test_every_key_a_written_file_names_is_a_profile_key():
    known = {key for _, key in profile_keys()}
    for sched, table in (("slurm", SLURM), ("pbs", PBS), ("sge", SGE), ("pjm", {})):
        text, _ = build(sched, None, "k", asker(table))
        assert set(lines_of(text)) <= known, set(lines_of(text)) - known
        # after the header, every value (written or commented out) is a block of two lines: its note, then it
        blocks = text.split("\n\n")[1:]
        assert len(blocks) == len(lines_of(text))
        for block in blocks:
            note, value = block.strip("\n").split("\n")
            assert note.startswith("# ") and len(note) > 6, block
            key = value.lstrip("# ").split(" = ")[0]
            assert key in known and lines_of(block)[key][1] == note[2:], block
    assert toml_value({"A": "1"}) == '{ A = "1" }' and toml_value(["a", "b"]) == '["a", "b"]'


def launcher(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        cwd=cwd,
        timeout=60,
    )


def test_init_writes_a_loadable_profile_refuses_to_overwrite_and_show_prints_every_key(tmp_path):
    out = tmp_path / "flow.toml"
    r = launcher(
        "profile",
        "init",
        "--scheduler",
        "pjm",
        "--queue",
        "cx-small",
        "--gpus-per-node",
        "4",
        "--cpus-per-node",
        "40",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert f"wrote {out} (pjm profile 'flow')" in r.stdout
    said = dict(l.strip().split(": ", 1) for l in r.stdout.splitlines()[1:3])
    assert said["from the cluster"] == 'queue="cx-small", can_requeue=false, gpus_per_node=4, cpus_per_node=40'
    todo = said["to fill in"].split(", ")
    assert {"gpu_memory_gib", "modules", "mail", "notify"} <= set(todo)
    assert not {"queue", "gpus_per_node", "cpus_per_node"} & set(todo)
    assert '# the --out file\'s name (--name sets another)\nname = "flow"\n' in out.read_text()
    prof = load_profile(str(out))
    assert (prof.name, prof.queue, prof.gpus_per_node) == ("flow", "cx-small", 4)
    before = out.read_text()
    r = launcher("profile", "init", "--scheduler", "pjm", "--out", str(out))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"launcher profile init: error: --out {out} exists (add --force to replace it)"
    ]
    assert out.read_text() == before
    r = launcher("profile", "show", str(out))
    assert r.returncode == 0, r.stderr
    rows = {l.split()[0]: l for l in r.stdout.splitlines()[1:]}
    assert set(rows) == {key for _, key in profile_keys()}
    assert rows["queue"].split() == ["queue", "=", '"cx-small"', "#", "file"]
    assert rows["gpu_memory_gib"].split() == ["gpu_memory_gib", "=", "0", "#", "default"]
    assert rows["max_walltime"].split() == ["max_walltime", "=", '"24:00:00"', "#", "default"]
    r = launcher("profile", "show", "abci3")  # a shipped profile, by name
    assert (
        r.returncode == 0
        and '"rt_HF"  # file' in r.stdout
        and r.stdout.startswith("# profile abci3 (pbs) from abci3.toml")
    )
    (tmp_path / "broken.toml").write_text('name = "broken"\nscheduler = "slurm"\ngpus = 4\n')
    r = launcher("profile", "list", "--profile-dir", str(tmp_path))
    assert r.returncode == 0 and f"[{out}]" in r.stdout and "abci3" in r.stdout
    assert "broken         (invalid: profile " in r.stdout and "unknown key 'gpus'" in r.stdout


def test_init_without_the_scheduler_commands_is_one_line_and_writes_nothing(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path / "empty"))
    out = tmp_path / "c.toml"
    for sched, cmd in (("slurm", "scontrol"), ("pbs", "qstat"), ("sge", "qconf")):
        r = subprocess.run(
            [sys.executable, "-m", "launcher.cli", "profile", "init", "--scheduler", sched, "--out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            f"launcher profile init: error: {cmd}: command not found — run this on a login node of the cluster"
        ]
        assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ modules in the job script

MODULE_INITS = (
    "/etc/profile.d/modules.sh",
    "/etc/profile.d/lmod.sh",
    "/usr/share/lmod/lmod/init/bash",
    "/usr/share/Modules/init/bash",
    "/usr/share/modules/init/bash",
)


def _run_script(tmp_path, profile_text):
    prof = tmp_path / "m.toml"
    prof.write_text(profile_text)
    run_dir = tmp_path / "run"
    r = launcher("render", "--scheduler", "slurm", "--cluster", str(prof), "--gpus", "0", "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr
    script = tmp_path / "job.sh"
    script.write_text(r.stdout)
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    return done.returncode, (run_dir / "logs" / "run.log").read_text(), run_dir


def test_modules_without_a_module_command_stop_the_job_with_one_line(tmp_path):
    if any(Path(p).exists() for p in MODULE_INITS):
        pytest.skip("this machine has an environment-modules init script")
    rc, log, _ = _run_script(tmp_path, 'name = "m"\nscheduler = "slurm"\nmodules = ["cuda/12.4"]\n')
    assert rc == 1
    assert log.strip().splitlines() == [
        "launcher: profile m lists modules but this node has no 'module' command (no /etc/profile.d/modules.sh "
        "or lmod.sh): put the line that defines it in the profile's setup"
    ]


def test_modules_load_in_order_and_a_failing_one_stops_the_job(tmp_path):
    # `module` defined by the profile's setup line, as a site's init script would; bad/1 does not load.
    setup = 'module() { echo "$*" >> "$RUN_DIR/modules.log"; [ "$2" != bad/1 ]; }'
    rc, log, run_dir = _run_script(
        tmp_path,
        f'name = "m"\nscheduler = "slurm"\nsetup = [{toml_value(setup)}]\n'
        'modules = ["cuda/12.4", "bad/1", "never/2"]\n',
    )
    assert rc == 1
    assert (run_dir / "modules.log").read_text().splitlines() == ["load cuda/12.4", "load bad/1"]
    assert log.strip().splitlines()[-1] == (
        "launcher: module load bad/1 failed (profile m; 'module avail' lists what there is)"
    )
