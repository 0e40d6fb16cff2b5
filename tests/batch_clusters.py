"""Real one-node Grid Engine and OpenPBS clusters for the launcher tests, and what those tests share.

``grid_engine()`` and ``openpbs()`` are context managers: they install the scheduler when it is
missing (``.ci/gridengine/install.sh``: Debian's gridengine 8.1.9; ``.ci/openpbs/build.sh``:
OpenPBS from the pinned source, built once and cached), start its daemons with the set-up scripts
(``.ci/*/start.sh``, idempotent), yield a handle, and on exit stop, by PID, the daemons they
started; one test session at a time uses each scheduler (a lock file). They skip, saying why,
only where the scheduler cannot be had at all: no root, no apt-get to install Grid Engine, or
neither a cached OpenPBS build nor its source.

``reference_run()`` trains the tiny configuration the chain tests use, uninterrupted, straight
under mpirun: its final weights are what every interrupted run must end with.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci"

# The training every chain test runs: the cpu_small preset (ResNet-18 on 64-px views of the
# built-in synthetic world), 4 epochs = 16 steps of global batch 4 on 2 Horovod ranks,
# deterministic, a checkpoint every 2 steps. 17 s uninterrupted on the 2-core development machine
# when quiet, about a minute when other work shares it.
TRAIN_ARGS = [
    "run.epochs=4",
    "run.deterministic=true",
    "data.num_workers=0",
    "log.tensorboard=false",
    "checkpoint.every_steps=2",
]
TOTAL_STEPS = 16


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_until_done(run_dir: Path, timeout: float, what: str) -> None:
    """Wait for the run's done marker and its final "finished" event; fail at once when the run
    was stopped instead (a failed trainer, a used-up budget)."""

    def finished() -> bool:
        stopped = run_dir / "job" / "stopped"
        if stopped.exists():
            raise AssertionError(f"{what}: the run was stopped: {stopped.read_text().strip()}")
        return (run_dir / "done").exists() and event_texts(run_dir)[-1:] == ["finished"]

    wait_for(finished, timeout, what)


def _parse_kv(text: str) -> Dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def stop_pids(pids: Sequence[int], timeout: float = 30.0) -> None:
    """SIGTERM each process (in order, waiting for each), SIGKILL what is left after ``timeout``."""
    for pid in pids:
        if not _alive(pid):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        end = time.time() + timeout
        while _alive(pid) and time.time() < end:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextlib.contextmanager
def _exclusive(name: str, timeout: float = 3600) -> Iterator[None]:
    """Hold an exclusive lock while a test module uses the machine's one Grid Engine cell or PBS
    complex: two test sessions at once (two checkouts on one machine) would otherwise stop each
    other's daemons."""
    import fcntl

    with open(f"/tmp/pixpro-of-{name}.lock", "w") as f:
        end = time.time() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > end:
                    pytest.fail(f"another test session has held /tmp/pixpro-of-{name}.lock for {timeout:.0f} s")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what}: installing and starting its daemons needs root here")


