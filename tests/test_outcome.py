"""The job's policy (launcher/outcome.py): every outcome of a link under every scheduler, without a job.

Each case builds a run directory, plays one link's steps as the job script would call them
(``begin``, ``staged``, ``decide``, ``requeued``, ``extended``) and checks the action the script
is told, the events, the ``stopped`` marker, the counters and ``jobs.tsv``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launcher.job_files import RunDir
from launcher.outcome import Decision, Link, LinkContext, main, silent_hosts

# scheduler -> how its links continue a checkpointed run (as the templates render it)
MODES = {"local": "local", "slurm": "requeue", "slurm-chain": "chain", "pbs": "chain", "sge": "chain", "pjm": "chain"}
WALLTIME = 3600
LEAD = 300
START = 1_000_000


def make_link(
    tmp_path, sched="pbs", link=0, chain=1, now=START + 100, max_timeouts=2, max_preemptions=3, job_id="123.server"
):
    run = tmp_path / "run"
    for sub in ("job", "logs", "checkpoints"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    said = []
    ctx = LinkContext(
        run_dir=str(run),
        job_id=job_id,
        link=link,
        start=START,
        walltime_s=WALLTIME,
        warning_lead_s=LEAD,
        chain_length=chain,
        max_timeouts=max_timeouts,
        max_preemptions=max_preemptions,
        resume_mode=MODES[sched],
        scheduler=sched.split("-")[0],
        clock=lambda: now,
    )
    return Link(ctx, say=said.append), RunDir(str(run)), said


def events(rd):
    return [e[3] for e in rd.events()]


def write_checkpoint(rd, step):
    name = f"step_{step:06d}.pt"
    (rd.checkpoints / name).write_bytes(b"x" * step)
    (rd.checkpoints / "latest").write_text(name + "\n")
    return name


# ------------------------------------------------------------------ begin


@pytest.mark.parametrize("sched", sorted(MODES))
def test_begin_goes_on_and_skips_a_done_or_stopped_run(tmp_path, sched):
    link, rd, said = make_link(tmp_path, sched)
    assert link.begin("node1") == Decision("go")
    assert events(rd) == ["start restart=0 host=node1"] and said == events(rd)
    rd.done.write_text("")
    assert link.begin("node1").line() == "exit 0 120"
    assert events(rd)[-1] == "skip: the run is done"
    rd.done.unlink()
    rd.stop("cancelled by the user")
    assert link.begin("node2").line() == "exit 0 120"
    assert events(rd)[-1] == "skip: the run was stopped (cancelled by the user); 'launcher resume' continues it"
    row = rd.events()[-1]
    assert row[1] == "123.server" and row[2] == "0" and row[0].endswith("Z")


# ------------------------------------------------------------------ staging


def test_staging_success_signal_and_failure(tmp_path):
    link, rd, _ = make_link(tmp_path)
    assert link.staged(0, "", 7) == Decision("go") and events(rd) == ["staged in 7 s"]
    assert link.staged(143, "TERM", 3) == Decision("resume") and rd.stopped_reason() is None
    assert link.staged(1, "", 3).line() == "exit 1 120"
    assert events(rd)[-1] == "fail: staging exited 1" and rd.stopped_reason() == "staging failed (exit 1)"


# ------------------------------------------------------------------ decide


@pytest.mark.parametrize("sched", sorted(MODES))
def test_finished(tmp_path, sched):
    link, rd, _ = make_link(tmp_path, sched)
    rd.done.write_text("")
    assert link.decide(0, "", "").line() == "exit 0 120" and events(rd) == ["finished"]
    rd.done.unlink()
    assert link.decide(0, "", "").line() == "exit 0 120" and events(rd)[-1] == "finished: exit 0 but no done marker"
    assert rd.stopped_reason() is None


@pytest.mark.parametrize("sched", sorted(MODES))
def test_failure_stops_the_run_and_names_silent_nodes(tmp_path, sched):
    link, rd, _ = make_link(tmp_path, sched)
    assert link.decide(3, "", "", probe=lambda: []).line() == "exit 3 120"
    assert events(rd) == ["fail: trainer exited 3"] and rd.stopped_reason() == "trainer exited 3 in job 123.server"
    assert link.decide(137, "", "", probe=lambda: ["node2", "node3"]).line() == "exit 137 10"
    assert events(rd)[-1] == "fail: trainer exited 137; no answer from node2 node3 within 10 s (node down?)"


@pytest.mark.parametrize("sched", sorted(MODES))
def test_checkpointed_for_the_walltime_continues_by_the_schedulers_means(tmp_path, sched):
    link, rd, _ = make_link(tmp_path, sched, now=START + WALLTIME - 100)
    before = link.checkpoint_stamp()
    name = write_checkpoint(rd, 40)
    d = link.decide(75, "USR2", before)
    assert rd.counters() == {"timeout": 1, "preemption": 0}
    assert events(rd)[0] == f"checkpointed: timeout 1 of 2 ({name})"
    expect = {"local": "exit 75 120", "requeue": "requeue", "chain": "extend 1 123.server"}[MODES[sched]]
    if sched == "pjm":
        expect = "extend 1 123.server"
    assert d.line() == expect
    assert rd.stopped_reason() is None


def test_pjm_step_jobs_wait_for_the_step_job_id(tmp_path):
    link, rd, _ = make_link(tmp_path, "pjm", job_id="4567_2")
    assert link.decide(75, "", "").line() == "extend 1 4567"


@pytest.mark.parametrize("sched", sorted(MODES))
def test_a_term_long_before_the_walltime_is_a_preemption(tmp_path, sched):
    link, rd, _ = make_link(tmp_path, sched, now=START + 60)
    write_checkpoint(rd, 5)
    stamp = link.checkpoint_stamp()
    # mpirun aborted on the scheduler's SIGTERM (exit 143): still a resumable stop
    d = link.decide(143, "TERM", stamp)
    assert events(rd)[0] == "interrupted by SIGTERM (exit 143); resuming from the last checkpoint"
    assert (
        events(rd)[1] == "stopped without a new checkpoint: preemption 1 of 3; the next job resumes from step_000005.pt"
    )
    assert rd.counters() == {"timeout": 0, "preemption": 1}
    assert d.line() == "exit 75 120" if MODES[sched] == "local" else d.action in ("requeue", "extend")
    # the same TERM inside the warning lead is the walltime's own
    link2, rd2, _ = make_link(tmp_path / "b", sched, now=START + WALLTIME - LEAD + 1)
    link2.decide(75, "TERM", "")
    assert rd2.counters() == {"timeout": 1, "preemption": 0}


@pytest.mark.parametrize(
    "kind,signal,now,most", [("timeout", "USR2", START + 10, 2), ("preemption", "TERM", START + 10, 3)]
)
@pytest.mark.parametrize("sched", sorted(MODES))
def test_budgets_stop_the_run(tmp_path, sched, kind, signal, now, most):
    link, rd, _ = make_link(tmp_path, sched, now=now)
    for _ in range(most):
        assert link.decide(75, signal, "").line() != "exit 1 120"
    d = link.decide(75, signal, "")
    assert d.line() == "exit 1 120"
    assert events(rd)[-1] == f"stop: {kind} budget of {most} used up"
    assert rd.stopped_reason() == f"{kind} budget of {most} used up"


@pytest.mark.parametrize("sched", sorted(MODES))
def test_a_stopped_run_is_not_continued_after_its_checkpoint(tmp_path, sched):
    link, rd, _ = make_link(tmp_path, sched)
    rd.stop("cancelled by the user")
    assert link.decide(75, "TERM", "").line() == "exit 0 120"
    assert events(rd) == ["checkpointed; the run was stopped (cancelled by the user), not continuing"]
    assert rd.counters() == {"timeout": 0, "preemption": 0}


def test_a_presubmitted_chain_link_is_not_submitted_again(tmp_path):
    link, rd, _ = make_link(tmp_path, "sge", link=0, chain=3)
    assert link.decide(75, "", "").line() == "exit 0 120"
    assert events(rd)[-1] == "chain: link 1 is already queued"
    last, rd2, _ = make_link(tmp_path / "b", "sge", link=2, chain=3, job_id="77")
    assert last.decide(75, "", "").line() == "extend 3 77"


# ------------------------------------------------------------------ the scheduler's answer


def test_requeue_answers(tmp_path):
    link, rd, _ = make_link(tmp_path, "slurm")
    assert link.requeued(0, "", "USR2").line() == "exit 0 120" and events(rd) == ["requeued"]
    assert link.requeued(1, "busy", "TERM").line() == "exit 0 120"
    assert events(rd)[-1] == "requeued by SLURM (preemption or scontrol requeue)"
    assert link.requeued(1, "scontrol: error: Requeue\nnot allowed", "USR2").line() == "exit 75 120"
    assert events(rd)[-1] == (
        "scontrol requeue refused (scontrol: error: Requeue not allowed); 'launcher resume' continues the run"
    )


def test_extend_answers_record_the_job_or_stop_the_run(tmp_path):
    link, rd, _ = make_link(tmp_path, "pbs")
    assert link.extended(0, "124.server\n", 1).line() == "exit 0 120"
    assert events(rd) == ["chain: submitted link 1: 124.server"]
    jobs = rd.jobs(lambda raw: raw.split()[0])
    assert [(j.kind, j.link, j.job_id) for j in jobs] == [("extend", "1", "124.server")]
    assert link.extended(1, "qsub: would exceed\tlimit", 2).line() == "exit 1 120"
    assert events(rd)[-1] == "fail: could not submit link 2: qsub: would exceed limit"
    assert rd.stopped_reason() == "could not submit link 2 of the chain"


# ------------------------------------------------------------------ the script's entry


def _env(run, **extra):
    env = {
        "RUN_DIR": str(run),
        "LAUNCHER_JOB_ID": "9",
        "LAUNCHER_LINK": "0",
        "LAUNCHER_START": str(START),
        "LAUNCHER_WALLTIME_S": str(WALLTIME),
        "LAUNCHER_WARNING_LEAD_S": str(LEAD),
        "LAUNCHER_RESUME_MODE": "chain",
        "LAUNCHER_SCHEDULER": "sge",
    }
    env.update(extra)
    return env


def test_main_prints_one_action_per_step(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "job").mkdir(parents=True)
    assert main(["begin"], _env(run)) == 0 and capsys.readouterr().out == "go\n"
    assert main(["stamp"], _env(run)) == 0 and capsys.readouterr().out == "\n"
    assert main(["decide", "75", "", ""], _env(run)) == 0 and capsys.readouterr().out == "extend 1 9\n"
    assert main(["event", "train:", "mpirun"], _env(run)) == 0 and capsys.readouterr().out == "go\n"
    assert RunDir(str(run)).events()[-1][3] == "train: mpirun"
    assert main(["nonsense"], _env(run)) == 2
    with pytest.raises(SystemExit, match="LAUNCHER_RESUME_MODE='x'"):
        main(["begin"], _env(run, LAUNCHER_RESUME_MODE="x"))
    with pytest.raises(SystemExit, match="not an exit code"):
        main(["decide", "x", "", ""], _env(run))


def test_the_module_runs_as_the_job_script_calls_it(tmp_path):
    run = tmp_path / "run"
    (run / "job").mkdir(parents=True)
    env = dict(os.environ, **_env(run))
    r = subprocess.run(
        [sys.executable, "-m", "launcher.outcome", "decide", "3", "", ""], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout == "exit 3 120\n" and "launcher: fail: trainer exited 3" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "launcher.outcome", "begin"],
        env=dict(env, LAUNCHER_LINK="x"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == "launcher outcome: error: LAUNCHER_LINK='x' is not a whole number"


def test_silent_hosts_names_the_hosts_that_do_not_answer(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("alive slots=2\nsilent slots=2\n")
    probe = tmp_path / "probe"
    # one process on HOST: answers for 'alive', hangs for 'silent'
    probe.write_text('#!/bin/bash\nif [ "$1" = alive ]; then echo alive; else sleep 30; fi\n')
    probe.chmod(0o755)
    assert silent_hosts(str(hostfile), [str(probe)], timeout=2) == ["silent"]
    assert silent_hosts(str(tmp_path / "none"), [str(probe)]) == []
