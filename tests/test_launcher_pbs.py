"""Real PBS (OpenPBS, the open-source PBS Professional) on this machine, driven through the launcher.

The server, scheduler, MOM and comm run in a private network namespace (PBS refuses loopback
addresses), and jobs are submitted by an ordinary user (pbs_mom ignores root's processes); see
``.ci/openpbs/start.sh``. Jobs train the real model (cpu_small, 2 Horovod ranks under mpirun).

- A deadline stop ends the first link partway with a checkpoint (PBS suspends the job with
  ``qsig -s suspend`` after a few steps and resumes it when its deadline is near); the
  pre-submitted ``-W depend=afterany`` link, and links the jobs submit themselves, resume it;
  the final weights equal those of the same training run uninterrupted.
- ``launcher cancel`` (stop marker + ``qdel``: SIGTERM to every process of the job, SIGKILL after
  kill_delay) ends the run cleanly with a checkpoint, and ``launcher resume`` finishes it to the
  same weights. ``qsig -s INT`` (the one signal a PBS job's login shell survives) makes the job
  checkpoint at its next step (SIGINT is one of the trainer's stop signals) and continue in a
  new link.
- The ABCI 3.0 profile's directives (``-q rt_HF``, ``select=N:mpiprocs=8``, ``-P group``) and the
  generic profile's GPU chunks (``select=N:ncpus=32:ngpus=4:mpiprocs=4``, ``place=scatter:excl``)
  are accepted by the real server.

The module fixture builds OpenPBS once when missing (cached under ~/.cache/pixpro-of), starts
it and stops, by PID, the daemons it started.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_clusters import (  # noqa: E402
    CHAIN_STOP_MARGIN_S,
    CHAIN_WALLTIME,
    TOTAL_STEPS,
    TRAIN_ARGS,
    assert_same_weights,
    assert_two_pipelines,
    checkpoint_steps,
    deadline_stops,
    dump_run,
    event_texts,
    events,
    job_ids,
    job_kinds,
    metrics_step,
    openpbs,
    reference_run,
    stage_gaps,
    stall_link_into_its_deadline,
    user_dir,
    wait_for,
    wait_until_done,
)

pytestmark = [pytest.mark.slow, pytest.mark.mpi]

# The generic pbs profile, sized for this node (2 cores instead of 32: select=1:ncpus=2:mpiprocs=2).
PROFILE = """name = "pbs-one-node"
scheduler = "pbs"
description = "the generic PBS Pro profile on a 2-core node"
gpus_per_node = 4
cpus_per_node = 2
cpu_ranks_per_node = 2
queue = ""
max_walltime = "48:00:00"
default_walltime = "04:00:00"
mpirun_flags = ["-bind-to", "none", "-mca", "pml", "ob1", "-mca", "btl", "^openib"]
local_dir_var = "TMPDIR"
warning_signal = ""
deadline_margin_s = 600
can_requeue = false
"""


@pytest.fixture(scope="module")
def pbs():
    with openpbs() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory.mktemp("pbs-reference"))


@pytest.fixture
def home(pbs, request):
    """A directory the job user owns, holding the profile; removed afterwards unless the test failed."""
    import shutil

    failed = request.session.testsfailed
    d = user_dir("launcher-pbs-", pbs.user)
    (d / "pbs-one-node.toml").write_text(PROFILE)
    yield d
    if request.session.testsfailed == failed:
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"kept {d}")


def launcher(pbs, home, *args, timeout=120):
    """The launcher as the job user, inside the PBS namespace (PBS's bin first on PATH)."""
    return pbs.ns([sys.executable, "-m", "launcher.cli", *args], user=pbs.user, cwd=str(home), timeout=timeout)


def job_args(home, name, run_dir, *options, extra=(), cluster="pbs-one-node.toml"):
    return [
        "--scheduler",
        "pbs",
        "--cluster",
        str(home / cluster),
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--name",
        name,
        "--run-dir",
        str(run_dir),
        *options,
        *TRAIN_ARGS,
        *extra,
    ]


def submit(pbs, home, name, run_dir, *options, extra=(), cluster="pbs-one-node.toml"):
    out = launcher(pbs, home, "submit", *job_args(home, name, run_dir, *options, extra=extra, cluster=cluster))
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert ids and all(i.split(".")[0].isdigit() for i in ids), out.stdout
    return ids


def state(pbs, job_id):
    return pbs.job_attrs(job_id)["job_state"]


def metrics_steps(run_dir: Path):
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows if r and r[0].isdigit()]