def _run_setup(argv: List[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# --------------------------------------------------------------------------- Grid Engine
@dataclass
class GridEngine:
    env: Dict[str, str]  # for client commands: SGE_ROOT, SGE_CELL, Grid Engine's bin first on PATH
    host: str

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)


@contextlib.contextmanager
def grid_engine() -> Iterator[GridEngine]:
    _need_root("Grid Engine")
    with _exclusive("gridengine"):
        yield from _grid_engine()


def _grid_engine() -> Iterator[GridEngine]:
    if not shutil.which("apt-get") and not Path("/usr/sbin/sge_qmaster").exists():
        pytest.skip("Grid Engine is not installed and there is no apt-get to install it")
    _run_setup(["bash", str(CI / "gridengine" / "install.sh")], ".ci/gridengine/install.sh", 900)
    info = _parse_kv(_run_setup(["bash", str(CI / "gridengine" / "start.sh")], ".ci/gridengine/start.sh", 180).stdout)
    started = set(filter(None, info.get("STARTED", "").split(",")))
    env = dict(os.environ, SGE_ROOT=info["SGE_ROOT"], SGE_CELL=info["SGE_CELL"])
    # Grid Engine's own qsub first: /usr/bin/qsub may be another scheduler's (PBS, Torque wrappers).
    env["PATH"] = f"{info['SGE_BIN']}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    sge = GridEngine(env=env, host=info["HOST"])
    try:
        yield sge
    finally:
        # Jobs a failed test left (this is a private one-node test cell).
        left = [l.split()[0] for l in sge.run("qstat", "-u", "*", check=False).stdout.splitlines()[2:] if l.strip()]
        if left:
            sge.run("qdel", "-f", *left, check=False)
        pids = []
        if "execd" in started:
            pids.append(int(info["EXECD_PID"]))
        if "qmaster" in started:
            pids.append(int(info["QMASTER_PID"]))
        stop_pids(pids)


# --------------------------------------------------------------------------- OpenPBS
@dataclass
class OpenPBS:
    exec_dir: str
    netns: str
    host: str
    user: str
    path: str  # PATH for commands in the namespace: PBS's bin first
    _restore: List = field(default_factory=list)

    def ns(
        self,
        argv: Sequence[str],
        user: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the PBS network namespace, as ``user`` (default root)."""
        environ = dict(env or {})
        environ.setdefault("PATH", self.path)
        environ.setdefault("LANG", "C.UTF-8")
        if user:
            environ.setdefault("HOME", os.path.expanduser(f"~{user}"))
            environ.setdefault("USER", user)
            environ.setdefault("LOGNAME", user)
        prefix = ["ip", "netns", "exec", self.netns]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        full = prefix + ["env", "-i"] + [f"{k}={v}" for k, v in environ.items()] + list(argv)
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=check, cwd=cwd)

    def qcmd(self, name: str, *args: str, user: Optional[str] = None, check: bool = True):
        return self.ns([f"{self.exec_dir}/bin/{name}", *args], user=user, check=check)

    def job_attrs(self, job_id: str) -> Dict:
        out = self.qcmd("qstat", "-x", "-f", "-F", "json", job_id).stdout
        return json.loads(out)["Jobs"][job_id]


def _user_processes(user: str, name: str) -> List[int]:
    """PIDs of ``user``'s processes whose command is ``name``."""
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _grant_traverse(user: str, path: Path, restore: List) -> None:
    """Let ``user`` reach ``path`` (the interpreter): add search permission for others to every
    directory above it that lacks it (e.g. /root, when the interpreter is a pyenv build under
    root's home), remembering the old modes to put back. On a cluster, software lives where
    every user can run it; PBS will not run jobs as root (pbs_mom ignores root's processes)."""
    probe = ["runuser", "-u", user, "--", "test", "-x", str(path)]
    if subprocess.run(probe).returncode == 0:
        return
    for d in reversed(path.parents):
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            restore.append((d, stat.S_IMODE(mode)))
            os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
    if subprocess.run(probe).returncode != 0:
        pytest.fail(f"{user} cannot run {path} even after adding search permissions")


@contextlib.contextmanager
def openpbs() -> Iterator[OpenPBS]:
    _need_root("OpenPBS")
    with _exclusive("openpbs"):
        yield from _openpbs()


def _openpbs() -> Iterator[OpenPBS]:
    if not Path("/opt/pbs/sbin/pbs_server").exists() and not shutil.which("apt-get"):
        pytest.skip("OpenPBS is not installed and there is no apt-get to install its build dependencies")
    build = subprocess.run(["bash", str(CI / "openpbs" / "build.sh")], capture_output=True, text=True, timeout=1800)
    if build.returncode == 4:  # neither a cached build nor the pinned source
        pytest.skip("OpenPBS cannot be installed: " + build.stderr.strip().splitlines()[-1])
    if build.returncode != 0:
        pytest.fail(
            f".ci/openpbs/build.sh failed (exit {build.returncode}):\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
        )
    info = _parse_kv(_run_setup(["bash", str(CI / "openpbs" / "start.sh")], ".ci/openpbs/start.sh", 300).stdout)
    pbs = OpenPBS(
        exec_dir=info["PBS_EXEC"],
        netns=info["NETNS"],
        host=info["HOST"],
        user=info["TEST_USER"],
        path=f"{info['PBS_EXEC']}/bin:/usr/local/bin:/usr/bin:/bin",
    )
    try:
        python = Path(sys.executable)
        _grant_traverse(pbs.user, python.resolve(), pbs._restore)
        _grant_traverse(pbs.user, python, pbs._restore)
        yield pbs
    finally:
        # Jobs the tests left (a failed test's chain) go first, then the background qsub that
        # OpenPBS's qsub leaves per user for a minute to speed up the next submission.
        left = pbs.qcmd("qselect", "-u", pbs.user, check=False).stdout.split()
        if left:
            pbs.qcmd("qdel", "-W", "force", *left, check=False)
        stop_pids(_user_processes(pbs.user, "qsub"))
        for d, mode in reversed(pbs._restore):
            os.chmod(d, mode)
        if info.get("STARTED") == "1":
            # The server first (on SIGTERM it also stops its datastore), then the others.
            stop_pids([int(p) for p in info["PIDS"].split() if p.isdigit()])


def user_dir(prefix: str, user: Optional[str]) -> Path:
    """A fresh directory outside pytest's root-only tmp tree, owned by ``user``."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    if user:
        shutil.chown(d, user, user)
    return d


# --------------------------------------------------------------------------- the reference run
def mpirun_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        OMPI_MCA_mpi_yield_when_idle="1",
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def final_checkpoint(run_dir: Path) -> Dict:
    import torch

    name = (run_dir / "checkpoints" / "latest").read_text().strip()
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


@dataclass
class Reference:
    """The uninterrupted run: its final checkpoint, and how long it took to reach its first step
    (``startup_s``, from mpirun's start) and each step after that (``step_s``), for the record."""

    checkpoint: Dict
    startup_s: float
    step_s: float


# --------------------------------------------------------------------------- deadline stops
# A chain link stops at its deadline (the job's start + walltime - margin, minus the trainer's
# stop.margin_s). How far training got by then depends on how loaded the machine is, and on this
# 2-core machine shared with other work a step takes anything from 0.6 to 5 s: no walltime
# reliably lands a deadline inside 16 steps. So the chain tests give each link a short walltime
# (CHAIN_WALLTIME) and, once the first link has run a few steps, stall its ranks (SIGSTOP, as a
# stuck file system or an oversubscribed node would) until its deadline has come, then let them
# go on (SIGCONT): the trainer finds its deadline at the next step boundary and checkpoints there.
# Under heavy load a link may reach its deadline by itself first; that is a deadline stop too.
CHAIN_WALLTIME = "00:01:20"
CHAIN_STOP_MARGIN_S = 5  # stop.margin_s for the chain tests (the trainer's default is 30)


def link_deadline(run_dir: Path, link: int) -> Optional[float]:
    """Unix time of a link's deadline, from its "train: ... deadline ISO" event."""
    import calendar

    for e in events(run_dir):
        if len(e) >= 4 and e[2] == str(link) and e[3].startswith("train: ") and " deadline " in e[3]:
            iso = e[3].rsplit(" deadline ", 1)[1].strip()
            return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))
    return None


def rank_pids(run_dir: Path) -> List[int]:
    """PIDs of the trainer ranks of a run (``... -m pixpro_of train --run-dir RUN_DIR ...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        # The interpreter itself runs "-m pixpro_of train" (not mpirun or the supervisor, whose
        # command lines contain the trainer's).
        if (
            argv[1:4] == ["-m", "pixpro_of", "train"]
            and "--run-dir" in argv
            and argv[argv.index("--run-dir") + 1 :][:1] == [str(run_dir)]
        ):
            pids.append(int(entry))
    return pids


def link_ended(run_dir: Path, link: int) -> bool:
    return any(
        e[2] == str(link) and (e[3].startswith(("checkpointed", "stopped", "finished", "fail")))
        for e in events(run_dir)
        if len(e) >= 4
    )


def stall_link_into_its_deadline(
    run_dir: Path,
    link: int = 0,
    steps: int = 3,
    suspend: Optional[Callable[[], None]] = None,
    resume: Optional[Callable[[], None]] = None,
    timeout: float = 300,
) -> str:
    """Once chain link ``link`` has run ``steps`` steps, stop its ranks until its deadline is close
    enough for the trainer to stop at the next step boundary, then continue them.
    ``suspend``/``resume`` replace SIGSTOP/SIGCONT to the ranks (PBS: qsig -s suspend/resume).
    Returns what happened, for the test's output."""

    def over() -> bool:
        return link_ended(run_dir, link) or (run_dir / "done").exists()

    wait_for(lambda: link_deadline(run_dir, link) is not None or over(), timeout, f"link {link} to train")
    first = metrics_step(run_dir)
    wait_for(lambda: metrics_step(run_dir) >= first + steps or over(), timeout, f"{steps} steps of link {link}")
    deadline = link_deadline(run_dir, link)
    pids = rank_pids(run_dir)
    if over() or deadline is None or len(pids) != 2 or metrics_step(run_dir) >= TOTAL_STEPS - 1:
        return f"link {link} reached its deadline or the end by itself"
    if suspend:
        suspend()
    else:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
    step = metrics_step(run_dir)
    # The trainer stops when time left < 1.5 x (step + checkpoint) + CHAIN_STOP_MARGIN_S.
    pause = max(0.0, deadline - CHAIN_STOP_MARGIN_S - time.time())
    time.sleep(pause)
    if resume:
        resume()
    else:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    return f"stalled link {link} at step {step} for {pause:.0f} s, into its deadline"


def _log_times(log: Path) -> Dict[int, float]:
    """{step: unix time} from the trainer's log lines ``YYYY-mm-dd HH:MM:SS,mmm rank0 INFO step N/M``."""
    import datetime as dt

    out = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[3] == "INFO" and parts[4] == "step" and "/" in parts[5]:
            t = dt.datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[int(parts[5].split("/")[0])] = t
    return out


def reference_run(base: Path) -> Reference:
    """TRAIN_ARGS trained uninterrupted straight under mpirun (once per test module)."""
    ref_dir = base / "reference-run"
    t0 = time.time()
    proc = subprocess.run(
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
            str(ref_dir),
            "--config",
            "cpu_small",
            "dist.backend=horovod",
            *TRAIN_ARGS,
        ],
        env=mpirun_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    times = _log_times(ref_dir / "logs" / "train.log")
    assert sorted(times) == list(range(1, TOTAL_STEPS + 1)), sorted(times)
    ref = Reference(
        final_checkpoint(ref_dir), startup_s=times[1] - t0, step_s=(times[TOTAL_STEPS] - times[1]) / (TOTAL_STEPS - 1)
    )
    print(
        f"reference run: {time.time() - t0:.1f} s, first step after {ref.startup_s:.1f} s, {ref.step_s:.2f} s per step"
    )
    return ref


def assert_same_weights(run_dir: Path, ref: Reference, what: str) -> None:
    import torch

    reference = ref.checkpoint
    got = final_checkpoint(run_dir)
    assert got["step"] == reference["step"] == TOTAL_STEPS
    assert got["model"].keys() == reference["model"].keys()
    for k, v in reference["model"].items():
        assert torch.equal(got["model"][k], v), f"{k} differs from the uninterrupted run after {what}"


# --------------------------------------------------------------------------- run-directory readers
def metrics_step(run_dir: Path) -> int:
    """The last step in metrics.csv (0 before the first)."""
    p = run_dir / "metrics.csv"
    rows = p.read_text().splitlines()[1:] if p.exists() else []
    rows = [r for r in rows if r and r[0].isdigit()]
    return int(rows[-1].split(",")[0]) if rows else 0


def events(run_dir: Path) -> List[List[str]]:
    p = run_dir / "job" / "events.tsv"
    return [l.split("\t") for l in p.read_text().splitlines()] if p.exists() else []


def event_texts(run_dir: Path) -> List[str]:
    return [e[3] for e in events(run_dir) if len(e) >= 4]


def job_ids(run_dir: Path, scheduler: str) -> List[str]:
    """Job ids of the run in submission order (jobs.tsv; links the jobs submitted themselves
    record the submit command's raw output, parsed as the launcher does)."""
    from launcher.job_files import RunDir
    from launcher.schedulers import get_scheduler

    return [j.job_id for j in RunDir(str(run_dir)).jobs(get_scheduler(scheduler).parse_job_id)]


def job_kinds(run_dir: Path) -> List[str]:
    return [l.split("\t")[1] for l in (run_dir / "job" / "jobs.tsv").read_text().splitlines()]


def deadline_stops(run_dir: Path) -> List[int]:
    """Steps of the checkpoints written at deadline stops ("checkpointed: timeout N of M (step_X.pt)")."""
    import re

    out = []
    for t in event_texts(run_dir):
        m = re.match(r"checkpointed: timeout \d+ of \d+ \(step_(\d+)\.pt\)", t)
        if m:
            out.append(int(m.group(1)))
    return out


def checkpoint_steps(run_dir: Path) -> List[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))


