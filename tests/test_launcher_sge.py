"""Real Grid Engine (Debian's 8.1.9) on this machine, driven through the launcher with the generic
``sge`` profile as shipped (parallel environment ``mpi``, ``-notify``, a chain of ``-hold_jid``
links), training the real model (cpu_small, 2 Horovod ranks under mpirun).

- A deadline stop (the job's walltime minus the profile's margin) ends the first link partway
  with a checkpoint (its ranks are stalled with SIGSTOP after a few steps until the deadline is
  near: the step time on a shared machine is too uncertain for a walltime alone to do it); the
  pre-submitted ``-hold_jid`` link, and links the jobs submit themselves, resume it; the final
  weights equal those of the same training run uninterrupted.
- ``launcher cancel`` (stop marker + ``qdel``) on a ``-notify`` job: Grid Engine sends SIGUSR2
  before the kill, the trainer checkpoints at the next step, the job exits cleanly without
  continuing the chain, and ``launcher resume`` finishes the run to the same weights.

The module fixture installs the cell when missing (``.ci/gridengine/install.sh``), starts
sge_qmaster and sge_execd (``.ci/gridengine/start.sh``) and stops, by PID, the ones it started.
"""

from __future__ import annotations

import subprocess
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
    grid_engine,
    job_ids,
    job_kinds,
    metrics_step,
    reference_run,
    stage_gaps,
    stall_link_into_its_deadline,
    wait_for,
    wait_until_done,
)

pytestmark = [pytest.mark.slow, pytest.mark.mpi]


@pytest.fixture(scope="module")
def sge():
    with grid_engine() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory.mktemp("sge-reference"))


def launcher(sge, *args, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        env=sge.env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(sge, run_dir: Path, name: str, *options: str, extra=()):
    # The generic profile as shipped unless --cluster is among the options, CPU ranks (--gpus 0: 2 ranks
    # on one node, -pe mpi 2). No --python: the job runs the interpreter (and activates the venv) that submitted it.
    out = launcher(
        sge,
        "submit",
        "--scheduler",
        "sge",
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
        cwd=run_dir.parent,
    )
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert ids and all(i.isdigit() for i in ids), out.stdout
    return ids


def job_listed(sge, job_id: str) -> bool:
    return any(line.split()[:1] == [job_id] for line in sge.run("qstat", check=False).stdout.splitlines())


def metrics_steps(run_dir: Path):
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows if r and r[0].isdigit()]