def show(pbs, run_dir):
    return dump_run(run_dir, pbs.qcmd("qstat", "-x", "-f", check=False).stdout[-4000:])


def init_profile(pbs, home) -> str:
    """``launcher profile init`` as the job user against the live server: what it learns, its refusals."""
    t0 = time.time()
    out = launcher(pbs, home, "profile", "init", "--scheduler", "pbs", "--out", str(home / "initpbs.toml"))
    took = time.time() - t0
    assert out.returncode == 0, out.stderr
    text = (home / "initpbs.toml").read_text()
    print(f"profile init on OpenPBS: {took:.2f} s (with the interpreter's start, in the namespace)\n{out.stdout}{text}")
    for line in (
        'queue = "workq"',
        "gpus_per_node = 0",
        "cpus_per_node = 2",
        'place = "scatter"',
        "can_requeue = false",
        "modules = []",
        "# qstat -Bf: default_queue = workq (queue_type Execution)",
        "# pbsnodes: resources_available.ncpus = 2 on 1 of 1 nodes",
        '# max_walltime = "24:00:00"',
    ):
        assert line in text.splitlines(), line
    bad = launcher(pbs, home, "profile", "init", "--scheduler", "pbs", "--queue", "gpu", "--out", str(home / "x.toml"))
    assert bad.returncode == 2 and bad.stderr.strip().endswith(
        "--queue gpu: no such queue (there are: workq, rt_HF)"
    ), bad.stderr
    return "initpbs.toml"


def test_pbs_qdel_stops_the_run_cleanly_and_resume_finishes_it(pbs, reference, home):
    run_dir = home / "cancel"
    # The profile `launcher profile init` wrote from this server's answers, used unchanged (2 CPU ranks
    # are asked on the command line: CPU-only runs are not what a profile is written for).
    cluster = init_profile(pbs, home)
    (job_id,) = submit(
        pbs, home, "pbs-cancel", run_dir, "--walltime", "00:30:00", "--ranks-per-node", "2", cluster=cluster
    )
    try:
        wait_for(lambda: metrics_step(run_dir) >= 3, 240, "step 3 of the first job")
        # launcher cancel: the stopped marker, then qdel: SIGTERM to every process of the job
        # (the login shell dies, the job script and the supervisor under it trap it), SIGKILL
        # after the queue's kill_delay (10 s by default).
        out = launcher(pbs, home, "cancel", str(run_dir))
        assert out.returncode == 0, out.stderr
        assert "qdel" in out.stderr
        wait_for(lambda: state(pbs, job_id) == "F", 90, "the cancelled job to end")
    except AssertionError:
        print(show(pbs, run_dir))
        raise
    texts = event_texts(run_dir)
    print("pbs cancel: events:\n" + "\n".join(texts))
    stopped_at = metrics_step(run_dir)
    assert 3 <= stopped_at < TOTAL_STEPS
    assert any(t.startswith("checkpointed; the run was stopped (cancelled by the user)") for t in texts), texts
    assert checkpoint_steps(run_dir)[-1] == stopped_at, "qdel's SIGTERM led to a checkpoint at the last step"
    assert "launcher: received SIGTERM" in (run_dir / "logs" / "run.log").read_text()
    assert job_kinds(run_dir) == ["submit"], "no link after the cancel"
    status = launcher(pbs, home, "status", str(run_dir), "--min-interval", "0")
    assert status.returncode == 0 and "stopped: cancelled by the user" in status.stdout, status.stdout

    out = launcher(pbs, home, "resume", str(run_dir))
    assert out.returncode == 0, out.stderr
    (resumed,) = out.stdout.split()
    try:
        wait_until_done(run_dir, 300, "the resumed run to finish")
        wait_for(lambda: state(pbs, resumed) == "F", 60, "the resumed job to end")
    except AssertionError:
        print(show(pbs, run_dir))
        raise
    assert pbs.job_attrs(resumed)["Exit_status"] == 0
    assert metrics_steps(run_dir) == list(range(1, TOTAL_STEPS + 1)), "steps lost or repeated"
    assert_same_weights(run_dir, reference, "qdel and launcher resume")


