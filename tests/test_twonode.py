"""Multi-node paths on a real two-node cluster (tests/twonode.py): per-node shards, staging, ranks,
equivalence, preemption, a dying node, resuming on another node count, the environment on the
second node, and flow computation across nodes, all through the project's real commands
(`hdf5_tools pack/stage/verify`, `launcher submit/resume`, `python -m pixpro_of train`,
`hdf5_tools flow`, SLURM's sbatch/scontrol, mpirun, horovodrun).

Training is the cpu_small preset (ResNet-18, 64-px views) on 16 synthetic videos packed for 2
nodes (2 shards per node set), global batch 4: 4 steps per epoch, 2 epochs, a checkpoint every 2
steps. Each node has 2 slots but both share this machine's 2 cores: a step takes 1-2 s.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import twonode  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mpi]

PY = sys.executable
PROFILE = """name = "twonode"
scheduler = "slurm"
description = "the two-node test cluster of tests/twonode.py"
gpus_per_node = 0
cpus_per_node = 2
cpu_ranks_per_node = 1
exclusive = false
max_walltime = "01:00:00"
default_walltime = "00:20:00"
mpirun_flags = ["-bind-to", "none"]
local_dir_var = "TMPDIR"
warning_signal = "USR2"
warning_lead_s = 60
deadline_margin_s = 60
can_requeue = true
"""
PROFILE_VAR = ("PIXPRO_TWONODE_PROFILE_VAR", "set by the profile")
# Every training run: 2 epochs x 4 steps, a checkpoint every 2 steps (all kept).
EPOCHS, STEPS_PER_EPOCH = 2, 4
TOTAL = EPOCHS * STEPS_PER_EPOCH
TRAIN = [
    f"run.epochs={EPOCHS}",
    "run.deterministic=true",
    "data.num_workers=0",
    "log.tensorboard=false",
    "data.synthetic=false",
    "checkpoint.every_steps=2",
    "checkpoint.every_epochs=0",
    "checkpoint.keep=10",
]
# The cluster's nodes are namespaces of this machine: its /tmp (where the work folder is) is shared by
# both, which a real cluster's /tmp is not; the launcher refuses it unless told (launcher/sharedfs.py).
SHARED_TMP = ["--allow-node-local-paths"]
OMPI_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
TIMINGS = {}  # name -> seconds, printed at the end of the module


def wait_for(pred, timeout, what, interval=0.2):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster():
    t0 = time.time()
    try:
        c = twonode.up()
    except twonode.Unavailable as exc:
        pytest.skip(f"no two-node cluster on this machine: {exc}")
    TIMINGS["cluster up"] = time.time() - t0
    yield c
    t0 = time.time()
    twonode.down()
    print(
        "\ntwo-node timings (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items())
        + f", cluster down {time.time() - t0:.1f}"
    )


@pytest.fixture(scope="module")
def work(cluster, tmp_path_factory):
    """A directory both nodes see (the shared file system), with the profile and the shards."""
    d = tmp_path_factory.mktemp("twonode")
    (d / "twonode.toml").write_text(PROFILE + f'\n[env]\n{PROFILE_VAR[0]} = "{PROFILE_VAR[1]}"\n')
    r = subprocess.run(
        [
            PY,
            "-m",
            "hdf5_tools.cli",
            "pack",
            "synth:videos=16,frames=6,size=128x64,seed=0",
            str(d / "shards"),
            "--nodes",
            "2",
            "--shard-size",
            "60KB",
            "--no-progress",
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def shards15(cluster, work):
    """15 videos packed for 2 nodes: node sets of 8 and 7 videos (pack balances frames)."""
    shards = work / "shards15"
    r = subprocess.run(
        [
            PY,
            "-m",
            "hdf5_tools.cli",
            "pack",
            "synth:videos=15,frames=6,size=128x64,seed=0",
            str(shards),
            "--nodes",
            "2",
            "--shard-size",
            "40KB",
            "--no-progress",
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return shards


def manifest_sets(shards: Path):
    m = json.loads((shards / "manifest.json").read_text())
    sets = {}
    for s in m["shards"]:
        sets.setdefault(s["node"], set()).add(s["file"])
    return sets


def submit(cluster, work, name, *args, env=None):
    run_dir = work / name
    cmd = [
        PY,
        "-m",
        "launcher.cli",
        "submit",
        "--scheduler",
        "slurm",
        "--cluster",
        str(work / "twonode.toml"),
        "--gpus",
        "0",
        "--name",
        name,
        "--run-dir",
        str(run_dir),
        *SHARED_TMP,
        *args,
    ]
    out = subprocess.run(cmd, env=env or cluster.env, capture_output=True, text=True, cwd=str(work), timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert job_id.isdigit(), out.stdout
    return job_id, run_dir


def train_submit(cluster, work, name, *extra, nodes=2, rpn=1, launch="mpirun"):
    return submit(
        cluster,
        work,
        name,
        "--preset",
        "cpu_small",
        "--nodes",
        str(nodes),
        "--ranks-per-node",
        str(rpn),
        "--launch",
        launch,
        "--data",
        str(work / "shards" / "manifest.json"),
        *TRAIN,
        *extra,
    )


def events(run_dir):
    p = run_dir / "job" / "events.tsv"
    return [l.split("\t", 3)[3] for l in p.read_text().splitlines()] if p.exists() else []


def last_step(run_dir):
    p = run_dir / "metrics.csv"
    rows = p.read_text().splitlines()[1:] if p.exists() else []
    return int(rows[-1].split(",")[0]) if rows else 0


def metrics(run_dir):
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    return [dict(zip(head, l.split(","))) for l in lines[1:]]


def wait_done(run_dir, timeout, what, since=0):
    """Wait for the done marker and a final "finished" event (among the events after the first ``since``)."""

    def finished():
        ev = events(run_dir)[since:]
        if ev and ev[-1].startswith("fail"):
            raise AssertionError(f"{what}: {ev[-1]}\n" + tail(run_dir / "logs" / "run.log"))
        return (run_dir / "done").exists() and ev[-1:] == ["finished"]

    try:
        wait_for(finished, timeout, what)
    except AssertionError:
        print(tail(run_dir / "logs" / "run.log"))
        raise


def tail(p, n=60):
    return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else f"({p} missing)"


def checkpoint(run_dir, step=None):
    import torch

    ck = run_dir / "checkpoints"
    name = f"step_{step:08d}.pt" if step is not None else (ck / "latest").read_text().strip()
    return torch.load(ck / name, map_location="cpu", weights_only=True)


def same_weights(a, b, exact=True):
    import torch

    assert a["step"] == b["step"], (a["step"], b["step"])
    for k, v in a["model"].items():
        if exact or not v.is_floating_point():
            assert torch.equal(b["model"][k], v), f"{k} differs at step {a['step']}"
        else:
            torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def max_weight_diff(a, b):
    return max(
        (a["model"][k].double() - b["model"][k].double()).abs().max().item()
        for k in a["model"]
        if a["model"][k].is_floating_point()
    )


def rank_pids(node):
    """The trainer's rank processes on ``node`` (not the launchers whose command lines name it)."""
    out = []
    for p in twonode.pids_on(node):
        argv = twonode.cmdline(p)
        if (
            len(argv) >= 4
            and os.path.basename(argv[0]).startswith("python")
            and argv[1:4] == ["-m", "pixpro_of", "train"]
        ):
            out.append(p)
    return out