def init_profile(sge, tmp_path: Path) -> Path:
    """``launcher profile init`` against the live cell: what it learns, and its one-line refusals."""
    profile = tmp_path / "initsge.toml"
    t0 = time.time()
    out = launcher(sge, "profile", "init", "--scheduler", "sge", "--out", str(profile), cwd=tmp_path)
    took = time.time() - t0
    assert out.returncode == 0, out.stderr
    text = profile.read_text()
    print(f"profile init on Grid Engine: {took:.2f} s (with the interpreter's start)\n{out.stdout}{text}")
    for line in (
        'queue = "all.q"',
        'parallel_env = "mpi"',
        "gpus_per_node = 0",
        "cpus_per_node = 2",
        'warning_signal = "USR2"',
        'local_dir_var = "TMPDIR"',
        "can_requeue = false",
        "modules = []",
        "# qhost: NCPU=2 on 1 of 1 hosts of all.q",
        '# max_walltime = "24:00:00"',
    ):
        assert line in text.splitlines(), line
    bad = launcher(
        sge,
        "profile",
        "init",
        "--scheduler",
        "sge",
        "--queue",
        "gpu.q",
        "--out",
        str(tmp_path / "x.toml"),
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and bad.stderr.strip().endswith(
        "--queue gpu.q: no such cluster queue (there are: all.q)"
    ), bad.stderr
    return profile


def test_sge_notify_qdel_stops_the_run_cleanly_and_resume_finishes_it(sge, reference, tmp_path):
    run_dir = tmp_path / "cancel"
    # The profile `launcher profile init` wrote from this cell's answers, used unchanged (2 CPU ranks
    # are asked on the command line: CPU-only runs are not what a profile is written for).
    profile = init_profile(sge, tmp_path)
    (job_id,) = submit(
        sge, run_dir, "sge-cancel", "--walltime", "00:30:00", "--cluster", str(profile), "--ranks-per-node", "2"
    )
    try:
        wait_for(lambda: metrics_step(run_dir) >= 3, 240, "step 3 of the first job")
        # The launcher's way to stop a run: the stopped marker, then qdel (with -notify, Grid
        # Engine sends SIGUSR2 and waits the queue's notify time before SIGKILL).
        out = launcher(sge, "cancel", str(run_dir), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "qdel" in out.stderr
        wait_for(lambda: not job_listed(sge, job_id), 90, "the cancelled job to end")
    except AssertionError:
        print(dump_run(run_dir, sge.run("qstat", "-f", check=False).stdout))
        raise
    texts = event_texts(run_dir)
    print("sge cancel: events:\n" + "\n".join(texts))
    stopped_at = metrics_step(run_dir)
    assert 3 <= stopped_at < TOTAL_STEPS, texts
    # A checkpoint at the step where the signal arrived, not an older periodic one.
    assert checkpoint_steps(run_dir)[-1] == stopped_at
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}.pt"
    assert any(t.startswith("checkpointed; the run was stopped (cancelled by the user)") for t in texts), texts
    assert "launcher: received SIGUSR2" in (run_dir / "logs" / "run.log").read_text()
    assert not (run_dir / "done").exists()
    jobs = (run_dir / "job" / "jobs.tsv").read_text().splitlines()
    assert len(jobs) == 1, "a cancelled run submits no further link"
    status = launcher(sge, "status", str(run_dir), "--min-interval", "0", cwd=tmp_path)
    assert status.returncode == 0 and "stopped: cancelled by the user" in status.stdout, status.stdout

    out = launcher(sge, "resume", str(run_dir), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (resumed,) = out.stdout.split()
    try:
        wait_until_done(run_dir, 300, "the resumed run to finish")
    except AssertionError:
        print(dump_run(run_dir, sge.run("qstat", "-f", check=False).stdout))
        raise
    assert metrics_steps(run_dir) == list(range(1, TOTAL_STEPS + 1)), "the resumed job lost or repeated steps"
    assert_same_weights(run_dir, reference, "qdel -notify and launcher resume")
    wait_for(lambda: not job_listed(sge, resumed), 60, "the resumed job to leave the queue")


def test_sge_hold_jid_chain_through_a_deadline_stop_ends_with_uninterrupted_weights(sge, reference, tmp_path):
    run_dir = tmp_path / "chain"
    # Two links, the second held by -hold_jid on the first. The first stops at its deadline
    # (walltime 1:20 minus the profile's margin, capped at a quarter of it) partway through the
    # 16 steps, with a checkpoint; the second resumes it, stops at its own deadline too and
    # submits the third link itself (qsub -hold_jid on itself, from inside the job), which
    # finishes the run.
    t0 = time.time()
    ids = submit(
        sge,
        run_dir,
        "sge-chain",
        "--walltime",
        CHAIN_WALLTIME,
        "--chain",
        "2",
        "--max-timeouts",
        "50",
        extra=[f"stop.margin_s={CHAIN_STOP_MARGIN_S}"],
    )
    assert len(ids) == 2
    detail = sge.run("qstat", "-j", ids[1], check=False).stdout
    assert any(
        l.split(":")[0].strip() == "jid_predecessor_list" and ids[0] in l for l in detail.splitlines()
    ) or not job_listed(sge, ids[0]), detail
    try:
        how = [stall_link_into_its_deadline(run_dir, 0), stall_link_into_its_deadline(run_dir, 1, steps=2)]
        wait_until_done(run_dir, 600, "the chain to finish the run")
        wait_for(
            lambda: not any(job_listed(sge, i) for i in job_ids(run_dir, "sge")),
            60,
            "the chain's jobs to leave the queue",
        )
    except AssertionError:
        print(dump_run(run_dir, sge.run("qstat", "-f", check=False).stdout))
        raise
    texts = event_texts(run_dir)
    links = [t for t in texts if t.startswith("start restart=")]
    print(
        f"sge chain: {time.time() - t0:.0f} s, {len(links)} links, deadline stops at steps "
        f"{deadline_stops(run_dir)}; {how}; events:\n" + "\n".join(texts)
    )
    # A link (the first, unless the machine was too busy for it to run a step) stopped at its
    # deadline partway, with a checkpoint the next link resumed from; the first link left the
    # run to the pre-submitted second one.
    stops = [s for s in deadline_stops(run_dir) if 0 < s < TOTAL_STEPS]
    assert stops, texts
    assert f"resumed from step {stops[0]} " in (run_dir / "logs" / "train.log").read_text()
    first = [e[3] for e in events(run_dir) if e[2] == "0"]
    assert first[-1] == "chain: link 1 is already queued", first
    assert len(links) >= 3 and texts[-1] == "finished"
    assert any(t.startswith("chain: submitted link 2: ") for t in texts), texts
    # Each step ran exactly once, in order, across the links.
    assert metrics_steps(run_dir) == list(range(1, TOTAL_STEPS + 1))
    assert job_ids(run_dir, "sge")[:2] == ids
    # Links after the two pre-submitted ones were submitted by the jobs themselves.
    assert job_kinds(run_dir) == ["submit", "chain"] + ["extend"] * (len(links) - 2)
    assert_same_weights(run_dir, reference, "a -hold_jid chain with a deadline stop")
    status = launcher(sge, "status", str(run_dir), cwd=tmp_path)
    assert status.returncode == 0 and "state    done" in status.stdout, status.stdout + status.stderr


def test_sge_pipeline_moves_its_dependents_onto_new_links_and_a_failed_stage_stops_the_rest(sge, tmp_path):
    """Two pipelines at once on Grid Engine as shipped (-hold_jid, which waits for a job whatever its
    exit). The good one: pack (synthetic world, exact flows) -> flow -> verify -> train, whose first
    link stops at its deadline and submits the next link itself, moving convert's hold onto it
    (qalter -hold_jid) -> convert, which starts after the training finished. The other's pack finds
    no videos and fails: its later stages are deleted (qdel) before they start, and ``status`` names
    the stage."""
    good, bad = tmp_path / "pipe", tmp_path / "failing"
    (tmp_path / "empty" / "videos" / "train").mkdir(parents=True)
    common = [
        "--scheduler",
        "sge",
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
        sge,
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
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    out = launcher(sge, "pipeline", *common, "--videos", str(tmp_path / "empty"), "--dir", str(bad), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    stages = ("pack", "flow", "verify", "train", "convert")

    def stage_jobs(pipe, stage):
        return job_ids(pipe / stage, "sge")

    first = {s: stage_jobs(good, s)[0] for s in stages}
    detail = sge.run("qstat", "-j", first["convert"], check=False).stdout
    assert any(l.split(":")[0].strip() == "jid_predecessor_list" and first["train"] in l for l in detail.splitlines())
    train = good / "train"
    try:
        how = stall_link_into_its_deadline(train, 0)
        wait_for(lambda: (good / "convert" / "done").exists(), 600, "the good pipeline's convert stage")
        bad_ids = [stage_jobs(bad, s)[0] for s in stages]
        wait_for(lambda: not any(job_listed(sge, i) for i in bad_ids), 120, "the failed pipeline's jobs to leave")
    except AssertionError:
        for p in sorted(good.glob("*/job/events.tsv")) + sorted(bad.glob("*/job/events.tsv")):
            print(f"==== {p}\n{p.read_text()[-2000:]}")
        raise
    texts = event_texts(train)
    print(
        f"sge pipeline: {time.time() - t0:.0f} s; {how}; stage end -> next start: "
        f"{stage_gaps(good, stages)}; train events:\n" + "\n".join(texts)
    )
    assert_two_pipelines(
        good,
        bad,
        stages,
        launcher(sge, "status", str(good), cwd=tmp_path).stdout,
        launcher(sge, "status", str(bad), cwd=tmp_path).stdout,
    )