def test_pbs_afterany_chain_through_a_deadline_stop_ends_with_uninterrupted_weights(pbs, reference, home):
    run_dir = home / "chain"
    # As for Grid Engine: two links, the second with -W depend=afterany on the first, which stops
    # at its deadline partway. Here PBS itself suspends the first link (qsig -s suspend: SIGSTOP
    # to every process of the job) until its deadline is near and resumes it.
    t0 = time.time()
    ids = submit(
        pbs,
        home,
        "pbs-chain",
        run_dir,
        "--walltime",
        CHAIN_WALLTIME,
        "--chain",
        "2",
        "--max-timeouts",
        "50",
        extra=[f"stop.margin_s={CHAIN_STOP_MARGIN_S}"],
    )
    assert len(ids) == 2
    second = pbs.job_attrs(ids[1])
    assert second["depend"].startswith(f"afterany:{ids[0]}"), second["depend"]
    assert second["job_state"] == "H"

    def suspend():
        pbs.qcmd("qsig", "-s", "suspend", ids[0])
        wait_for(lambda: state(pbs, ids[0]) == "S", 30, "the first link to be suspended")

    def resume():
        pbs.qcmd("qsig", "-s", "resume", ids[0])

    try:
        how = stall_link_into_its_deadline(run_dir, 0, suspend=suspend, resume=resume)
        wait_until_done(run_dir, 600, "the chain to finish the run")
        wait_for(
            lambda: all(state(pbs, i) == "F" for i in job_ids(run_dir, "pbs")), 60, "every job of the chain to finish"
        )
    except AssertionError:
        print(show(pbs, run_dir))
        raise
    texts = event_texts(run_dir)
    links = [t for t in texts if t.startswith("start restart=")]
    print(
        f"pbs chain: {time.time() - t0:.0f} s, {len(links)} links, deadline stops at steps "
        f"{deadline_stops(run_dir)}; {how}; events:\n" + "\n".join(texts)
    )
    stops = [s for s in deadline_stops(run_dir) if 0 < s < TOTAL_STEPS]
    assert stops, texts
    assert f"resumed from step {stops[0]} " in (run_dir / "logs" / "train.log").read_text()
    first = [e[3] for e in events(run_dir) if e[2] == "0"]
    assert first[-1] == "chain: link 1 is already queued", first
    assert len(links) >= 2 and texts[-1] == "finished"
    assert metrics_steps(run_dir) == list(range(1, TOTAL_STEPS + 1))
    all_ids = job_ids(run_dir, "pbs")
    assert all_ids[:2] == ids
    assert job_kinds(run_dir) == ["submit", "chain"] + ["extend"] * (len(links) - 2)
    for i in all_ids:
        attrs = pbs.job_attrs(i)
        assert attrs["Exit_status"] == 0, (i, attrs.get("Exit_status"))
        assert attrs["euser"] == pbs.user
    assert_same_weights(run_dir, reference, "an afterany chain with a deadline stop")
    status = launcher(pbs, home, "status", str(run_dir))
    assert status.returncode == 0 and "state    done" in status.stdout, status.stdout + status.stderr