def open_shards(pid, under):
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(under)) and target.endswith(".h5"):
            out.add(target)
    return out


def observe_nodes(cluster, run_dir, name, job_id, timeout=240):
    """While the job trains: what each node holds in its node-local directory and which shard
    files its ranks have open (through the node-local path). Polls until both ranks have a shard open."""
    staged_name = f"{name}-{job_id}"
    seen = {n: {"staged": set(), "open": set(), "ranks": set()} for n in twonode.NODES}

    def look():
        if (run_dir / "done").exists() or (events(run_dir)[-1:] or [""])[0].startswith("fail"):
            raise AssertionError(
                "the run ended before both nodes were seen reading\n" + tail(run_dir / "logs" / "run.log")
            )
        for n in twonode.NODES:
            d = cluster.local_dir(n) / staged_name
            if d.is_dir():  # (a copy in progress has a hidden temporary name)
                seen[n]["staged"] |= {p.name for p in d.iterdir() if not p.name.startswith(".")}
            for pid in rank_pids(n):
                env = twonode.environ(pid)  # a rank's forked children have its command line, not a new rank
                seen[n]["ranks"].add(env.get("OMPI_COMM_WORLD_RANK", env.get("SLURM_PROCID", pid)))
                for path in open_shards(pid, cluster.local_mount / staged_name):
                    seen[n]["open"].add(Path(path).name)
        return all(seen[n]["open"] for n in twonode.NODES) and last_step(run_dir) >= 1

    wait_for(look, timeout, "both nodes' ranks reading shards", interval=0.1)
    return seen


def assert_own_node_sets(seen, sets, ranks_per_node=1):
    for i, n in enumerate(twonode.NODES):
        assert seen[n]["staged"] - {"manifest.json"} <= sets[i], (n, seen[n]["staged"])
        assert sets[i] <= seen[n]["staged"], f"{n} did not stage all of node set {i}: {seen[n]}"
        assert seen[n]["open"] and seen[n]["open"] <= sets[i], f"{n} read outside node set {i}: {seen[n]['open']}"
        assert len(seen[n]["ranks"]) == ranks_per_node, (n, seen[n]["ranks"])


