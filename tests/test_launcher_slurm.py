"""Real SLURM on this machine: submit with the launcher, preempt with ``scontrol requeue``,
and the run finishes from its checkpoint with the same final state as an uninterrupted run.

The fixture starts its own munged (private socket), slurmctld and slurmd (private ports, spool
and state directories under a temporary directory, ``SLURM_CONF`` pointing at its own
slurm.conf), so it touches nothing of the system's SLURM set-up, and stops them by PID. The
slurm.conf keeps SLURM's defaults where one node allows: ``MpiDefault=none`` (no PMI: staging
must find its node without MPI) and the default ``KillWait`` of 30 s (the time a job has between
SIGTERM and SIGKILL on requeue or preemption). Only process tracking and task binding differ
(``proctrack/linuxproc``, ``task/none``: this machine gives no cgroup tree to slurmd).
Installs ``slurm-wlm munge`` from Debian when they are missing (root only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fake_schedulers"
FIXTURE = FAKES / "fixture_trainer.py"
sys.path.insert(0, str(FAKES))
sys.path.insert(0, str(HERE))
from fixture_trainer import advance  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mpi]


def _install_if_missing() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("slurm-wlm/munge are not installed and this user cannot install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def slurm():
    """A one-node SLURM cluster; yields the environment for its client commands."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM daemons need root here")
    _install_if_missing()
    # munged runs as user munge and must reach its socket: pytest's tmp dirs are root-only.
    base = Path(tempfile.mkdtemp(prefix="launcher-slurm-"))
    for sub in ("ctld", "d", "munge", "log"):
        (base / sub).mkdir()
    shutil.chown(base / "munge", "munge", "munge")
    os.chmod(base, 0o755)
    sock = base / "munge" / "munge.sock"
    host = socket.gethostname().split(".")[0]
    ctld_port, d_port = _free_port(), _free_port()
    conf = base / "slurm.conf"
    conf.write_text(f"""ClusterName=launchertest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={base}/ctld
SlurmdSpoolDir={base}/d
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 \
RealMemory=2000 State=UNKNOWN
PartitionName=launchertest Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs = []
    munged = subprocess.Popen(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "munged",
            "--foreground",
            f"--socket={sock}",
            f"--pid-file={base}/munge/munged.pid",
            f"--seed-file={base}/munge/seed",
            "--log-file=/dev/null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(munged)
    try:
        _wait(sock.exists, 10, "munged's socket")
        ctld = subprocess.Popen(
            ["slurmctld", "-D", "-c", "-f", str(conf)],
            env=env,
            stdout=open(base / "log" / "ctld.out", "w"),
            stderr=subprocess.STDOUT,
        )
        procs.append(ctld)
        slurmd = subprocess.Popen(
            ["slurmd", "-D", "-f", str(conf)],
            env=env,
            stdout=open(base / "log" / "d.out", "w"),
            stderr=subprocess.STDOUT,
        )
        procs.append(slurmd)

        _wait(lambda: _node_idle(env), 30, "the SLURM node to become idle")
        yield env
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        _kill_stepds(str(conf))
        shutil.rmtree(base, ignore_errors=True)


def _node_idle(env):
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
    return r.stdout.strip() == "idle"


def _kill_stepds(conf: str) -> None:
    """slurmstepd daemonizes and can outlive slurmd: end the ones of this test cluster (by PID)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd.startswith(b"slurmstepd") and f"SLURM_CONF={conf}".encode() in environ:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stepd_alive(job_id):
    """Whether a slurmstepd of the job still runs (its old instance is still cleaning up)."""
    tag = f"[{job_id}."
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("slurmstepd") and tag in cmd:
                return True
    return False


def _job_state(env, job_id):
    r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], env=env, capture_output=True, text=True)
    return r.stdout.strip()