def test_pbs_qsig_int_checkpoints_at_the_current_step_and_continues_the_chain(pbs, home):
    run_dir = home / "qsig"
    (first,) = submit(pbs, home, "pbs-qsig", run_dir, "--walltime", "00:30:00")
    try:
        wait_for(lambda: metrics_step(run_dir) >= 3, 240, "step 3 of the first job")
        # qsig signals every process of the job, its top shell included: PBS runs the script
        # as a child of the user's login shell, which a signal it does not handle kills, and
        # PBS then kills the whole job at once (USR2, TERM: Exit_status 256 + N, no checkpoint).
        # bash survives SIGINT while it waits for a command that handles it, so `qsig -s INT`
        # is the signal that can ask a PBS job to checkpoint now and continue in a new link.
        pbs.qcmd("qsig", "-s", "INT", first, user=pbs.user)
        wait_for(lambda: state(pbs, first) == "F", 90, "the signalled job to end")
        wait_for(lambda: len(job_kinds(run_dir)) == 2, 30, "the next link")
    except AssertionError:
        print(show(pbs, run_dir))
        raise
    finally:
        launcher(pbs, home, "cancel", str(run_dir))
    texts = event_texts(run_dir)
    print("pbs qsig: events:\n" + "\n".join(texts))
    assert pbs.job_attrs(first)["Exit_status"] == 0
    assert job_kinds(run_dir) == ["submit", "extend"]
    log = (run_dir / "logs" / "run.log").read_text()
    assert "launcher: received SIGINT" in log
    assert any(t.startswith("checkpointed: timeout 1 of") for t in texts), texts
    # The checkpoint is at the last step the job ran (SIGINT is one of the trainer's stop signals),
    # not an older periodic one.
    assert "pixpro_of train: interrupted" not in log
    assert checkpoint_steps(run_dir)[-1] == metrics_step(run_dir), texts


@pytest.mark.parametrize(
    "profile_args, expect",
    [
        # data.synthetic=true: the job never starts, and submit refuses a shard preset without --data
        (
            ["--cluster", "abci3", "--gpus", "16", "--frames", "6", "--group", "gXXXX", "data.synthetic=true"],
            {"queue": "rt_HF", "project": "gXXXX", "select": "2:mpiprocs=8", "nodect": 2, "place": None},
        ),
        (
            ["--gpus", "8", "--frames", "6", "data.synthetic=true"],
            {
                "queue": "workq",
                "project": "_pbs_project_default",
                "select": "2:ncpus=32:ngpus=4:mpiprocs=4",
                "nodect": 2,
                "place": "scatter:excl",
            },
        ),
    ],
    ids=["abci3", "generic-gpu"],
)
def test_pbs_server_accepts_the_profiles_directives(pbs, home, profile_args, expect):
    """Submitted for real through the launcher. The jobs never start here: rt_HF accepts jobs
    but is not started, and the generic profile's two exclusive GPU nodes do not exist."""
    run_dir = home / "directives"
    # two nodes: the test user's home is under /tmp, which the launcher takes for node-local unless told
    out = launcher(
        pbs,
        home,
        "submit",
        "--scheduler",
        "pbs",
        *profile_args,
        "--name",
        "pbs-directives",
        "--run-dir",
        str(run_dir),
        "--walltime",
        "12:00:00",
        "--allow-node-local-paths",
        "--mail",
        "me@example.org",
    )
    assert out.returncode == 0, out.stderr
    (job_id,) = out.stdout.split()
    try:
        attrs = pbs.job_attrs(job_id)
        assert attrs["queue"] == expect["queue"]
        assert attrs["project"] == expect["project"]
        res = attrs["Resource_List"]
        assert res["select"] == expect["select"]
        assert res["nodect"] == expect["nodect"]
        assert res["walltime"] == "12:00:00"
        assert res.get("place") == expect["place"] or (expect["place"] is None and res.get("place") == "free")
        assert attrs["Join_Path"] == "oe" and attrs["Rerunable"] == "True"
        assert attrs["job_state"] == "Q"
        assert attrs["Job_Name"] == "pbs-directives"
        assert str(attrs["Variable_List"]["LAUNCHER_LINK"]) == "0"
        assert (attrs["Mail_Users"], attrs["Mail_Points"]) == ("me@example.org", "ae")
    finally:
        cancel = launcher(pbs, home, "cancel", str(run_dir))
        assert cancel.returncode == 0, cancel.stderr
    wait_for(lambda: state(pbs, job_id) == "F", 60, "the deleted job to finish")
    assert not (run_dir / "logs" / "run.log").exists(), "the job never started"


