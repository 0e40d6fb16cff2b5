"""Deadline parsing, the stop rule, and flag-only signal handlers."""

from __future__ import annotations

import datetime as dt
import os
import signal

import pytest

from pixpro_of.train.stopping import StopControl, parse_deadline, signal_numbers
from plumbing.errors import UserError

NOW = 1_800_000_000.0


# the grammar is plumbing.parse's (tests/test_parse.py): a duration needs a unit here, since a
# bare number, seconds before, is minutes in every other option
@pytest.mark.parametrize(
    "text,seconds",
    [
        ("3600s", 3600),
        ("45s", 45),
        ("1-00:00:00", 86400),
        ("90m", 5400),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1.5h", 5400),
    ],
)
def test_durations_count_from_now(text, seconds):
    assert parse_deadline(text, now=NOW) == NOW + seconds


def test_absolute_times():
    assert parse_deadline("@1800003600", now=NOW) == 1800003600.0
    iso = "2027-01-15T10:30:00+00:00"
    assert parse_deadline(iso, now=NOW) == dt.datetime.fromisoformat(iso).timestamp()
    # A clock time (THH:MM: plain HH:MM is a duration elsewhere) means the next time the clock shows it.
    base = dt.datetime.fromtimestamp(NOW)
    later = (base + dt.timedelta(hours=1)).strftime("T%H:%M")
    t = parse_deadline(later, now=NOW)
    assert 0 < t - NOW <= 3600
    earlier = (base - dt.timedelta(hours=1)).strftime("T%H:%M")
    assert 22 * 3600 < parse_deadline(earlier, now=NOW) - NOW <= 23 * 3600 + 60


@pytest.mark.parametrize("bad", ["", "soon", "T25:00", "1h30", "@x", "T10:61", "3600", "10:30"])
def test_bad_deadlines_are_user_errors(bad):
    with pytest.raises(UserError, match="--deadline"):
        parse_deadline(bad, now=NOW)


def test_stop_rule_uses_slowest_recent_step_plus_checkpoint_with_margin():
    clock = [0.0]
    sc = StopControl(deadline=100.0, margin_s=10.0, safety_factor=1.5, signals=[], clock=lambda: clock[0])
    sc.record_step(4.0)
    sc.record_step(6.0)  # the slowest recent step counts
    sc.record_checkpoint(14.0)
    sc.record_checkpoint(2.0)  # and the slowest checkpoint
    assert sc.needed_s() == pytest.approx(1.5 * (6.0 + 14.0) + 10.0)  # 40 s
    clock[0] = 59.0  # 41 s left
    assert not sc.should_stop()
    clock[0] = 61.0  # 39 s left
    assert sc.should_stop() and sc.reason.startswith("deadline: 39.0 s left < 40.0 s needed")


def test_no_deadline_and_no_signal_never_stops():
    sc = StopControl(deadline=None, signals=[])
    sc.record_step(1e6)
    assert not sc.should_stop()


def test_signal_handler_only_sets_a_flag():
    sc = StopControl(signals=["SIGUSR2", "term"])
    previous = signal.getsignal(signal.SIGUSR2)
    sc.install()
    try:
        assert not sc.should_stop()
        os.kill(os.getpid(), signal.SIGUSR2)  # would end the process without the handler
        assert sc.signal_received == signal.SIGUSR2
        assert sc.should_stop() and sc.reason == "signal SIGUSR2"
    finally:
        sc.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == previous


def test_signal_names():
    assert signal_numbers(["SIGUSR2", "term", "usr1"]) == [signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1]
    with pytest.raises(UserError, match="stop.signals: 'SIGKILL' cannot be caught"):
        signal_numbers(["SIGKILL"])
    with pytest.raises(UserError, match="stop.signals: 'SIGNOPE' is not a signal name"):
        signal_numbers(["SIGNOPE"])