def _restart_now(env, job_id, restarts_seen):
    """Start a requeued job now instead of after SLURM's ~120 s BeginTime; wait until it restarted."""
    before = max(1, restarts_seen())
    settled = None
    started = time.time()
    while time.time() - started < 60:
        # Only once the old instance is gone: it shares the job's spool directory, and a
        # job started while its previous instance is still cleaning up fails at once.
        # slurmd also refuses, for a few seconds, to launch a job id it has just killed
        # ("already killed, do not launch batch job"), hence the settling time.
        if _job_state(env, job_id) == "PENDING|BeginTime" and _node_idle(env) and not _stepd_alive(job_id):
            if settled is None:
                settled = time.time()
            elif time.time() - settled >= 3.0:
                subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], env=env, timeout=30)
        else:
            settled = None
            if restarts_seen() > before:
                return
        time.sleep(0.3)
    raise AssertionError("the requeued job did not start again")


def _init_profile(env, tmp_path: Path) -> Path:
    """``launcher profile init`` against the live cluster: what it learns, and its one-line refusals."""
    profile = tmp_path / "initslurm.toml"
    argv = [sys.executable, "-m", "launcher.cli", "profile", "init", "--scheduler", "slurm", "--out", str(profile)]
    t0 = time.time()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    took = time.time() - t0
    assert out.returncode == 0, out.stderr
    text = profile.read_text()
    print(f"profile init on SLURM: {took:.2f} s (with the interpreter's start)\n{out.stdout}{text}")
    for line in (
        'queue = "launchertest"',
        "gpus_per_node = 0",
        "cpus_per_node = 2",
        "exclusive = false",
        'warning_signal = "USR2"',
        "can_requeue = true",
        "# max_walltime = ",
        "modules = []",
        "# sinfo: CPUs=2 on 1 of 1 nodes",
        "# scontrol show partition: Default=YES (partition launchertest)",
    ):
        assert line in text.splitlines() or any(l.startswith(line) for l in text.splitlines()), line
    bad = subprocess.run(
        argv[:-2] + ["--queue", "gpu", "--out", str(tmp_path / "other.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.strip().endswith(
        "--queue gpu: no such partition (there are: launchertest)"
    ), bad.stderr
    return profile


def test_slurm_requeue_resumes_from_checkpoint(slurm, tmp_path, mpi_env, repo_root):
    env = dict(mpi_env, **{k: v for k, v in slurm.items() if k == "SLURM_CONF"})
    # The profile `launcher profile init` wrote from this cluster's answers, used unchanged (2 CPU ranks
    # are asked on the command line: CPU-only runs are not what a profile is written for).
    profile = _init_profile(env, tmp_path)
    steps = 40
    run_dir = tmp_path / "run with space"
    cmd = [
        sys.executable,
        "-m",
        "launcher.cli",
        "submit",
        "--scheduler",
        "slurm",
        "--cluster",
        str(profile),
        "--gpus",
        "0",
        "--ranks-per-node",
        "2",
        "--name",
        "slurm-requeue",
        "--run-dir",
        str(run_dir),
        "--mail",
        "me@example.org",
        "--notify",
        f'date +%s.%N >> {tmp_path}/told; echo "$LAUNCHER_SUMMARY" >> {tmp_path}/told',
        "--trainer-command",
        f"{sys.executable} {FIXTURE}",
        f"steps={steps}",
        "step_time=0.25",
        "deadline_at_step=5",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert job_id.isdigit()
    mail = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30)
    assert "MailUser=me@example.org" in mail.stdout and "MailType=END,FAIL" in mail.stdout, mail.stdout
    steps_log = run_dir / "steps.log"

    def n_steps():
        return len(steps_log.read_text().splitlines()) if steps_log.exists() else 0

    def restarts_seen():
        log = run_dir / "logs" / "run.log"
        return log.read_text().count("launcher: start restart=") if log.exists() else 0

    def restart_now():
        _restart_now(env, job_id, restarts_seen)

    try:
        # 1. The trainer stops at its deadline (step 5, exit 75): the job requeues itself.
        restart_now()
        # 2. The walltime warning (--signal=B:USR2): the batch shell passes it to mpirun, which
        #    passes it to the ranks; the trainer checkpoints and the job requeues itself.
        _wait(lambda: n_steps() >= 9, 60, "steps after the first requeue")
        subprocess.run(["scancel", "--signal=USR2", "--batch", job_id], env=env, check=True, timeout=30)
        restart_now()
        # 3. Preempt the resumed job from outside.
        _wait(lambda: n_steps() >= 15, 60, "steps after the second requeue")
        subprocess.run(["scontrol", "requeue", job_id], env=env, check=True, timeout=30)
        restart_now()
        events_file = run_dir / "job" / "events.tsv"
        _wait(
            lambda: (run_dir / "done").exists() and "\tnotify: done: " in events_file.read_text(),
            90,
            "the run to finish after the requeues and tell it",
        )
    except AssertionError:
        show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True)
        for f in ("logs/run.log", "job/events.tsv"):
            p = run_dir / f
            print(f"==== {f}\n" + (p.read_text() if p.exists() else "(missing)"))
        print("==== scontrol show job\n" + show.stdout + show.stderr)
        slurmd_log = Path(env["SLURM_CONF"]).parent / "log" / "slurmd.log"
        print("==== slurmd.log\n" + "\n".join(slurmd_log.read_text().splitlines()[-40:]))
        print(
            "==== squeue/sinfo",
            _job_state(env, job_id),
            _node_idle(env),
            subprocess.run(["sinfo"], env=env, capture_output=True, text=True).stdout,
        )
        raise
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    expected = 0
    for s in range(steps):
        expected = advance(expected, s)
    assert state == {"step": steps, "value": expected}
    lines = [[int(x) for x in l.split()] for l in steps_log.read_text().splitlines()]
    assert {l[1] for l in lines} == {int(job_id)}, "SLURM requeues keep the job id"
    segments = {}
    for step, _, restart in lines:
        segments.setdefault(restart, []).append(step)
    assert sorted(segments) == [0, 1, 2, 3], segments
    assert segments[0] == [1, 2, 3, 4, 5], "the first run stops at its (fake) deadline after step 5"
    assert segments[1][0] == 6, "the self-requeued job resumes from the step-5 checkpoint"
    assert segments[2][0] == segments[1][-1] + 1, "the USR2 checkpoint is where the next run starts"
    # After the preemption (SIGTERM to every process) the job resumes where the last one stopped.
    assert segments[3][0] == segments[2][-1] + 1, segments
    assert segments[3][-1] == steps
    for seg in segments.values():
        assert seg == list(range(seg[0], seg[-1] + 1)), "steps within a run are consecutive"
    events = (run_dir / "job" / "events.tsv").read_text()
    assert "checkpointed: timeout 1 of 20" in events and "checkpointed: timeout 2 of 20" in events
    assert events.count("\trequeued\n") == 2 and events.count("\trequeued by SLURM") == 1
    assert "checkpointed: preemption 1 of 100" in events
    last = [line.split("\t")[3] for line in events.splitlines()[-2:]]
    assert last[0] == "finished" and last[1].startswith("notify: done: sent ("), last
    assert (run_dir / "job" / "preemption.count").read_text().strip() == "1"
    assert (run_dir / "job" / "timeout.count").read_text().strip() == "2"
    log = (run_dir / "logs" / "run.log").read_text()
    assert log.count("launcher: start restart=") == 4  # appended across the requeues
    assert "launcher: received SIGUSR2" in log
    stops = [l.split() for l in (run_dir / "stops.log").read_text().splitlines()]
    assert stops[0] == ["5", "deadline"] and stops[1] == [str(segments[1][-1]), "SIGUSR2"], stops
    status = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "status", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "state    done" in status.stdout
    # told once, at the end, not at each of the three requeues
    _wait(lambda: (tmp_path / "told").exists(), 30, "the notify command")
    told = (tmp_path / "told").read_text().splitlines()
    assert told[1:] == [f"run {run_dir}: done in job {job_id}"], told
    delay = float(told[0]) - (run_dir / "done").stat().st_mtime
    print(f"slurm: notify {delay:.2f} s after the done marker (3 requeues, told once)")
    assert 0 <= delay < 30


PREEMPTIONS = 3
FLOW_ARGS = "--chunk 1 --batch 1 --threads 1 -v"  # one pair a write, a line each: a stop lands mid-stage
PROBE = [
    "--arch",
    "resnet18",
    "--iters",
    "3",
    "--batch",
    "2",
    "--crop",
    "64x64",
    "--warmup-iters",
    "1",
    "--max-val",
    "2",
    "--workers",
    "0",
]


def _profile(tmp_path: Path, default_walltime: str = "00:20:00") -> Path:
    """The one-node test cluster as a user would describe it: 2 CPUs, shared, self-requeue."""
    profile = tmp_path / "slurmtest.toml"
    profile.write_text(
        """name = "slurmtest"
scheduler = "slurm"
gpus_per_node = 0
cpus_per_node = 2
cpu_ranks_per_node = 2
exclusive = false
max_walltime = "01:00:00"
default_walltime = "{default_walltime}"
mpirun_flags = ["--oversubscribe", "-bind-to", "none"]
warning_signal = "USR2"
warning_lead_s = 60
deadline_margin_s = 60
can_requeue = true
""".replace("{default_walltime}", default_walltime)
    )
    return profile


def _procs(pattern: str):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if pattern in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _stage_job(pipe: Path, stage: str) -> str:
    rows = (pipe / stage / "job" / "jobs.tsv").read_text().splitlines()
    return rows[-1].split("\t")[3]


def test_slurm_pipeline_with_preempted_flow_and_train_matches_the_stages_by_hand(slurm, tmp_path, mpi_env):
    """``launcher pipeline`` on SLURM as shipped (afterok dependencies): pack -> DIS flow (requeued once
    mid-stage) -> verify -> the real trainer (cpu_small, 2 Horovod ranks, on shards the job stages
    with srun, requeued at 3 random steps: SLURM sends SIGTERM to every process, the supervisor
    keeps mpirun alive, the ranks checkpoint within the default KillWait and every resumed job
    starts at the step the previous one reached) -> convert -> eval. The shards, the final weights
    and the evaluation equal those of the same commands run one by one by hand."""
    import random

    import torch

    env = dict(mpi_env, **{k: v for k, v in slurm.items() if k == "SLURM_CONF"})
    world = tmp_path / "eval_world"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixpro_of",
            "synth",
            "--out",
            str(world),
            "--videos",
            "3",
            "--video-frames",
            "3",
            "--size",
            "128x64",
            "--format",
            "cityscapes",
            "--val-videos",
            "1",
            "--seed",
            "1000",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    profile = _profile(tmp_path)
    # No periodic checkpoints: every resume starts from the checkpoint the stop itself wrote.
    train_args = [
        "run.epochs=25",
        "run.deterministic=true",
        "data.num_workers=0",
        "log.tensorboard=false",
        "checkpoint.every_steps=0",
        "checkpoint.every_epochs=100",
        "data.synthetic=false",
    ]
    # A BDD100K-layout folder (no flows: the flow stage computes them all)
    videos = str(tmp_path / "bdd")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixpro_of",
            "synth",
            "--out",
            videos,
            "--videos",
            "9",
            "--video-frames",
            "12",
            "--size",
            "384x192",
            "--format",
            "bdd",
            "--seed",
            "0",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    pipe = tmp_path / "pipe"
    nodelocal = tmp_path / "nodelocal"
    nodelocal.mkdir()
    t_start = time.time()
    cmd = [
        sys.executable,
        "-m",
        "launcher.cli",
        "pipeline",
        "--scheduler",
        "slurm",
        "--cluster",
        str(profile),
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--videos",
        videos,
        "--flow-model",
        "dis",
        "--flow-args",
        FLOW_ARGS,
        "--eval-data",
        str(world),
        "--eval-mode",
        "linear",
        "--eval-args",
        " ".join(PROBE),
        "--dir",
        str(pipe),
        *train_args,
    ]
    out = subprocess.run(
        cmd, env=dict(env, TMPDIR=str(nodelocal)), capture_output=True, text=True, cwd=str(tmp_path), timeout=120
    )
    assert out.returncode == 0, out.stderr
    stages = ("pack", "flow", "verify", "train", "convert", "eval")
    ids = {s: _stage_job(pipe, s) for s in stages}
    deps = {
        s: subprocess.run(
            ["scontrol", "show", "job", ids[s]], env=env, capture_output=True, text=True, timeout=30
        ).stdout
        for s in stages
    }
    assert f"Dependency=afterok:{ids['pack']}" in deps["flow"] and f"afterok:{ids['train']}" in deps["eval"]

    def dump():
        for f in sorted(pipe.glob("*/logs/run.log")) + sorted(pipe.glob("*/job/events.tsv")):
            print(f"==== {f}\n" + f.read_text()[-3000:])

    run_dir = pipe / "train"
    metrics = run_dir / "metrics.csv"
    train_log = run_dir / "logs" / "train.log"
    flow_log = pipe / "flow" / "logs" / "run.log"

    def last_step():
        rows = metrics.read_text().splitlines()[1:] if metrics.exists() else []
        return int(rows[-1].split(",")[0]) if rows else 0

    def restarts_seen(stage="train"):
        log = pipe / stage / "logs" / "run.log"
        return log.read_text().count("launcher: start restart=") if log.exists() else 0

    def resumed_steps():
        text = train_log.read_text() if train_log.exists() else ""
        return [int(l.split("resumed from step ")[1].split()[0]) for l in text.splitlines() if "resumed from step" in l]

    def written_pairs():
        return flow_log.read_text().count("wrote") if flow_log.exists() else 0

    rng = random.Random(int(time.time()))
    lost, back_s, at = [], [], []
    try:
        # the flow stage: stalled after its first written pair (so the stop lands mid-stage on a busy
        # machine too), requeued; SLURM continues and signals the ranks, they stop after their pair
        _wait(lambda: written_pairs() >= 1, 300, "the flow stage's first pair")
        ranks = _procs("hdf5_tools.cli flow")
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)
        pairs_at_stop = written_pairs()
        subprocess.run(["scontrol", "requeue", ids["flow"]], env=env, check=True, timeout=30)
        _wait(
            lambda: _job_state(env, ids["flow"]).startswith("PENDING") and not _stepd_alive(ids["flow"]),
            90,
            "the preempted flow job to end",
        )
        _restart_now(env, ids["flow"], lambda: restarts_seen("flow"))
        _wait(lambda: (pipe / "flow" / "done").exists(), 300, "the flow stage to finish")
        flow_events = (pipe / "flow" / "job" / "events.tsv").read_text()
        assert "stopped to continue: preemption 1 of" in flow_events, flow_events
        for i in range(PREEMPTIONS):
            target = last_step() + rng.randint(2, 5)
            _wait(lambda target=target: last_step() >= target, 300, f"step {target}")
            t0 = time.time()
            subprocess.run(["scontrol", "requeue", ids["train"]], env=env, check=True, timeout=30)
            at.append(last_step())
            _wait(
                lambda: _job_state(env, ids["train"]).startswith("PENDING") and not _stepd_alive(ids["train"]),
                90,
                "the preempted job to end",
            )
            reached = last_step()  # every step the preempted job logged
            _restart_now(env, ids["train"], restarts_seen)
            _wait(lambda i=i: len(resumed_steps()) == i + 1, 120, "the resumed job to load its checkpoint")
            lost.append(reached - resumed_steps()[-1])
            _wait(lambda: last_step() > resumed_steps()[-1], 120, "the resumed job's first step")
            back_s.append(time.time() - t0)
        _wait(
            lambda: (pipe / "eval" / "done").exists() and not _stepd_alive(ids["eval"]), 600, "the pipeline to finish"
        )
    except AssertionError:
        dump()
        raise
    pipeline_s = time.time() - t_start
    print(
        f"pipeline on SLURM: {pipeline_s:.0f} s; flow stopped after {pairs_at_stop} pairs; train preempted at "
        f"steps {at}; steps lost {lost}; requeue -> training again {[round(t, 1) for t in back_s]} s "
        f"(with StartTime=now instead of SLURM's 120 s hold)"
    )
    gaps = []
    for before, after in zip(stages, stages[1:]):
        ends = [
            l.split("\t")[0]
            for l in (pipe / before / "job" / "events.tsv").read_text().splitlines()
            if l.endswith("\tfinished")
        ]
        starts = [
            l.split("\t")[0]
            for l in (pipe / after / "job" / "events.tsv").read_text().splitlines()
            if "\tstart restart=" in l
        ]
        gaps.append((after, ends[-1], starts[0]))
    print("stage end -> next stage start (event times): " + "; ".join(f"{a}: {e} -> {s}" for a, e, s in gaps))
    assert lost == [0] * PREEMPTIONS, (at, lost)
    events = (run_dir / "job" / "events.tsv").read_text()
    assert events.count("checkpointed: preemption") == PREEMPTIONS, events
    assert "requeued by SLURM" in events and "refused" not in events
    assert "stopped without a new checkpoint" not in events
    left = [p.name for p in nodelocal.iterdir() if p.name.startswith("pipe-")]  # <job name>-<job id>
    assert left == [], f"staged shards left: {left}\n" + (run_dir / "logs" / "run.log").read_text()[-3000:]
    status = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "status", str(pipe)], env=env, capture_output=True, text=True, timeout=60
    )
    assert [l.split()[:2] for l in status.stdout.splitlines()[1:]] == [[s, "done"] for s in stages], status.stdout
    # The same stages by hand: pack, DIS flow with 2 ranks, training straight under mpirun, eval.
    hand = tmp_path / "hand"
    shards = hand / "shards"
    for argv in (
        [
            sys.executable,
            "-m",
            "hdf5_tools.cli",
            "pack",
            videos,
            str(shards),
            "--nodes",
            "1",
            "-j",
            "2",
            "--no-progress",
        ],
        [
            "mpirun",
            "--oversubscribe",
            "-bind-to",
            "none",
            "-np",
            "2",
            sys.executable,
            "-m",
            "hdf5_tools.cli",
            "flow",
            str(shards),
            "--model",
            "dis",
            "--no-progress",
            *FLOW_ARGS.split(),
        ],
        [
            "mpirun",
            "--oversubscribe",
            "-bind-to",
            "none",
            "-np",
            "2",
            sys.executable,
            "-m",
            "pixpro_of",
            "train",
            "--run-dir",
            str(hand / "train"),
            "--config",
            "cpu_small",
            "dist.backend=horovod",
            f"data.shards=[{shards / 'manifest.json'}]",
            *train_args,
        ],
        [
            sys.executable,
            "-m",
            "pixpro_of",
            "eval",
            "seg",
            "--backbone",
            str(hand / "train"),
            "--out",
            str(hand / "eval"),
            "--data",
            str(world),
            "--mode",
            "linear",
            *PROBE,
        ],
    ):
        r = subprocess.run(argv, env=mpi_env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
        assert r.returncode == 0, (argv, r.stderr[-3000:])

    # Same contents, dataset by dataset (the flow stage's stop changed the order HDF5 placed the chunks in)
    from batch_clusters import shard_contents

    got = sorted((pipe / "pack" / "shards").glob("*.h5"))
    assert [p.name for p in got] == [p.name for p in sorted(shards.glob("*.h5"))]
    for p in got:
        assert shard_contents(p) == shard_contents(shards / p.name), f"{p.name}: contents differ from the shard by hand"

    def final(d):
        name = (d / "checkpoints" / "latest").read_text().strip()
        return torch.load(d / "checkpoints" / name, map_location="cpu", weights_only=True)

    a, b = final(hand / "train"), final(run_dir)
    assert a["step"] == b["step"] > 0
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), f"{k} differs after the SLURM preemptions"
    assert (
        json.loads((pipe / "eval" / "eval" / "scores.json").read_text())["mIoU"]
        == json.loads((hand / "eval" / "scores.json").read_text())["mIoU"]
    )


