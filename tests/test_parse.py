"""The one grammar of each value (plumbing/parse.py), table by table, and the commands that use it."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plumbing.errors import UserError
from plumbing.parse import (
    checked,
    parse_bytes,
    parse_deadline,
    parse_duration,
    parse_hxw,
    parse_wxh,
    signal_name,
    signal_number,
)

ROOT = Path(__file__).resolve().parent.parent

DURATIONS = [
    ("600", 36000),
    ("30", 1800),
    ("1.5", 90),
    ("90s", 90),
    ("10m", 600),
    ("4h", 14400),
    ("2d", 172800),
    ("1h30m", 5400),
    ("1.5h", 5400),
    ("2d4h", 187200),
    (" 10M ", 600),
    ("00:10:00", 600),
    ("25:00:00", 90000),
    ("100:39:00", 362340),
    ("10:30", 37800),
    ("0:05", 300),
    ("1-00:00:00", 86400),
    ("7-00:00:00", 604800),
    ("1-12", 129600),
    ("1-12:30", 131400),
]
BAD_DURATIONS = [
    ("soon", "is not a duration"),
    ("", "is not a duration"),
    ("1h30", "is not a duration"),
    ("10x", "is not a duration"),
    ("1:2:3:4", "is not a duration"),
    ("-5", "is not a duration"),
    ("99:99", "minutes and seconds must be 0-59"),
    ("99:99:99", "minutes and seconds must be 0-59"),
    ("1-25:00:00", "hours must be 0-23 after a day count"),
    ("0", "must be a positive duration"),
    ("00:00:00", "must be a positive duration"),
    ("0s", "must be a positive duration"),
]


@pytest.mark.parametrize("text, seconds", DURATIONS)
def test_duration_forms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, message", BAD_DURATIONS)
def test_bad_durations_say_why_in_one_line(text, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_duration(text)
    assert "\n" not in str(e.value) and repr(text) in str(e.value)


def test_a_bare_number_is_refused_where_it_used_to_be_seconds():
    with pytest.raises(ValueError, match=r"'600' has no unit: write 600s or 600m"):
        parse_duration("600", bare_number=False)
    assert parse_duration("600s", bare_number=False) == 600 and parse_duration("00:10:00", bare_number=False) == 600


def test_checked_names_the_option():
    with pytest.raises(UserError, match=r"^--walltime: '99:99': minutes and seconds must be 0-59"):
        checked(parse_duration, "99:99", "--walltime")


NOW = dt.datetime(2026, 12, 7, 12, 0, 0).timestamp()  # local noon
DEADLINES = [
    ("@1767225600", 1767225600.0),
    ("@1767225600.5", 1767225600.5),
    ("90m", NOW + 5400),
    ("4h", NOW + 14400),
    ("2s", NOW + 2),
    ("1-00:00:00", NOW + 86400),
    ("2026-12-07T13:30:00", NOW + 5400),
    ("2026-12-07T11:00:00+00:00", dt.datetime(2026, 12, 7, 11, tzinfo=dt.timezone.utc).timestamp()),
    ("2026-12-07T11:00:00Z", dt.datetime(2026, 12, 7, 11, tzinfo=dt.timezone.utc).timestamp()),
    ("T13:00", NOW + 3600),
    ("T11:00", NOW + 23 * 3600),
    ("t12:00:30", NOW + 30),
]
BAD_DEADLINES = [
    ("3600", "has no unit: write 3600s or 3600m"),
    ("10:30", "ambiguous: write T10:30 for a clock time"),
    ("T25:00", "not a valid clock time"),
    ("@soon", "'@' must be followed by a Unix time"),
    ("2026-13-01T00:00", "not an ISO 8601 date-time"),
    ("tomorrow", "is not a deadline"),
    ("", "empty value"),
]


@pytest.mark.parametrize("text, when", DEADLINES)
def test_deadline_forms(text, when):
    assert parse_deadline(text, now=NOW) == pytest.approx(when)


@pytest.mark.parametrize("text, message", BAD_DEADLINES)
def test_bad_deadlines(text, message):
    with pytest.raises(ValueError, match=message):
        parse_deadline(text, now=NOW)


SIZES = [("640x360", (640, 360)), ("320X192", (320, 192)), (" 64 x 32 ", (64, 32)), ("1x1", (1, 1))]
BAD_SIZES = ["640", "640x", "x360", "640x360x3", "-1x5", "6.5x4", "axb", ""]


@pytest.mark.parametrize("text, wh", SIZES)
def test_wxh_is_width_first_and_hxw_height_first(text, wh):
    assert parse_wxh(text) == wh
    assert parse_hxw(text) == wh  # the same numbers in the order typed: hxw's first is the height


@pytest.mark.parametrize("text", ["0x360", "640x0", "0x0"])
def test_sizes_are_positive(text):
    for parse in (parse_wxh, parse_hxw):
        with pytest.raises(ValueError, match="width and height must be positive"):
            parse(text)


@pytest.mark.parametrize("text", BAD_SIZES)
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="is not WIDTHxHEIGHT"):
        parse_wxh(text)
    with pytest.raises(ValueError, match="is not HEIGHTxWIDTH"):
        parse_hxw(text)


BYTES = [
    ("123", 123),
    ("123B", 123),
    ("60KB", 60_000),
    ("60kb", 60_000),
    ("512MB", 512_000_000),
    ("8GB", 8_000_000_000),
    ("1TB", 10**12),
    ("8GiB", 8 << 30),
    ("500MiB", 500 << 20),
    ("60KiB", 60 << 10),
    ("8G", 8 << 30),
    ("500M", 500 << 20),
    ("1.5G", 3 << 29),
    ("1.5GiB", 3 << 29),
    (" 2 MB ", 2_000_000),
]
BAD_BYTES = [
    ("", "is not a size"),
    ("8XB", "is not a size"),
    ("GiB", "is not a size"),
    ("8 GiBs", "is not a size"),
    ("0", "must be a positive size"),
    ("0GiB", "must be a positive size"),
    ("-3", "is not a size"),
]


@pytest.mark.parametrize("text, n", BYTES)
def test_byte_sizes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text, message", BAD_BYTES)
def test_bad_byte_sizes(text, message):
    with pytest.raises(ValueError, match=message):
        parse_bytes(text)


SIGNALS = [
    ("USR2", "SIGUSR2"),
    ("SIGUSR2", "SIGUSR2"),
    ("usr2", "SIGUSR2"),
    ("sigusr2", "SIGUSR2"),
    (" term ", "SIGTERM"),
    ("INT", "SIGINT"),
    ("hup", "SIGHUP"),
    ("KILL", "SIGKILL"),
    ("URG", "SIGURG"),
]
BAD_SIGNALS = [
    ("12", "not its number"),
    ("USR3", "is not a signal name"),
    ("", "is not a signal name"),
    ("SIG", "is not a signal name"),
    ("SIG_DFL", "is not a signal name"),
    ("SIG_IGN", "is not a signal name"),
]


@pytest.mark.parametrize("text, name", SIGNALS)
def test_signal_names(text, name):
    assert signal_name(text) == name
    assert signal_number(text) == int(getattr(signal, name))


@pytest.mark.parametrize("text, message", BAD_SIGNALS)
def test_bad_signal_names(text, message):
    with pytest.raises(ValueError, match=message):
        signal_name(text)


@pytest.mark.parametrize("text", ["KILL", "sigstop"])
def test_uncatchable_signals_are_refused_where_a_handler_must_see_them(text):
    with pytest.raises(ValueError, match="cannot be caught"):
        signal_name(text, catchable=True)


# --------------------------------------------------------------------------- the commands use them


def _run(*argv):
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["launcher.cli", "submit", "--scheduler", "slurm", "--dry-run", "--walltime", "99:99"],
            "--walltime: '99:99': minutes and seconds must be 0-59",
        ),
        (["pixpro_of", "reproduce", "--dry-run", "--time-box", "600"], "'600' has no unit: write 600s or 600m"),
        (["pixpro_of", "reproduce", "--dry-run", "--eval-size", "64"], "'64' is not WIDTHxHEIGHT"),
        (["pixpro_of", "eval", "flow", "--size", "320"], "--size: '320' is not WIDTHxHEIGHT"),
        (
            ["pixpro_of", "eval", "seg", "--backbone", "random", "--data", "d", "--out", "o", "--crop", "5"],
            "'--crop': '5' is not HEIGHTxWIDTH",
        ),
        (
            ["pixpro_of", "eval", "propagate", "--backbone", "b", "--out", "o", "--size", "3"],
            "'--size': '3' is not WIDTHxHEIGHT",
        ),
        (["synth", "--out", "/nonexistent/x", "--size", "640"], "--size: '640' is not WIDTHxHEIGHT"),
        (
            ["hdf5_tools", "pack", "a", "b", "--nodes", "1", "--shard-size", "8XB"],
            "--shard-size: '8XB' is not a size in bytes",
        ),
        (["pixpro_of", "train", "--deadline", "3600"], "--deadline: '3600' has no unit"),
        (["pixpro_of", "train", "--signals", "12"], "not its number"),
        (["launcher.supervise", "--forward", "USR3", "--", "true"], "--forward: 'USR3' is not a signal name"),
    ],
)
def test_each_command_refuses_a_bad_value_in_one_line_naming_the_option(argv, message):
    p = _run(*argv)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_bare_walltime_is_minutes_as_in_slurm():
    p = _run("launcher.cli", "submit", "--scheduler", "slurm", "--dry-run", "--walltime", "90")
    assert p.returncode == 0, p.stderr
    assert "#SBATCH --time=01:30:00" in p.stdout and "LAUNCHER_WALLTIME_S=5400" in p.stdout


def test_a_profile_warning_signal_may_be_spelt_any_way_and_is_stored_as_the_schedulers_name(tmp_path):
    from launcher.clusters import profile_from_dict

    base = {"name": "x", "scheduler": "slurm"}
    assert profile_from_dict({**base, "warning_signal": "SIGUSR2"}, "x.toml").warning_signal == "USR2"
    assert profile_from_dict({**base, "warning_signal": "usr1"}, "x.toml").warning_signal == "USR1"
    with pytest.raises(UserError, match=r"^profile x.toml: warning_signal: 'USR3' is not a signal name"):
        profile_from_dict({**base, "warning_signal": "USR3"}, "x.toml")
    with pytest.raises(UserError, match=r"^profile x.toml: warning_signal 'ALRM': one of USR1, USR2, TERM"):
        profile_from_dict({**base, "warning_signal": "ALRM"}, "x.toml")