def test_pbs_pipeline_moves_its_dependents_onto_new_links_and_a_failed_stage_deletes_the_rest(pbs, home):
    """Two pipelines at once on OpenPBS as shipped (depend=afterok). The good one: pack (synthetic
    world, exact flows) -> flow (nothing left to compute) -> verify -> train, whose first link stops at
    its deadline (PBS suspends it until the deadline is near) and submits the next link itself ->
    convert. The link moves convert's dependency onto the new link (qalter), so convert runs after
    the training has finished, not after the first link. The other pipeline's pack finds no videos
    and fails: its later stages are deleted without ever starting and ``status`` names the stage."""
    good, bad = home / "pipe", home / "failing"
    (home / "empty" / "videos" / "train").mkdir(parents=True)
    common = [
        "--scheduler",
        "pbs",
        "--cluster",
        str(home / "pbs-one-node.toml"),
        "--gpus",
        "0",
        "--preset",
        "cpu_small",
        "--flow-model",
        "dis",
        "data.synthetic=false",
        *TRAIN_ARGS,
    ]
    t0 = time.time()
    out = launcher(
        pbs,
        home,
        "pipeline",
        *common,
        "--videos",
        "synth:videos=8,frames=6,size=128x64,seed=0",
        "--dir",
        str(good),
        "--walltime",
        CHAIN_WALLTIME,
        "--max-timeouts",
        "50",
        f"stop.margin_s={CHAIN_STOP_MARGIN_S}",
    )
    assert out.returncode == 0, out.stderr
    out = launcher(pbs, home, "pipeline", *common, "--videos", str(home / "empty"), "--dir", str(bad))
    assert out.returncode == 0, out.stderr
    stages = ("pack", "flow", "verify", "train", "convert")

    def stage_jobs(pipe, stage):
        return [
            l.split("\t")[3] or l.split("\t")[4].strip()
            for l in (pipe / stage / "job" / "jobs.tsv").read_text().splitlines()
        ]

    first = {s: stage_jobs(good, s)[0] for s in stages}
    assert pbs.job_attrs(first["flow"])["depend"].startswith(f"afterok:{first['pack']}")
    assert pbs.job_attrs(first["convert"])["depend"].startswith(f"afterok:{first['train']}")
    train = good / "train"

    def suspend():
        pbs.qcmd("qsig", "-s", "suspend", first["train"])
        wait_for(lambda: state(pbs, first["train"]) == "S", 30, "the first link to be suspended")

    def resume():
        pbs.qcmd("qsig", "-s", "resume", first["train"])

    try:
        how = stall_link_into_its_deadline(train, 0, suspend=suspend, resume=resume)
        wait_for(lambda: (good / "convert" / "done").exists(), 600, "the good pipeline's convert stage")
        bad_ids = {s: stage_jobs(bad, s)[0] for s in stages}
        wait_for(lambda: all(state(pbs, bad_ids[s]) == "F" for s in stages), 120, "the failed pipeline's jobs to end")
    except AssertionError:
        print(show(pbs, train))
        for p in sorted(good.glob("*/job/events.tsv")) + sorted(bad.glob("*/job/events.tsv")):
            print(f"==== {p}\n{p.read_text()[-2000:]}")
        raise
    texts = event_texts(train)
    print(
        f"pbs pipeline: {time.time() - t0:.0f} s; {how}; stage end -> next start: "
        f"{stage_gaps(good, stages)}; train events:\n" + "\n".join(texts)
    )
    assert_two_pipelines(
        good,
        bad,
        stages,
        launcher(pbs, home, "status", str(good)).stdout,
        launcher(pbs, home, "status", str(bad)).stdout,
    )