def test_slurm_pipeline_stage_that_fails_cancels_the_later_stages(slurm, tmp_path, mpi_env):
    """A pack with nothing to pack fails: every later stage is cancelled, none ever starts, and
    ``launcher status`` names the stage and its one line."""
    env = dict(mpi_env, **{k: v for k, v in slurm.items() if k == "SLURM_CONF"})
    empty = tmp_path / "bdd" / "videos" / "train"
    empty.mkdir(parents=True)
    pipe = tmp_path / "failing"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "pipeline",
            "--scheduler",
            "slurm",
            "--gpus",
            "0",
            "--cluster",
            str(_profile(tmp_path)),
            "--preset",
            "cpu_small",
            "--videos",
            str(tmp_path / "bdd"),
            "--flow-model",
            "dis",
            "--dir",
            str(pipe),
            "data.synthetic=false",
            "--walltime",
            "00:10:00",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    ids = {s: _stage_job(pipe, s) for s in ("pack", "flow", "verify", "train", "convert")}

    def state(job_id):
        out = subprocess.run(
            ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30
        ).stdout
        return out.split("JobState=", 1)[1].split()[0] if "JobState=" in out else ""

    _wait(
        lambda: all(state(ids[s]) in ("CANCELLED", "FAILED", "COMPLETED") for s in ids), 120, "every stage's job to end"
    )
    assert state(ids["pack"]) == "FAILED"
    for s in ("flow", "verify", "train", "convert"):
        assert state(ids[s]) == "CANCELLED", (s, state(ids[s]))
        assert not (pipe / s / "logs" / "run.log").exists(), f"{s} must never start"
    status = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "status", str(pipe)], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "pack     failed: pack command exited 2" in status, status
    assert "flow     cancelled: stage pack did not finish (pack command exited 2" in status, status


