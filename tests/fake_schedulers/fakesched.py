#!/usr/bin/env python3
"""Fake PBS Pro (qsub/qstat/qdel) and Fujitsu PJM (pjsub/pjstat/pjdel) for launcher tests.

Neither scheduler installs on Debian, so these stand in for them on PATH. Jobs really run:
each submit starts a detached worker that waits for the job's dependencies, then runs the
script with ``bash`` and the variables the real scheduler sets (PBS_JOBID, PBS_NODEFILE,
PBS_O_WORKDIR, PBS_LOCALDIR, ...; PJM_JOBID, PJM_O_NODEINF, PJM_O_WORKDIR, PJM_LOCALTMP, ...),
enforces the walltime (SIGTERM, then SIGKILL after FAKE_KILL_DELAY seconds, default 10) and
records the exit status. State is a JSON file under $FAKE_SCHED_DIR guarded by a file lock.

Supported: PBS ``qsub [-v A=1,B=2] [-W depend=afterany:ID[:ID]] [-o PATH] [-N NAME] SCRIPT`` with
``#PBS -l select=N:...:mpiprocs=M`` and ``#PBS -l walltime=``; ``qstat -x [IDS]``; ``qdel IDS``.
PJM ``pjsub [--step [--sparam jid=ID]] [-x A=1] [-o PATH] SCRIPT`` with ``#PJM -L node=N``,
``--mpi proc=P`` and ``-L elapse=``; ``pjstat``; ``pjdel IDS``.
"""

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

STATE_DIR = os.environ.get("FAKE_SCHED_DIR", "")


def die(msg, code=1):
    print(msg, file=sys.stderr)
    sys.exit(code)