def dump_run(run_dir: Path, extra: str = "") -> str:
    parts = []
    for f in ("job/events.tsv", "job/jobs.tsv", "logs/run.log", "logs/train.log"):
        p = run_dir / f
        parts.append(f"==== {f}\n" + (p.read_text()[-5000:] if p.exists() else "(missing)"))
    for p in sorted((run_dir / "logs").glob("*")):
        if p.name not in ("run.log", "train.log", "train.rank1.log") and p.is_file():
            parts.append(f"==== logs/{p.name}\n" + p.read_text()[-3000:])
    return "\n".join(parts) + ("\n" + extra if extra else "")


def shard_contents(path: Path) -> Dict[str, object]:
    """Every dataset (as bytes) and attribute of an HDF5 shard, by name: what a reader can see.

    Two shards written with the same pairs in a different order (a flow stage stopped and resumed)
    hold the same contents, but HDF5 places chunks in write order, so their file bytes differ."""
    import h5py
    import numpy as np

    out: Dict[str, object] = {}
    with h5py.File(path, "r") as f:
        out.update({f"/@{k}": str(v) for k, v in f.attrs.items()})

        def visit(name, obj):
            out.update({f"{name}@{k}": str(v) for k, v in obj.attrs.items()})
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj.shape, np.asarray(obj[()]).tobytes())

        f.visititems(visit)
    return out