def test_slurm_array_of_three_tasks_holds_its_cap_and_a_requeued_task_resumes(slurm, tmp_path, mpi_env):
    """launcher array: 3 tasks, at most 1 running (--array=0-2%1); task 1 is requeued mid-run and
    resumes from its checkpoint; every task ends with the uninterrupted state, never two at once."""
    env = dict(mpi_env, **{k: v for k, v in slurm.items() if k == "SLURM_CONF"})
    profile = tmp_path / "slurmtest.toml"  # 2 CPUs, shared: two 1-CPU tasks could run together but for the cap
    profile.write_text(
        'name = "slurmtest"\nscheduler = "slurm"\ngpus_per_node = 0\ncpus_per_node = 2\n'
        'cpu_ranks_per_node = 1\nexclusive = false\nmax_walltime = "01:00:00"\n'
        'default_walltime = "00:10:00"\nmpirun_flags = ["--oversubscribe", "-bind-to", "none"]\n'
        'warning_signal = "USR2"\nwarning_lead_s = 60\ndeadline_margin_s = 60\ncan_requeue = true\n'
    )
    steps = 12
    common = [
        "--scheduler",
        "slurm",
        "--cluster",
        str(profile),
        "--gpus",
        "0",
        "--nodes",
        "1",
        "--ranks-per-node",
        "1",
        "--trainer-command",
        f"{sys.executable} {FIXTURE}",
        f"steps={steps}",
        "step_time=0.25",
    ]
    runs = [tmp_path / f"task {i}" for i in range(3)]
    spec = tmp_path / "tasks.json"
    spec.write_text(
        json.dumps({"common": common, "tasks": [["--run-dir", str(r), "--name", f"t{i}"] for i, r in enumerate(runs)]})
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "array",
            str(spec),
            "--max-running",
            "1",
            "--name",
            "arr",
            "--dir",
            str(tmp_path / "arr"),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    array_id = out.stdout.strip()
    assert array_id.isdigit()
    assert "--array=0-2%1" in (tmp_path / "arr" / "submit.txt").read_text()
    most_running = [0]

    def running():
        r = subprocess.run(
            ["squeue", "-h", "-r", "-j", array_id, "-t", "RUNNING", "-o", "%i"], env=env, capture_output=True, text=True
        )
        ids = r.stdout.split()
        most_running[0] = max(most_running[0], len(ids))
        return ids

    def steps_of(run):
        log = run / "steps.log"
        return [[int(x) for x in ln.split()] for ln in log.read_text().splitlines()] if log.exists() else []

    def restarts_seen():
        log = runs[1] / "logs" / "run.log"
        return log.read_text().count("launcher: start restart=") if log.exists() else 0

    task1 = f"{array_id}_1"
    try:
        _wait(lambda: running() == [task1] and len(steps_of(runs[1])) >= 4, 90, "task 1 to be 4 steps in")
        subprocess.run(["scontrol", "requeue", task1], env=env, check=True, timeout=30)
        raw = subprocess.run(
            ["squeue", "-h", "-j", task1, "-o", "%A"], env=env, capture_output=True, text=True
        ).stdout.strip()
        _restart_now(env, raw, restarts_seen)
        _wait(lambda: running() == [] and all((r / "done").exists() for r in runs), 120, "every task to finish")
    except AssertionError:
        for r in runs:
            p = r / "job" / "events.tsv"
            print(f"==== {p}\n" + (p.read_text() if p.exists() else "(missing)"))
        raise
    expected = 0
    for s in range(steps):
        expected = advance(expected, s)
    for i, r in enumerate(runs):
        assert json.loads((r / "checkpoints" / "state.json").read_text()) == {"step": steps, "value": expected}
        events = [ln.split("\t") for ln in (r / "job" / "events.tsv").read_text().splitlines()]
        assert {e[1] for e in events} == {f"{array_id}_{i}"}, "each task's events carry <array id>_<i>"
        assert events[-1][3] == "finished"
        assert [s[0] for s in steps_of(r)][-1] == steps
    restarts = [s[2] for s in steps_of(runs[1])]
    assert restarts[0] == 0 and restarts[-1] == 1, "task 1 ran again after its requeue"
    first, again = [s[0] for s in steps_of(runs[1]) if s[2] == 0], [s[0] for s in steps_of(runs[1]) if s[2] == 1]
    assert again[0] == first[-1] + 1 and again[-1] == steps, "the requeued task resumes from its checkpoint"
    assert "checkpointed: preemption 1 of 100" in (runs[1] / "job" / "events.tsv").read_text()
    assert most_running[0] == 1, "the cap: never two tasks running at once"
    status = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "status", str(runs[2])],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "state    done" in status.stdout, status.stdout