@contextmanager
def locked_state():
    if not STATE_DIR:
        die("fake scheduler: FAKE_SCHED_DIR is not set")
    os.makedirs(STATE_DIR, exist_ok=True)
    path = os.path.join(STATE_DIR, "queue.json")
    with open(os.path.join(STATE_DIR, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = {"next": 100, "jobs": {}}
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
        yield state
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, path)


def hms(text):
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def directives(script, prefix):
    out = []
    with open(script) as f:
        for line in f:
            if line.startswith(prefix):
                out += shlex.split(line[len(prefix) :])
    return out


# ---------------------------------------------------------------- submit


def submit_pbs(argv):
    env, deps, out, name = {}, [], None, None
    words = list(argv)
    script = words.pop()
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-v":
            for item in words[i + 1].split(","):
                k, v = item.split("=", 1)
                env[k] = v
            i += 2
        elif w == "-W":
            m = re.match(r"depend=afterany:(.+)", words[i + 1])
            if not m:
                die(f"qsub: unsupported -W {words[i + 1]}")
            deps += m.group(1).split(":")
            i += 2
        elif w == "-o":
            out = words[i + 1]
            i += 2
        elif w == "-N":
            name = words[i + 1]
            i += 2
        elif w in ("-q", "-P", "-l", "-j", "-r"):
            i += 2
        else:
            die(f"qsub: unsupported option {w}")
    refuse = os.environ.get("FAKE_REFUSE_LINK")  # test aid: refuse the job of this chain link
    if refuse is not None and env.get("LAUNCHER_LINK") == refuse:
        die("qsub: Maximum number of jobs already in queue for user")
    nodes, procs, walltime = 1, 1, 3600
    d = directives(script, "#PBS")
    for j, w in enumerate(d):
        if w == "-l":
            val = d[j + 1]
            m = re.match(r"select=(\d+)(.*)", val)
            if m:
                nodes = int(m.group(1))
                mp = re.search(r"mpiprocs=(\d+)", m.group(2))
                procs = int(mp.group(1)) if mp else 1
            if val.startswith("walltime="):
                walltime = hms(val.split("=", 1)[1])
        if w == "-N" and name is None:
            name = d[j + 1]
    with locked_state() as st:
        for dep in deps:
            if dep not in st["jobs"]:
                die(f"qsub: illegal dependency job id {dep}")
        n = st["next"]
        st["next"] += 1
        job_id = f"{n}.fakepbs"
        st["jobs"][job_id] = dict(
            kind="pbs",
            state="Q",
            deps=deps,
            script=os.path.abspath(script),
            env=env,
            out=out or os.path.join(os.getcwd(), f"{name or 'job'}.o{n}"),
            name=name or "job",
            nodes=nodes,
            procs=procs,
            walltime=walltime,
            cwd=os.getcwd(),
            rc=None,
            pid=None,
            submitted=time.time(),
        )
    start_worker(job_id)
    print(job_id)


def submit_pjm(argv):
    env, out, name, step, jid = {}, None, None, False, None
    words = list(argv)
    script = words.pop()
    i = 0
    while i < len(words):
        w = words[i]
        if w == "--step":
            step = True
            i += 1
        elif w == "--sparam":
            m = re.search(r"jid=(\d+)", words[i + 1])
            jid = m.group(1) if m else None
            i += 2
        elif w == "-x":
            k, v = words[i + 1].split("=", 1)
            env[k] = v
            i += 2
        elif w == "-o":
            out = words[i + 1]
            i += 2
        elif w in ("-N", "-L", "-g"):
            if w == "-N":
                name = words[i + 1]
            i += 2
        else:
            die(f"pjsub: unsupported option {w}")
    nodes, procs, walltime = 1, 1, 3600
    d = directives(script, "#PJM")
    for j, w in enumerate(d):
        if w == "-L" and j + 1 < len(d):
            val = d[j + 1]
            if val.startswith("node="):
                nodes = int(val.split("=")[1])
            if val.startswith("elapse="):
                walltime = hms(val.split("=", 1)[1])
        if w == "--mpi" and d[j + 1].startswith("proc="):
            procs = int(d[j + 1].split("=")[1])
        if w == "-N" and name is None:
            name = d[j + 1]
    with locked_state() as st:
        deps = []
        if step and jid:
            subs = sorted((k for k in st["jobs"] if k.startswith(jid + "_")), key=lambda k: int(k.split("_")[1]))
            if not subs or all(st["jobs"][k]["state"] in ("EXT", "CCL") for k in subs):
                die(f"[ERR.] PJM 0070 pjsub The specified step job {jid} has already ended.")
            job_id = f"{jid}_{int(subs[-1].split('_')[1]) + 1}"
            deps = [subs[-1]]
        else:
            n = st["next"]
            st["next"] += 1
            job_id = f"{n}_0" if step else str(n)
        st["jobs"][job_id] = dict(
            kind="pjm",
            state="QUE",
            deps=deps,
            script=os.path.abspath(script),
            env=env,
            out=out or os.path.join(os.getcwd(), f"{name or 'job'}.{job_id}.out"),
            name=name or "job",
            nodes=nodes,
            procs=max(1, procs // max(nodes, 1)),
            walltime=walltime,
            cwd=os.getcwd(),
            rc=None,
            pid=None,
            submitted=time.time(),
        )
    start_worker(job_id)
    print(f"[INFO] PJM 0000 pjsub Job {job_id} submitted.")


def start_worker(job_id):
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "_worker", job_id],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------- worker

FINISHED = ("F", "EXT", "CCL")


def worker(job_id):
    while True:
        with locked_state() as st:
            job = st["jobs"][job_id]
            if job["state"] in FINISHED:
                return
            deps = [st["jobs"].get(d, {"state": "F"}) for d in job["deps"]]
            if job["kind"] == "pbs" and any(d["state"] == "F" and d.get("never_ran") for d in deps):
                job.update(state="F", never_ran=True, rc=None)  # PBS deletes afterany dependents of deleted jobs
                return
            if all(d["state"] in FINISHED for d in deps):
                job["state"] = "R" if job["kind"] == "pbs" else "RUN"
                job["started"] = time.time()
                break
        time.sleep(0.2)
    scratch = os.path.join(STATE_DIR, "local", job_id)
    os.makedirs(scratch, exist_ok=True)
    nodefile = os.path.join(STATE_DIR, f"nodes.{job_id}")
    with open(nodefile, "w") as f:
        hosts = ["localhost"] + [f"fakenode{i}" for i in range(1, job["nodes"])]
        for h in hosts:
            if job["kind"] == "pbs":
                f.write((h + "\n") * job["procs"])
            else:
                f.write(h + "\n")
    env = dict(os.environ)
    env.update(job["env"])
    env["TMPDIR"] = scratch
    if job["kind"] == "pbs":
        env.update(
            PBS_JOBID=job_id,
            PBS_JOBNAME=job["name"],
            PBS_NODEFILE=nodefile,
            PBS_O_WORKDIR=job["cwd"],
            PBS_LOCALDIR=scratch,
            PBS_ENVIRONMENT="PBS_BATCH",
            PBS_QUEUE="workq",
        )
    else:
        env.update(
            PJM_JOBID=job_id,
            PJM_JOBNAME=job["name"],
            PJM_O_NODEINF=nodefile,
            PJM_O_WORKDIR=job["cwd"],
            PJM_LOCALTMP=scratch,
            PJM_MPI_PROC=str(job["procs"] * job["nodes"]),
            PJM_PROC_BY_NODE=str(job["procs"]),
            PJM_SUBJOBID=job_id,
        )
    with open(job["out"], "a") as out:
        proc = subprocess.Popen(
            ["bash", job["script"]],
            cwd=os.environ.get("HOME", "/"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with locked_state() as st:
        st["jobs"][job_id]["pid"] = proc.pid
    delay = float(os.environ.get("FAKE_KILL_DELAY", "10"))
    start = time.time()
    termed = None
    while proc.poll() is None:
        time.sleep(0.1)
        if termed is None and time.time() - start >= job["walltime"]:
            os.killpg(proc.pid, signal.SIGTERM)
            termed = time.time()
        if termed is not None and time.time() - termed >= delay:
            os.killpg(proc.pid, signal.SIGKILL)
    with locked_state() as st:
        j = st["jobs"][job_id]
        j["rc"] = proc.returncode
        j["ended"] = time.time()
        if j["state"] not in FINISHED:
            j["state"] = "F" if j["kind"] == "pbs" else "EXT"


# ---------------------------------------------------------------- query, delete


def qstat(argv):
    ids = [a for a in argv if not a.startswith("-")]
    with locked_state() as st:
        jobs = st["jobs"]
    print("Job id            Name             User              Time Use S Queue")
    print("----------------  ---------------- ----------------  -------- - -----")
    for jid, j in jobs.items():
        if j["kind"] != "pbs" or (ids and jid not in ids):
            continue
        if j["state"] == "F" and "-x" not in argv:
            continue
        print(f"{jid:17s} {j['name'][:16]:16s} {'root':16s}  00:00:00 {j['state']} workq")


def pjstat(argv):
    with locked_state() as st:
        jobs = st["jobs"]
    print("JOB_ID     JOB_NAME   MD STATUS  USER     START_DATE      ELAPSE_LIM NODE_REQUIRE")
    for jid, j in jobs.items():
        if j["kind"] != "pjm" or j["state"] in FINISHED:
            continue
        print(
            f"{jid:10s} {j['name'][:10]:10s} NM {j['state']:7s} root     -               {j['walltime']:10d} "
            f"{j['nodes']}"
        )


def delete(argv, kind):
    for jid in argv:
        with locked_state() as st:
            j = st["jobs"].get(jid)
            if j is None or j["kind"] != kind:
                print(f"{'qdel' if kind == 'pbs' else 'pjdel'}: Unknown Job Id {jid}", file=sys.stderr)
                continue
            if j["state"] in FINISHED:
                continue
            pid = j.get("pid")
            if j["state"] in ("Q", "QUE"):
                j.update(state="F" if kind == "pbs" else "CCL", never_ran=True)
                continue
            j["state"] = "F" if kind == "pbs" else "CCL"
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def main():
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if tool in ("fakesched.py", "fakesched") and args and args[0] == "_worker":
        return worker(args[1])
    if tool in ("fakesched.py", "fakesched"):
        tool, args = args[0], args[1:]
    if STATE_DIR:
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(os.path.join(STATE_DIR, "calls.log"), "a") as f:
            f.write(" ".join([tool] + args) + "\n")
    {
        "qsub": submit_pbs,
        "pjsub": submit_pjm,
        "qstat": qstat,
        "pjstat": pjstat,
        "qdel": lambda a: delete(a, "pbs"),
        "pjdel": lambda a: delete(a, "pjm"),
    }[tool](args)


if __name__ == "__main__":
    main()
