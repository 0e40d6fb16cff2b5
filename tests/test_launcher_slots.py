"""``launcher.local_runner --slots N``: at most N local jobs sharing a slot directory run at once."""

import json
import os
import subprocess
import sys
import time

import pytest


def _script(tmp_path, name, seconds=1.0):
    log = tmp_path / f"{name}.times"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/bash\ndate +%s.%N >{log}\nsleep {seconds}\ndate +%s.%N >>{log}\n")
    return script, log


def _runners(tmp_path, n_jobs, slots, env_only=False):
    env = dict(os.environ)
    procs, logs = [], []
    for i in range(n_jobs):
        script, log = _script(tmp_path, f"job{i}")
        logs.append(log)
        argv = [sys.executable, "-m", "launcher.local_runner", "--state-file", str(tmp_path / f"job{i}.json")]
        if env_only:
            env.update(LAUNCHER_LOCAL_SLOTS=str(slots), LAUNCHER_LOCAL_SLOT_DIR=str(tmp_path / "slots"))
        else:
            argv += ["--slots", str(slots), "--slot-dir", str(tmp_path / "slots")]
        procs.append(subprocess.Popen(argv + [str(script)], env=env))
    for p in procs:
        assert p.wait(timeout=120) == 0
    spans = [tuple(float(v) for v in log.read_text().split()) for log in logs]
    return sorted(spans)


def _most_at_once(spans):
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


@pytest.mark.parametrize("slots, env_only", [(1, False), (2, True)])
def test_slots_bound_the_jobs_running_at_once(tmp_path, slots, env_only):
    spans = _runners(tmp_path, 3, slots, env_only)
    assert len(spans) == 3
    assert _most_at_once(spans) <= slots
    state = json.loads((tmp_path / "job0.json").read_text())
    assert state["state"] == "finished" and state["rc"] == 0
    assert {p.name for p in (tmp_path / "slots").iterdir()} <= {f"slot.{i}" for i in range(slots)}


def test_a_queued_job_says_so_and_a_cancelled_one_never_runs(tmp_path):
    slots = tmp_path / "slots"
    long, long_log = _script(tmp_path, "long", seconds=30)
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.local_runner",
            "--slots",
            "1",
            "--slot-dir",
            str(slots),
            "--state-file",
            str(tmp_path / "long.json"),
            str(long),
        ]
    )
    deadline = time.time() + 60
    while not long_log.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert long_log.exists()
    short, short_log = _script(tmp_path, "short", seconds=0)
    second = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.local_runner",
            "--slots",
            "1",
            "--slot-dir",
            str(slots),
            "--state-file",
            str(tmp_path / "short.json"),
            str(short),
        ]
    )
    while not (tmp_path / "short.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    st = json.loads((tmp_path / "short.json").read_text())
    assert st["state"] == "queued" and st["slots"] == 1
    second.terminate()
    assert second.wait(timeout=30) != 0
    assert json.loads((tmp_path / "short.json").read_text())["state"] == "cancelled"
    assert not short_log.exists()
    first.terminate()
    first.wait(timeout=30)


def test_bad_slot_count_is_one_line(tmp_path):
    script, _ = _script(tmp_path, "x", 0)
    r = subprocess.run(
        [sys.executable, "-m", "launcher.local_runner", str(script)],
        capture_output=True,
        text=True,
        env=dict(os.environ, LAUNCHER_LOCAL_SLOTS="two"),
    )
    assert r.returncode == 2 and "LAUNCHER_LOCAL_SLOTS='two'" in r.stderr and r.stderr.strip().count("\n") == 0