def test_slurm_smoke_job_reports_every_line_and_passes(slurm, tmp_path, mpi_env):
    """``launcher submit --smoke`` on the real SLURM: the run's request (2 CPU ranks through mpirun,
    Horovod, cpu_small) as one job of at most 5 minutes; its lines land in the run's log and smoke.txt."""
    env = dict(mpi_env, **{k: v for k, v in slurm.items() if k == "SLURM_CONF"})
    t0 = time.time()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "submit",
            "--smoke",
            "--scheduler",
            "slurm",
            "--cluster",
            str(_profile(tmp_path)),
            "--gpus",
            "0",
            "--preset",
            "cpu_small",
            "--name",
            "k2",
            "--run-dir",
            str(tmp_path / "runs" / "k2"),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    run = tmp_path / "runs" / "k2-smoke"
    assert f"the smoke's lines go to {run}/logs/run.log and {run}/smoke.txt" in out.stderr
    assert "#SBATCH --time=00:05:00" in (run / "job" / "job.sh").read_text()
    try:
        _wait(lambda: (run / "smoke.txt").exists() and _job_state(env, job_id) == "", 300, "the smoke job to end")
    except AssertionError:
        print((run / "logs" / "run.log").read_text() if (run / "logs" / "run.log").exists() else "(no log)")
        raise
    took = time.time() - t0
    lines = (run / "smoke.txt").read_text().splitlines()
    print(f"smoke on SLURM: {took:.1f} s from submit to the job's end\n" + "\n".join(lines))
    assert [l.split(":")[0] for l in lines] == [
        "imports",
        "gpus",
        "allreduce",
        "scratch",
        "train",
        "stop/resume",
        "smoke",
    ], lines
    assert all(": OK: " in l for l in lines[:6]), lines
    assert "horovod 0.28.1" in lines[0] and "Horovod MPI" in lines[2] and "0 GPUs (CPU ranks)" in lines[1]
    assert "20 steps of cpu_small, global batch 4 (2 per rank)" in lines[4]
    assert f"-smoke-{job_id} (1 shard(s)" in lines[3]  # staged by the job's own block into <name>-<job id>
    assert lines[6].startswith("smoke: PASS (6 of 6 checks, ")
    log = (run / "logs" / "run.log").read_text()
    assert all(l in log for l in lines)
    assert (run / "job" / "events.tsv").read_text().splitlines()[-1].endswith("finished")
