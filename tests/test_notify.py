"""Being told when a run ends for good (launcher/notify.py, launcher/outcome.py's ``tell``).

Each ending a link can reach is played through the job's policy as the job script calls it; the
notify command writes its environment to a file, so the test sees exactly what a user's command
would get. Real jobs (fake PBS, local runner) that notify are in test_launcher_jobs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launcher.job_files import RunDir
from launcher.notify import NOTIFIED, Ending, release, summary, tells
from launcher.outcome import Link, LinkContext

START = 1_000_000
RECORD = 'printf "%s|%s|%s|%s\\n" "$LAUNCHER_OUTCOME" "$LAUNCHER_REASON" "$LAUNCHER_SUMMARY" "$LAUNCHER_RUN_NAME" >> '


def make_run(tmp_path, notify, name="r1", **request):
    run = tmp_path / name
    for sub in ("job", "logs", "checkpoints"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    req = {"name": name, "notify": notify, **request}
    (run / "job" / "request.json").write_text(json.dumps(req))
    return run


def link_for(run, job_id="7.pbs", link=0, mode="chain", chain=1, max_timeouts=1, now=START + 3500, stage="train"):
    ctx = LinkContext(
        run_dir=str(run),
        job_id=job_id,
        link=link,
        start=START,
        walltime_s=3600,
        warning_lead_s=300,
        chain_length=chain,
        max_timeouts=max_timeouts,
        max_preemptions=1,
        resume_mode=mode,
        scheduler="pbs",
        stage=stage,
        clock=lambda: now,
    )
    return Link(ctx, say=lambda text: None)


def told(tmp_path):
    p = tmp_path / "told.txt"
    return [line.split("|") for line in p.read_text().splitlines()] if p.exists() else []


def test_tells_only_runs_with_a_command_and_a_pipeline_only_at_its_last_stage_or_a_failure():
    done, failed = Ending("done", "done"), Ending("failed", "trainer exited 3")
    assert not tells({"notify": ""}, done, 0) and not tells({}, failed, 0) and not tells({"notify": "  "}, done, 0)
    assert tells({"notify": "true"}, done, 0) and tells({"notify": "true"}, failed, 2)
    assert not tells({"notify": "true"}, done, 2), "a stage with stages after it is not the pipeline's end"
    with pytest.raises(ValueError):
        Ending("finished", "")


def test_summary_names_the_run_or_the_pipeline_stage():
    assert summary({"name": "k6"}, "/r/k6", Ending("done", "done"), "12") == "run /r/k6: done in job 12"
    assert (
        summary(
            {"name": "p-train", "pipeline": "/p", "stage": "train"},
            "/p/train",
            Ending("failed", "trainer exited 3"),
            "12.s",
        )
        == "pipeline /p: stage train: failed (trainer exited 3) in job 12.s"
    )


@pytest.mark.parametrize("case", ["done", "failed", "budget", "stopped", "staging", "chain", "requeue"])
def test_every_end_for_good_is_told_once_with_its_outcome(tmp_path, case):
    run = make_run(tmp_path, RECORD + str(tmp_path / "told.txt"))
    rd = RunDir(str(run))
    lk = link_for(run)
    expect = {
        "done": ("done", "done"),
        "failed": ("failed", "trainer exited 3"),
        "budget": ("budget", "timeout budget of 1 used up"),
        "stopped": ("stopped", "cancelled by the user"),
        "staging": ("failed", "staging failed (exit 2)"),
        "chain": ("failed", "could not submit link 1 of the chain"),
        "requeue": ("stopped", "scontrol requeue refused; 'launcher resume' continues the run"),
    }[case]
    if case == "done":
        rd.done.write_text("")
        lk.decide(0, "", "")
    elif case == "failed":
        lk.decide(3, "", "")
    elif case == "budget":
        (rd.job / "timeout.count").write_text("1\n")
        lk.decide(75, "", "")
    elif case == "stopped":
        rd.stop("cancelled by the user")
        lk.decide(75, "TERM", "")
    elif case == "staging":
        lk.staged(2, "", 5)
    elif case == "chain":
        lk.extended(1, "qsub: refused", 1)
    else:
        lk.requeued(1, "Requested operation is presently disabled", "")
    lk.tell()
    assert told(tmp_path) == [[expect[0], expect[1], summary({"name": "r1"}, str(run), Ending(*expect), "7.pbs"), "r1"]]
    assert (rd.job / NOTIFIED).read_text().split("\t")[1] == expect[0]
    assert [e[3] for e in rd.events()][-1].startswith(f"notify: {expect[0]}: sent (")
    link_for(run, job_id="8.pbs", link=1).begin("n1")  # a later link that finds the run ended tells nothing
    again = link_for(run, job_id="8.pbs", link=1)
    again.decide(3, "", "")
    again.tell()
    assert len(told(tmp_path)) == 1, "once per run, not per link"


def test_a_link_that_goes_on_tells_nothing_and_resume_releases_the_next_end(tmp_path):
    run = make_run(tmp_path, RECORD + str(tmp_path / "told.txt"))
    rd = RunDir(str(run))
    lk = link_for(run, max_timeouts=5)
    assert lk.decide(75, "USR2", "").action == "extend"
    lk.tell()
    assert told(tmp_path) == [] and not (rd.job / NOTIFIED).exists()
    lk = link_for(run)
    lk.decide(3, "", "")
    lk.tell()
    release(rd.job)  # launcher resume
    rd.done.write_text("")
    lk = link_for(run, job_id="9.pbs", link=2)
    lk.decide(0, "", "")
    lk.tell()
    assert [t[0] for t in told(tmp_path)] == ["failed", "done"]


def test_a_failing_or_hanging_notify_command_is_an_event_not_a_failure(tmp_path, monkeypatch):
    run = make_run(tmp_path, "echo 'no route to host' >&2; exit 4")
    rd = RunDir(str(run))
    rd.done.write_text("")
    lk = link_for(run)
    assert lk.decide(0, "", "").line() == "exit 0 120"
    lk.tell()
    assert rd.events()[-1][3] == "notify: done: the notify command exited 4: no route to host"
    import launcher.notify as notify

    run2 = make_run(tmp_path, "sleep 30", name="r2")
    RunDir(str(run2)).done.write_text("")
    monkeypatch.setattr(notify, "NOTIFY_TIMEOUT_S", 1)
    lk = link_for(run2)
    lk.decide(0, "", "")
    how, took = notify.run_command("sleep 30", {}, str(run2), timeout=1)
    assert how == "the notify command did not end within 1 s (stopped)" and took < 10


def test_pipeline_stages_tell_the_failure_and_the_last_stage_only(tmp_path):
    pipe = tmp_path / "pipe"
    cmd = RECORD + str(tmp_path / "told.txt")
    stages = []
    for name, needs in (("pack", []), ("train", ["pack"]), ("eval", ["train"])):
        make_run(pipe, cmd, name=name, pipeline=str(pipe), stage=name)
        stages.append({"name": name, "run_dir": str(pipe / name), "needs": needs})
    (pipe / "pipeline.json").write_text(json.dumps({"stages": stages}))
    for name in ("pack", "eval"):
        lk = link_for(pipe / name, stage=name)
        lk.decide(0, "", "")  # a stage's done marker is written by the policy
        lk.tell()
    assert [(t[0], t[2]) for t in told(tmp_path)] == [("done", f"pipeline {pipe}: stage eval: done in job 7.pbs")]
    lk = link_for(pipe / "train")
    lk.decide(1, "", "")
    lk.tell()
    assert told(tmp_path)[-1][:2] == ["failed", "trainer exited 1"]


def test_outcome_main_tells_through_the_job_scripts_entry(tmp_path):
    run = make_run(tmp_path, RECORD + str(tmp_path / "told.txt"))
    RunDir(str(run)).done.write_text("")
    env = dict(
        os.environ,
        RUN_DIR=str(run),
        LAUNCHER_JOB_ID="55",
        LAUNCHER_RESUME_MODE="chain",
        LAUNCHER_SCHEDULER="pbs",
        LAUNCHER_STAGE="train",
    )
    out = subprocess.run(
        [sys.executable, "-m", "launcher.outcome", "decide", "0", "", ""],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout == "exit 0 120\n", out.stderr
    assert told(tmp_path) == [["done", "done", f"run {run}: done in job 55", "r1"]]