def stage_gaps(pipe: Path, stages: Sequence[str]) -> str:
    """For the test's output: each stage's first start after the stage before it finished (event times)."""
    out = []
    for before, after in zip(stages, stages[1:]):
        ends = [e[0] for e in events(pipe / before) if len(e) >= 4 and e[3] == "finished"]
        starts = [e[0] for e in events(pipe / after) if len(e) >= 4 and e[3].startswith("start restart=")]
        if ends and starts:
            out.append(f"{before} {ends[-1][11:]} -> {after} {starts[0][11:]}")
    return "; ".join(out)


def assert_two_pipelines(good: Path, bad: Path, stages: Sequence[str], good_status: str, bad_status: str) -> None:
    """What the PBS and Grid Engine pipeline scenarios check once both pipelines have ended: the good
    one's train stage extended its chain and moved convert onto the new link (qalter), convert started
    after the training finished, every step ran once in order, every stage is done; none of the failed
    one's later stages started, and ``status`` names the failed stage and the cancelled ones."""
    train = good / "train"
    texts = event_texts(train)
    assert job_kinds(train)[0] == "submit" and "extend" in job_kinds(train), texts
    moved = [t for t in texts if t.startswith("pipeline: stage convert now waits for ")]
    assert moved and "(qalter exit 0)" in moved[0], texts
    convert_start = [e[0] for e in events(good / "convert") if e[3].startswith("start restart=")][0]
    train_end = [e[0] for e in events(train) if e[3] == "finished"][0]
    assert convert_start >= train_end, (convert_start, train_end)
    rows = (train / "metrics.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows if r and r[0].isdigit()]
    assert (train / "done").exists() and steps == list(range(1, steps[-1] + 1)) and steps[-1] >= 8
    assert [l.split()[:2] for l in good_status.splitlines()[1:]] == [[s, "done"] for s in stages], good_status
    for s in stages[1:]:
        assert not (bad / s / "logs" / "run.log").exists(), f"{s} of the failed pipeline must never start"
    assert "pack     failed: pack command exited 2" in bad_status, bad_status
    assert "train    cancelled: stage pack did not finish (pack command exited 2" in bad_status, bad_status