def assert_unstaged(cluster, name, job_id):
    for n in twonode.NODES:
        left = [p.name for p in cluster.local_dir(n).iterdir() if p.name.startswith(f"{name}-")]
        assert left == [], f"staged data left on {n}: {left}"


def job_state(cluster, job_id):
    return cluster.job_fields(job_id).get("JobState", "")


def stepd_alive(job_id):
    tag = f"[{job_id}."
    return any(
        " ".join(twonode.cmdline(p)).startswith("slurmstepd") and tag in " ".join(twonode.cmdline(p))
        for p in twonode._pids()
    )


@pytest.fixture(scope="module")
def ref(cluster, work):
    """The reference: 2 nodes x 1 Horovod rank, mpirun (the profile's default), uninterrupted, with
    what each node staged and read while it trained; its training is the train stage of a pipeline
    from the packed shards (flow across both nodes, nothing left to compute -> verify -> train ->
    convert), each stage a job that waits for the one before it (afterok)."""
    t0 = time.time()
    pipe = work / "ref-pipe"
    cmd = [
        PY,
        "-m",
        "launcher.cli",
        "pipeline",
        "--scheduler",
        "slurm",
        "--cluster",
        str(work / "twonode.toml"),
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--nodes",
        "2",
        "--ranks-per-node",
        "1",
        "--launch",
        "mpirun",
        "--data",
        str(work / "shards" / "manifest.json"),
        "--flow-model",
        "dis",
        "--dir",
        str(pipe),
        *SHARED_TMP,
        *TRAIN,
    ]
    out = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, cwd=str(work), timeout=120)
    assert out.returncode == 0, out.stderr
    run_dir = pipe / "train"
    job_id = (run_dir / "job" / "jobs.tsv").read_text().splitlines()[0].split("\t")[3]
    name = "ref-pipe-train"
    seen = observe_nodes(cluster, run_dir, name, job_id)
    wait_done(run_dir, 300, "the reference run")
    wait_for(lambda: not stepd_alive(job_id), 60, "the reference job to end")
    wait_for(lambda: (pipe / "convert" / "done").exists(), 120, "the pipeline's convert stage")
    TIMINGS["ref 2x1 mpirun (pipeline)"] = time.time() - t0
    flow_log = (pipe / "flow" / "logs" / "run.log").read_text()
    assert "flow: mpirun with 2 ranks" in flow_log and "launcher: start restart=0 host=node1" in flow_log
    status = subprocess.run(
        [PY, "-m", "launcher.cli", "status", str(pipe)], env=cluster.env, capture_output=True, text=True, timeout=60
    ).stdout
    assert [l.split()[:2] for l in status.splitlines()[1:]] == [
        [s, "done"] for s in ("flow", "verify", "train", "convert")
    ], status
    return {"run_dir": run_dir, "job_id": job_id, "name": name, "seen": seen}


