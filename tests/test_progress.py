"""launcher.progress: step/total, samples/s, ETA and checkpoint age from a run's files.

The pure functions are checked on tables; the last tests read what the real trainer wrote
(``tests/test_train_support.py`` drives it with small doubles, a few seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.progress import (
    LogStep,
    Progress,
    clock_rate,
    combine,
    eta_seconds,
    eta_text,
    format_duration,
    format_rate,
    marker_step,
    metrics_rows,
    newest_link_steps,
    parse_log,
    read_progress,
    read_tail,
    step_text,
    total_from_log,
    trainer_rate,
)

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "test_train_support.py"


def at(seconds: float) -> str:
    """A train.log time stamp ``seconds`` after 2026-01-01 00:00:00 local time."""
    base = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))
    t = base + seconds
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int(round(t % 1 * 1000)):03d}"


def step_line(t: float, step: int, total: int) -> str:
    return f"{at(t)} rank0 INFO step {step}/{total} epoch 0 loss -2.9 lr 0.001 m 0.99 data 0.005s compute 0.05s\n"


START = f"{at(0)} rank0 INFO starting: 100 steps (10 epochs x 10 steps), global batch 8 on 2 rank(s), lr 0.01\n"
RESUMED = f"{at(50)} rank0 INFO resumed from step 30 (epoch 3, batch 0 of 10)\n"


@pytest.mark.parametrize(
    "lines, kinds, last",
    [
        ([], [], None),
        ([START], ["start"], LogStep(0.0, 0, 100)),
        (
            [START, step_line(1.5, 1, 100), "2026-01-01 00:00:02,000 rank0 INFO checkpoint step_1.pt written\n"],
            ["start", "step"],
            LogStep(1.5, 1, 100),
        ),
        ([RESUMED, step_line(51.25, 31, 100)], ["start", "step"], LogStep(51.25, 31, 100)),
        (["a line of something else\n", "step 3/9 without a time stamp\n"], [], None),
    ],
)
def test_parse_log(lines, kinds, last):
    entries = parse_log(lines)
    assert [k for k, _ in entries] == kinds
    if last is not None:
        got = entries[-1][1]
        assert (got.step, got.total) == (last.step, last.total)
        assert got.time - parse_log([START])[0][1].time == pytest.approx(last.time, abs=1e-3)


def steps(*pairs, total=100):
    return [LogStep(float(t), s, total) for t, s in pairs]


@pytest.mark.parametrize(
    "entries, window, rate",
    [
        ([], 20, None),
        ([("step", s) for s in steps((1, 1))], 20, None),
        ([("step", s) for s in steps((0, 10), (5, 20))], 20, 2.0),
        # a new link: only its own steps count (the queue wait between links is not a rate)
        (
            [("step", s) for s in steps((0, 10), (5, 20))]
            + [("start", LogStep(100.0, 20, 0))]
            + [("step", s) for s in steps((101, 21), (103, 25))],
            20,
            2.0,
        ),
        # the newest `window` steps only
        ([("step", s) for s in steps((0, 0), (10, 1), (11, 3), (12, 5))], 3, 2.0),
        # a clock that went backwards or a step that did not move: no rate
        ([("step", s) for s in steps((5, 10), (4, 12))], 20, None),
        ([("step", s) for s in steps((5, 10), (6, 10))], 20, None),
    ],
)
def test_clock_rate_of_the_newest_link(entries, window, rate):
    got = clock_rate(newest_link_steps(entries), window)
    assert got == (pytest.approx(rate) if rate is not None else None)


@pytest.mark.parametrize(
    "entries, total",
    [
        ([], None),
        ([("start", LogStep(0, 0, 100))], 100),
        ([("start", LogStep(0, 0, 100)), ("step", LogStep(1, 1, 120))], 120),
        ([("step", LogStep(1, 1, 120)), ("start", LogStep(2, 1, 0))], 120),  # a resumed line has no total
    ],
)
def test_total_from_log(entries, total):
    assert total_from_log(entries) == total


HEADER = "step,epoch,loss,samples_per_s,time/step\n"


@pytest.mark.parametrize(
    "lines, steps_seen, rate",
    [
        ([], [], None),
        (["1,0,-2.9,10.0,0.8\n", "2,0,-2.8,30.0,0.27\n"], [1, 2], 20.0),
        # a torn last line (being written) and a torn first line (the tail began inside it) are left out
        (["0,-2.9,10.0,0.8\n", "2,0,-2.8,30.0,0.27\n", "3,0,-2.7,50"], [2], 30.0),
        # the header again (a file rewritten by a resume) and rows without the column's value
        (["step,epoch,loss,samples_per_s,time/step\n", "4,0,-2.8,,0.27\n", "5,0,-2.8,8.0,0.27\n"], [4, 5], 8.0),
    ],
)
def test_metrics_rows_and_the_trainers_rate(lines, steps_seen, rate):
    rows = metrics_rows(HEADER, lines)
    assert [int(r["step"]) for r in rows] == steps_seen
    assert trainer_rate(rows) == (pytest.approx(rate) if rate is not None else None)


def test_trainer_rate_is_the_mean_of_the_newest_window():
    rows = [{"step": str(i), "samples_per_s": str(v)} for i, v in enumerate([100.0, 1.0, 2.0, 3.0])]
    assert trainer_rate(rows, window=3) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "step, total, rate, eta",
    [
        (10, 100, 2.0, 45.0),
        (100, 100, 2.0, 0.0),
        (120, 100, 2.0, 0.0),
        (None, 100, 2.0, None),
        (10, None, 2.0, None),
        (10, 100, None, None),
        (10, 100, 0.0, None),
    ],
)
def test_eta_seconds(step, total, rate, eta):
    assert eta_seconds(step, total, rate) == eta


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "-"),
        (0, "0s"),
        (44.6, "45s"),
        (60, "1m00s"),
        (725, "12m05s"),
        (3600, "1h00m"),
        (3 * 3600 + 7 * 60 + 59, "3h07m"),
        (86400 * 2 + 4 * 3600 + 120, "2d04h"),
        (-5, "0s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("rate, text", [(None, "-"), (7.6102, "7.61"), (85.34, "85.3"), (1234.6, "1235")])
def test_format_rate(rate, text):
    assert format_rate(rate) == text


@pytest.mark.parametrize(
    "text, step",
    [
        ('{"step": 12, "epoch": 4, "finished": 1.0, "checkpoint": "step_00000012.pt"}\n', 12),
        ("step 9\n", 9),
        ("flow finished in job 123.pbs\n", None),  # a pipeline stage's marker names no step
        ("", None),
    ],
)
def test_marker_step(text, step):
    assert marker_step(text) == step


LOG = [("start", LogStep(0.0, 0, 100))] + [("step", LogStep(float(i), i, 100)) for i in range(1, 11)]  # 1 step/s


@pytest.mark.parametrize(
    "kw, expect",
    [
        # running: step from the newest source, ETA at the clock's rate, samples/s the trainer's
        (
            dict(rows=[{"step": "10", "samples_per_s": "9.0"}], entries=LOG, batch=8),
            dict(step=10, total=100, samples_per_s=9.0, steps_per_s=1.0, eta_s=90.0, done=False),
        ),
        # no train.log: the ETA from the trainer's samples/s over the global batch
        (
            dict(rows=[{"step": "10", "samples_per_s": "16.0"}], entries=[("start", LogStep(0, 0, 50))], batch=8),
            dict(step=10, total=50, samples_per_s=16.0, steps_per_s=2.0, eta_s=20.0),
        ),
        # no metrics.csv (log.csv=false): samples/s from the clock's rate and the batch
        (dict(rows=[], entries=LOG, batch=4), dict(step=10, samples_per_s=4.0, eta_s=90.0)),
        # done: the marker's step, no ETA left
        (
            dict(rows=[{"step": "99", "samples_per_s": "9.0"}], entries=LOG, batch=8, done=True, done_step=100),
            dict(step=100, total=100, eta_s=0.0, done=True),
        ),
        # done without a step (another stage's marker)
        (dict(rows=[], entries=[], batch=None, done=True), dict(step=None, total=None, done=True)),
        # nothing yet
        (dict(rows=[], entries=[], batch=8), dict(step=None, total=None, samples_per_s=None, eta_s=None)),
    ],
)
def test_combine(kw, expect):
    args = dict(
        done=False, done_step=None, checkpoint="step_10.pt", checkpoint_mtime=1000.0, step_mtime=1030.0, now=1060.0
    )
    args.update(kw)
    p = combine(**args)
    for key, value in expect.items():
        got = getattr(p, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    assert p.checkpoint_age_s == 60.0 and (p.step_age_s == 30.0 or p.step is None)


@pytest.mark.parametrize(
    "p, step, eta, stopped",
    [
        (Progress(), "-", "-", False),
        (Progress(step=5), "5/?", "-", False),
        (Progress(step=5, total=10, eta_s=3700), "5/10", "1h01m", False),
        (Progress(step=5, total=10, eta_s=3700), "5/10", "stopped", True),
        (Progress(step=10, total=10, eta_s=0.0, done=True), "10/10", "done", False),
    ],
)
def test_step_and_eta_text(p, step, eta, stopped):
    assert step_text(p) == step and eta_text(p, stopped) == eta


def test_read_tail_skips_the_line_it_began_inside(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("step,x\n" + "".join(f"{i},{'y' * 10}\n" for i in range(100)))
    first, lines = read_tail(f, nbytes=40)
    assert first == "step,x\n"
    assert lines and all(len(l.split(",")) == 2 and l.endswith("y\n") for l in lines)
    assert lines[-1].startswith("99,")
    assert read_tail(tmp_path / "missing") == ("", [])


def test_the_real_trainers_files(tmp_path):
    """The trainer stopped by a signal at step 9 of 12, then resumed to the end."""
    run = tmp_path / "run"
    env = dict(os.environ, TINY_SIGNAL_AT="8")
    r = subprocess.run(
        [sys.executable, str(DRIVER), str(run), "run.epochs=2"], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 75, r.stderr[-2000:]
    p = read_progress(run)
    rows = [l.split(",") for l in (run / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("samples_per_s")
    assert (p.step, p.total, p.done) == (9, 12, False)
    assert p.samples_per_s == pytest.approx(sum(float(r[col]) for r in rows[1:]) / (len(rows) - 1))
    assert p.checkpoint == (run / "checkpoints" / "latest").read_text().strip() == "step_00000009.pt"
    assert 0 <= p.checkpoint_age_s < 60 and 0 <= p.step_age_s < 60
    assert p.eta_s is not None and p.eta_s == pytest.approx(3 / p.steps_per_s)
    r = subprocess.run(
        [sys.executable, str(DRIVER), str(run), "run.epochs=2"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    p = read_progress(run)
    assert (p.step, p.total, p.done, p.eta_s) == (12, 12, True, 0.0)
    assert json.loads((run / "done").read_text())["step"] == 12
    assert p.checkpoint == "step_00000012.pt"