# ---------------------------------------------------------------------------- the cluster itself
def test_the_cluster_has_two_real_nodes(cluster, work):
    """Hostnames, addresses, node-local scratch, no route out, SLURM's view, the ssh stand-in."""
    for n in twonode.NODES:
        r = cluster.run_on(
            n,
            [
                "sh",
                "-c",
                "hostname; ip -4 -o addr show dev eth0; ip -4 route; "
                'echo x > "$PIXPRO_TWONODE_ROOT/local/mark"; ls "$PIXPRO_TWONODE_ROOT/local"',
            ],
        )
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == n
        assert f"inet {twonode.ADDR[n]}/24" in lines[1]
        assert not any(l.startswith("default") for l in lines), "a node must have no route out"
        assert (cluster.local_dir(n) / "mark").exists()
    assert not (cluster.local_mount / "mark").exists(), "node-local scratch must not be the shared directory"
    # The stand-in: options on both sides of the host (as horovodrun writes them), a fresh environment.
    r = subprocess.run(
        [
            "ssh",
            "-o",
            "StrictHostKeyChecking=no",
            "node2",
            "-p",
            "22",
            "echo $(hostname) ${PIXPRO_TWONODE_ROOT:-fresh}",
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "node2 fresh"), r.stderr
    r = subprocess.run(["ssh", "node9", "true"], env=cluster.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and "node9" in r.stderr
    assert cluster.node_states() == {"node1": "idle", "node2": "idle"}
    # An sbatch job over both nodes: the batch script on node1, one srun task per node.
    out = work / "hello.out"
    r = subprocess.run(
        [
            "sbatch",
            "--nodes=2",
            "--ntasks-per-node=1",
            f"--output={out}",
            "--wrap",
            "echo batch $(hostname) $SLURM_JOB_NODELIST; srun hostname | sort",
        ],
        env=cluster.env,
        cwd=str(work),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    job = r.stdout.split()[-1]
    wait_for(
        lambda: out.exists() and len(out.read_text().splitlines()) >= 3 and not stepd_alive(job), 60, "the hello job"
    )
    assert out.read_text().splitlines() == ["batch node1 node[1-2]", "node1", "node2"]


# ---------------------------------------------------------------------------- staging and reading
def test_mpirun_each_node_stages_and_reads_only_its_node_set(cluster, work, ref):
    run_dir, job_id, name = ref["run_dir"], ref["job_id"], ref["name"]
    sets = manifest_sets(work / "shards")
    assert len(sets[0]) == len(sets[1]) == 2 and not sets[0] & sets[1]
    assert_own_node_sets(ref["seen"], sets)
    log = (run_dir / "logs" / "run.log").read_text()
    assert "stage: node 0 of 2: copied 2 shards" in log and "stage: node 1 of 2: copied 2 shards" in log
    assert log.count("stage: node ") == 2, "one copier per node"
    assert "launcher: start restart=0 host=node1" in log
    assert (run_dir / "job" / f"hostfile.{job_id}").read_text() == "node1 slots=1\nnode2 slots=1\n"
    ck = checkpoint(run_dir)
    assert ck["step"] == TOTAL and ck["world_size"] == 2 and ck["steps_per_epoch"] == STEPS_PER_EPOCH
    assert events(run_dir)[-1] == "finished"
    assert_unstaged(cluster, name, job_id)


@pytest.mark.parametrize("launch", ["srun", "horovodrun"])
def test_srun_and_horovodrun_stage_per_node_and_match_mpirun(cluster, work, ref, launch):
    """The same 2 x 1 training started by srun (DDP, no MPI: SLURM's MpiDefault=none) and by
    horovodrun (over the ssh stand-in): the same node sets read, the same weights after 2 steps."""
    if launch == "horovodrun" and not shutil.which("horovodrun", path=cluster.env["PATH"]):
        pytest.skip("horovodrun is not installed (make setup builds Horovod)")
    t0 = time.time()
    name = f"launch-{launch}"
    job_id, run_dir = train_submit(cluster, work, name, "run.max_steps=2", launch=launch)
    seen = observe_nodes(cluster, run_dir, name, job_id)
    wait_done(run_dir, 300, f"the {launch} run")
    wait_for(lambda: not stepd_alive(job_id), 60, "the job to end")
    TIMINGS[f"{launch} 2x1, 2 steps"] = time.time() - t0
    assert_own_node_sets(seen, manifest_sets(work / "shards"))
    assert f"train: {launch} with 2 ranks" in "\n".join(events(run_dir))
    b = checkpoint(run_dir)
    assert b["step"] == 2
    same_weights(checkpoint(ref["run_dir"], 2), b, exact=True)
    assert_unstaged(cluster, name, job_id)


# ---------------------------------------------------------------------------- equivalence
def test_two_ranks_per_node_train_like_one_rank_per_node(cluster, work, ref):
    """ARCHITECTURE.md: with the same node sets, R ranks per node see exactly the samples of 1 rank
    per node at the same global batch: 2 nodes x 2 ranks = 2 nodes x 1 rank within floating-point
    tolerance (only the summation order differs). (1 node x 2 ranks, which reads both node sets in
    one node's order, is the documented difference: test_resume_on_another_node_count...)"""
    t0 = time.time()
    job_id, run_dir = train_submit(cluster, work, "eq-2x2", "run.max_steps=2", rpn=2)
    seen = observe_nodes(cluster, run_dir, "eq-2x2", job_id)
    wait_done(run_dir, 300, "the 2 x 2 run")
    TIMINGS["2x2, 2 steps"] = time.time() - t0
    assert_own_node_sets(seen, manifest_sets(work / "shards"), ranks_per_node=2)
    a, b = checkpoint(ref["run_dir"], 2), checkpoint(run_dir)
    assert b["world_size"] == 4 and b["steps_per_epoch"] == STEPS_PER_EPOCH
    same_weights(a, b, exact=False)
    losses = [(float(a["loss"]), float(b["loss"])) for a, b in zip(metrics(run_dir), metrics(ref["run_dir"]))]
    assert len(losses) == 2 and all(abs(x - y) < 1e-4 for x, y in losses), losses
    print(f"2x2 vs 2x1 after 2 steps: max weight diff {max_weight_diff(a, b):.2e}")


# ---------------------------------------------------------------------------- preemption
def restart_now(cluster, job_id, restarts_seen):
    """Start a requeued job now instead of after SLURM's ~120 s BeginTime hold."""
    before = restarts_seen()
    settled = None
    end = time.time() + 90
    while time.time() < end:
        f = cluster.job_fields(job_id)
        if (
            f.get("JobState") == "PENDING"
            and f.get("Reason") == "BeginTime"
            and not stepd_alive(job_id)
            and all(s == "idle" for s in cluster.node_states().values())
        ):
            # slurmd refuses for a few seconds to launch a job id it has just killed.
            settled = settled or time.time()
            if time.time() - settled >= 3.0:
                cluster.scontrol("update", f"jobid={job_id}", "StartTime=now", check=False)
        else:
            settled = None
            if restarts_seen() > before:
                return
        time.sleep(0.3)
    raise AssertionError(f"the requeued job {job_id} did not start again: {cluster.job_fields(job_id)}")


def test_scontrol_requeue_of_a_two_node_job_loses_no_step(cluster, work, ref):
    t0 = time.time()
    name = "preempt"
    job_id, run_dir = train_submit(cluster, work, name)
    log = run_dir / "logs" / "run.log"

    def restarts():
        return log.read_text().count("launcher: start restart=") if log.exists() else 0

    def resumed():
        p = run_dir / "logs" / "train.log"
        return [int(m) for m in re.findall(r"resumed from step (\d+)", p.read_text())] if p.exists() else []

    at = random.Random().randint(2, TOTAL - 2)
    wait_for(lambda: last_step(run_dir) >= at, 300, f"step {at}")
    t_req = time.time()
    cluster.scontrol("requeue", job_id)
    wait_for(
        lambda: job_state(cluster, job_id) == "PENDING" and not stepd_alive(job_id),
        120,
        "the preempted job to end on both nodes",
    )
    reached = last_step(run_dir)
    restart_now(cluster, job_id, restarts)
    wait_for(lambda: resumed(), 120, "the resumed job to load its checkpoint")
    back = time.time() - t_req
    wait_done(run_dir, 300, "the requeued run")
    wait_for(lambda: not stepd_alive(job_id), 60, "the job to end")
    TIMINGS["requeue run"] = time.time() - t0
    print(
        f"requeued at step {at}: preempted job reached step {reached}, resumed from {resumed()[0]}; "
        f"requeue -> resumed {back:.1f} s (StartTime=now instead of the 120 s hold)"
    )
    assert resumed() == [reached], "the stop checkpoint is the step the preempted job reached: 0 steps lost"
    ev = "\n".join(events(run_dir))
    assert "checkpointed: preemption 1 of 100" in ev and "requeued by SLURM" in ev
    rows = [int(r["step"]) for r in metrics(run_dir)]
    assert rows == list(range(1, TOTAL + 1)), "every step logged once"
    # Each node stages its own set again (SLURM refuses the clean-up's srun while it ends the job,
    # so node2's copy may still be there: it is verified and reused, never mixed up).
    for i in range(2):
        staged = re.findall(rf"stage: node {i} of 2: copied (\d+) shards .*?, (\d+) already there", log.read_text())
        assert len(staged) == 2 and all(int(c) + int(k) == 2 for c, k in staged), staged
    same_weights(checkpoint(ref["run_dir"]), checkpoint(run_dir), exact=True)
    assert_unstaged(cluster, name, job_id)


# ---------------------------------------------------------------------------- a node dies
def test_a_dead_node_ends_the_job_within_60s_naming_it_and_the_next_link_resumes(cluster, work, ref):
    t0 = time.time()
    name = "nodedeath"
    job_id, run_dir = train_submit(cluster, work, name)
    at = random.Random().randint(3, TOTAL - 3)  # after the step-2 checkpoint
    wait_for(lambda: last_step(run_dir) >= at, 300, f"step {at}")
    killed_at = time.time()
    n_killed = twonode.kill_node("node2")
    step_at_death = last_step(run_dir)
    fail_s = None
    while time.time() - killed_at < 90:
        ev = events(run_dir)
        if fail_s is None and ev and ev[-1].startswith("fail"):
            fail_s = time.time() - killed_at
        f = cluster.job_fields(job_id)
        if f.get("JobState") not in ("RUNNING", None) and f.get("ExitCode", "0:0") != "0:0":
            break
        time.sleep(0.2)
    end_s = time.time() - killed_at
    f = cluster.job_fields(job_id)
    print(
        f"killed {n_killed} processes on node2 at step {step_at_death}: fail event after {fail_s} s, "
        f"SLURM job {f.get('JobState')} exit {f.get('ExitCode')} after {end_s:.1f} s"
    )
    print(tail(run_dir / "logs" / "run.log", 12))
    assert fail_s is not None and end_s <= 60, f"the job must end within 60 s of the node's death: {f}"
    assert f.get("ExitCode", "0:0").split(":")[0] != "0"
    fail = events(run_dir)[-1]
    assert "node2" in fail and "node1" not in fail.split("no answer from", 1)[-1], fail
    # node2 comes back; `launcher resume` submits the next link, which resumes from the newest checkpoint.
    saved_latest = (run_dir / "checkpoints" / "latest").read_text()
    cluster.start_slurmd("node2")
    cluster.wait_idle(120)
    before = len(events(run_dir))
    r = subprocess.run(
        [PY, "-m", "launcher.cli", "resume", str(run_dir)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(work),
    )
    assert r.returncode == 0, r.stderr
    wait_done(run_dir, 300, "the resumed run", since=before)
    TIMINGS["node death + resume"] = time.time() - t0
    train_log = (run_dir / "logs" / "train.log").read_text()
    newest = int(re.search(r"step_(\d+)", saved_latest).group(1))
    assert newest >= 2 and step_at_death - newest <= 3
    assert re.findall(r"resumed from step (\d+)", train_log) == [str(newest)], (
        "the next link resumes from the newest checkpoint"
    )
    same_weights(checkpoint(ref["run_dir"]), checkpoint(run_dir), exact=True)
    left = [p.name for p in cluster.local_dir("node1").iterdir() if p.name.startswith(f"{name}-")]
    assert left == [], f"node1 kept the dead job's staged data: {left}"
    TIMINGS["node death: fail event s"] = fail_s
    TIMINGS["node death: job end s"] = end_s


# ---------------------------------------------------------------------------- node count changes
def mpirun_on(cluster, hosts, ranks, run_dir, work, *extra, shards=None):
    """`mpirun` started on node1 as a user would (the ssh stand-in reaches node2), the trainer on the
    shared shards."""
    hostfile = run_dir.parent / f"{run_dir.name}.hosts"
    hostfile.write_text("".join(f"{h} slots={ranks // len(hosts)}\n" for h in hosts))
    fwd = [a for v in ("PATH", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") for a in ("-x", v)]
    return cluster.on(
        "node1",
        [
            "mpirun",
            "-np",
            str(ranks),
            "-hostfile",
            hostfile,
            "-map-by",
            f"ppr:{ranks // len(hosts)}:node",
            "-bind-to",
            "none",
            *fwd,
            PY,
            "-m",
            "pixpro_of",
            "train",
            "--run-dir",
            run_dir,
            "--config",
            "cpu_small",
            *TRAIN,
            f"data.shards=[{(shards or work / 'shards') / 'manifest.json'}]",
            "dist.backend=horovod",
            *extra,
        ],
    )


def run_until_stopped(cluster, argv, run_dir, at_least):
    """Start ``argv``, SIGUSR2 to mpirun once the run passed step ``at_least``; expect exit 75."""
    env = dict(cluster.env, **OMPI_ROOT)
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: last_step(run_dir) >= at_least or p.poll() is not None, 300, f"step {at_least}")
        p.send_signal(signal.SIGUSR2)  # the on-node chain execs: this is mpirun
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 75, out[-3000:]
    return checkpoint(run_dir)["step"]


def test_resume_on_another_node_count_keeps_step_and_schedule(cluster, work, ref):
    """1 node -> 2 nodes -> 1 node in one run, as ARCHITECTURE.md says: each resume continues at the
    saved step with the same steps per epoch and learning-rate schedule; the node count decides
    which shards each node reads and in which order, so 1 node x 2 ranks trains on other batches
    than 2 nodes x 1 rank (other losses from step 1) and the weights end different."""
    t0 = time.time()
    run_dir = work / "nodecount"
    s1 = run_until_stopped(cluster, mpirun_on(cluster, ["node1"], 2, run_dir, work), run_dir, 2)
    s2 = run_until_stopped(cluster, mpirun_on(cluster, ["node1", "node2"], 2, run_dir, work), run_dir, s1 + 1)
    env = dict(cluster.env, **OMPI_ROOT)
    r = subprocess.run(
        mpirun_on(cluster, ["node1"], 2, run_dir, work), env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    TIMINGS["1 -> 2 -> 1 nodes"] = time.time() - t0
    log = (run_dir / "logs" / "train.log").read_text()
    assert re.findall(r"resumed from step (\d+)", log) == [str(s1), str(s2)]
    assert 2 <= s1 < s2 < TOTAL
    rows, ref_rows = metrics(run_dir), metrics(ref["run_dir"])
    assert [int(r["step"]) for r in rows] == list(range(1, TOTAL + 1)), "no step lost or repeated"
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows], "the schedule carries over"
    assert all(a["loss"] != b["loss"] for a, b in zip(rows[:s1], ref_rows[:s1])), (
        "1 node reads both node sets in its own order: other batches than 2 nodes from step 1"
    )
    final = checkpoint(run_dir)
    assert final["step"] == TOTAL and final["steps_per_epoch"] == STEPS_PER_EPOCH and final["world_size"] == 2
    d = max_weight_diff(checkpoint(ref["run_dir"]), final)
    assert d > 1e-3, f"the weights should differ from the uninterrupted 2-node run's (max diff {d})"
    print(f"1 node to step {s1}, 2 nodes to {s2}, 1 node to {TOTAL}: max weight diff to the 2-node run {d:.2e}")


def test_node_sets_of_different_sizes_take_the_same_steps_on_every_node(cluster, work, shards15):
    """15 videos pack into node sets of 8 and 7: every rank must take the same number of steps
    per epoch (the smaller node's), or the ranks of node2 end the run early and node1 hangs."""
    t0 = time.time()
    videos = {}
    for s in json.loads((shards15 / "manifest.json").read_text())["shards"]:
        videos[s["node"]] = videos.get(s["node"], 0) + s["num_videos"]
    assert videos == {0: 8, 1: 7}
    run_dir = work / "uneven"
    argv = mpirun_on(
        cluster, ["node1", "node2"], 2, run_dir, work, "run.epochs=1", "optim.warmup_epochs=0", shards=shards15
    )
    r = subprocess.run(argv, env=dict(cluster.env, **OMPI_ROOT), capture_output=True, text=True, timeout=300)
    TIMINGS["uneven node sets"] = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    logs = run_dir / "logs"
    for f in ("train.log", "train.rank1.log"):
        assert "starting: 3 steps (1 epochs x 3 steps)" in (logs / f).read_text(), f
    assert "node sets differ: 8/7 videos" in (logs / "train.log").read_text()
    assert checkpoint(run_dir)["step"] == 3 and (run_dir / "done").exists()


# ---------------------------------------------------------------------------- environment on node2
def test_profile_and_run_variables_reach_the_rank_on_node2(cluster, work):
    """mpirun launching over ssh (as on clusters without SLURM integration): the stand-in gives the
    remote side a fresh environment, so only what the job forwards (-x) reaches node2; Horovod
    there sees 2 hosts (local size 1, cross size 2)."""
    (work / "twonode-rsh.toml").write_text(
        PROFILE.replace('name = "twonode"', 'name = "twonode-rsh"')
        + f'\n[env]\n{PROFILE_VAR[0]} = "{PROFILE_VAR[1]}"\nOMPI_MCA_plm = "rsh"\n'
    )
    env = dict(cluster.env, PIXPRO_TWONODE_SUBMIT_ONLY="not forwarded")
    run_dir = work / "envcheck"
    out = subprocess.run(
        [
            PY,
            "-m",
            "launcher.cli",
            "submit",
            "--scheduler",
            "slurm",
            "--cluster",
            str(work / "twonode-rsh.toml"),
            "--gpus",
            "0",
            "--nodes",
            "2",
            "--name",
            "envcheck",
            *SHARED_TMP,
            "--run-dir",
            str(run_dir),
            "--trainer-command",
            f"{PY} {HERE / 'twonode' / 'rank_env.py'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(work),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    wait_for(lambda: (events(run_dir)[-1:] or [""])[0].startswith(("finished", "fail")), 120, "the env job")
    recs = {}
    for i in range(2):
        p = run_dir / "env" / f"rank{i}.json"
        assert p.exists(), tail(run_dir / "logs" / "run.log")
        recs[i] = json.loads(p.read_text())
    assert recs[0]["host"] == "node1" and recs[1]["host"] == "node2"
    for i in range(2):  # Horovod sees two hosts: one local rank each, cross rank = node
        assert recs[i]["horovod"] == {
            "rank": i,
            "size": 2,
            "local_rank": 0,
            "local_size": 1,
            "cross_rank": i,
            "cross_size": 2,
        }, recs[i].get("horovod")
    assert recs[1]["netns"] == os.stat(f"/run/netns/{twonode.NETNS['node2']}").st_ino
    r1, r0 = recs[1]["env"], recs[0]["env"]
    assert r1.get(PROFILE_VAR[0]) == PROFILE_VAR[1]
    assert r1.get("RUN_DIR") == str(run_dir) and r1.get("LAUNCHER_DEADLINE", "").isdigit()
    assert r1["PATH"] == r0["PATH"] and r1["PATH"].split(":")[0] == str(Path(PY).parent), r1["PATH"]
    assert recs[1]["python"] == PY
    assert r1.get("MASTER_ADDR") == "node1" and r1.get("LAUNCHER_LOCALDIR") == str(cluster.local_mount)
    # The control: set only where the job was submitted, it reaches node1's rank (mpirun's own
    # environment) but not node2's: the stand-in really starts node2's side afresh.
    assert r0.get("PIXPRO_TWONODE_SUBMIT_ONLY") == "not forwarded"
    assert "PIXPRO_TWONODE_SUBMIT_ONLY" not in r1


# ---------------------------------------------------------------------------- stage and flow over mpirun
def test_stage_under_mpirun_elects_one_copier_on_each_node(cluster, work):
    """Outside SLURM the job stages with `mpirun -map-by ppr:N:node`: with 2 ranks on each node,
    one copier per node, each into its own node-local disk."""
    hostfile = work / "stage.hosts"
    hostfile.write_text("node1 slots=2\nnode2 slots=2\n")
    dest = cluster.local_mount / "stage-mpi"
    fwd = [a for v in ("PATH", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") for a in ("-x", v)]
    r = cluster.run_on(
        "node1",
        [
            "mpirun",
            "-np",
            "4",
            "-hostfile",
            hostfile,
            "-map-by",
            "ppr:2:node",
            "-bind-to",
            "none",
            *fwd,
            PY,
            "-m",
            "hdf5_tools.cli",
            "stage",
            work / "shards" / "manifest.json",
            "--to",
            dest,
        ],
        env=dict(cluster.env, **OMPI_ROOT),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(l for l in r.stdout.splitlines() if l.startswith("stage: "))
    assert [l.split(":")[1].strip() for l in lines] == ["node 0 of 2", "node 1 of 2"], r.stdout
    sets = manifest_sets(work / "shards")
    for i, n in enumerate(twonode.NODES):
        got = {p.name for p in (cluster.local_dir(n) / "stage-mpi").iterdir()}
        assert got == sets[i] | {"manifest.json", ".pixpro-stage"}, (n, got)  # the run's marker (hdf5_tools.stage)
        shutil.rmtree(cluster.local_dir(n) / "stage-mpi")


def test_flow_compute_over_mpirun_on_both_nodes_has_one_writer_per_shard(cluster, work, shards15):
    """`hdf5_tools flow` with one rank on each node over shared shards: every shard is
    opened by exactly one process (its owner), the shards verify, and the flows are byte for byte
    those of a one-process run."""
    src = shards15
    one, two = work / "flow1", work / "flow2"
    shutil.copytree(src, one)
    shutil.copytree(src, two)
    shard_names = sorted(p.name for p in src.glob("*.h5"))
    assert len(shard_names) >= 4, shard_names
    r = subprocess.run(
        [PY, "-m", "hdf5_tools", "flow", str(one), "--model", "dis", "--recompute", "--no-progress"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    hostfile = work / "flow.hosts"
    hostfile.write_text("node1 slots=1\nnode2 slots=1\n")
    fwd = [a for v in ("PATH", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") for a in ("-x", v)]
    openers = {}  # shard -> {(node, pid, writable)} over the whole run
    clashes = []  # samples in which a shard open for writing was open in another process too
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            now = {}
            for n in twonode.NODES:
                for pid in twonode.pids_on(n):
                    try:
                        fds = os.listdir(f"/proc/{pid}/fd")
                    except OSError:
                        continue
                    for fd in fds:
                        try:
                            target = os.readlink(f"/proc/{pid}/fd/{fd}")
                            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                                flags = int(f.read().split("flags:")[1].split()[0], 8)
                        except (OSError, IndexError, ValueError):
                            continue
                        if target.startswith(str(two)) and target.endswith(".h5"):
                            now.setdefault(Path(target).name, set()).add((n, pid, bool(flags & os.O_RDWR)))
            for shard, who in now.items():
                if any(w for _, _, w in who) and len({pid for _, pid, _ in who}) > 1:
                    clashes.append((shard, who))
                openers.setdefault(shard, set()).update(who)
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        r = cluster.run_on(
            "node1",
            [
                "mpirun",
                "-np",
                "2",
                "-hostfile",
                hostfile,
                "-map-by",
                "ppr:1:node",
                "-bind-to",
                "none",
                *fwd,
                PY,
                "-m",
                "hdf5_tools",
                "flow",
                two,
                "--model",
                "dis",
                "--recompute",
                "--no-progress",
                "--chunk",
                "1",
                "--batch",
                "1",
                "-v",
            ],
            env=dict(cluster.env, **OMPI_ROOT),
            timeout=300,
        )
    finally:
        stop.set()
        t.join(timeout=10)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = re.findall(r"rank (\d): (\d+) pair\(s\)", r.stdout + r.stderr)
    assert sorted(int(k) for k, _ in ranks) == [0, 1] and all(int(n) > 0 for _, n in ranks), r.stdout
    writers = {shard: {(n, pid) for n, pid, w in who if w} for shard, who in openers.items()}
    assert set(writers) == set(shard_names), f"not every shard was seen open: {openers}"
    for shard, who in writers.items():
        assert len(who) == 1, f"{shard} opened for writing by {who}"
    assert clashes == [], f"a shard open for writing was open in another process at the same time: {clashes[:3]}"
    nodes = {n for who in writers.values() for n, _ in who}
    assert nodes == set(twonode.NODES), f"the writers of the shards should be on both nodes: {writers}"
    r = subprocess.run(
        [PY, "-m", "hdf5_tools.cli", "verify", *map(str, sorted(two.glob("*.h5")))],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for name in shard_names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), f"{name} differs from the 1-process run"
