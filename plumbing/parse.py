"""The grammars of values typed on command lines and in config files, one owner each.

Durations, deadlines (points in time), WxH sizes, byte sizes and signal names. Each parser takes
the text and returns the value or raises ValueError with a one-line message that quotes the text;
:func:`checked` (or ``plumbing.cli.Converted`` for a click option) puts the option's name in front.

A bare number in a duration is **minutes**, as SLURM's ``--time`` reads it. Options where a bare
number used to be seconds (``reproduce --time-box``, ``--poll``, ``train --deadline``) refuse it
(``bare_number=False``) rather than silently reading ``600`` as ten hours.
"""

from __future__ import annotations

import datetime as _dt
import re
import signal as _signal
import time
from typing import Callable, Optional, Tuple, TypeVar

from plumbing.errors import UserError

T = TypeVar("T")

_FORMS = "use HH:MM:SS, HH:MM, D-HH:MM:SS, or 90s, 10m, 4h, 2d"
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_UNITS = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def checked(func: Callable[[str], T], text: str, what: str) -> T:
    """``func(text)``, its ValueError as a UserError naming ``what`` (``--walltime: '9x' is not ...``)."""
    try:
        return func(text)
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None


def parse_duration(text: str, bare_number: bool = True) -> float:
    """A duration in seconds: ``HH:MM:SS``, ``HH:MM``, ``D-HH[:MM[:SS]]``, ``90s``, ``10m``, ``1.5h``,
    ``2d``, ``1h30m``, or a bare number of minutes (refused with a hint when ``bare_number`` is False)."""
    s = str(text).strip().lower()
    if _NUMBER.fullmatch(s):
        if not bare_number:
            raise ValueError(
                f"{text!r} has no unit: write {s}s or {s}m (a bare number, minutes elsewhere, was seconds here before)"
            )
        secs = float(s) * 60
    elif any(c.isalpha() for c in s):
        m = _UNITS.fullmatch(s)
        if not s or not m or not any(m.groups()):
            raise ValueError(f"{text!r} is not a duration ({_FORMS})")
        secs = sum(float(g) * u for g, u in zip(m.groups(), _UNIT.values()) if g)
    else:
        m = _CLOCK.fullmatch(s)
        if not m or (m.group(1) is None and m.group(3) is None):
            raise ValueError(f"{text!r} is not a duration ({_FORMS})")
        days, first, mid, last = (int(g) if g else 0 for g in m.groups())
        if m.group(1) is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
            if first > 23:
                raise ValueError(f"{text!r}: hours must be 0-23 after a day count (D-HH:MM:SS)")
            h, mi, se = first, mid, last
        elif m.group(4) is None:  # HH:MM
            h, mi, se = first, mid, 0
        else:  # HH:MM:SS (hours may exceed 24)
            h, mi, se = first, mid, last
        if mi > 59 or se > 59:
            raise ValueError(f"{text!r}: minutes and seconds must be 0-59 (e.g. 100:39:00, not 99:99:00)")
        secs = days * 86400 + h * 3600 + mi * 60 + se
    if not secs > 0:
        raise ValueError(f"{text!r} must be a positive duration")
    return secs


def parse_deadline(text: str, now: Optional[float] = None) -> float:
    """A point in time as Unix seconds: ``@1767225600``, an ISO 8601 date-time (``2026-11-26T10:30:00``,
    local time without an offset), a clock time ``T10:30[:15]`` (today, or tomorrow if past), or a
    duration from ``now`` with a unit (``90m``, ``4h``, ``1-00:00:00``).

    ``HH:MM`` and bare numbers are refused: they were a clock time and seconds here before, and
    are a duration and minutes in every other option.
    """
    now = time.time() if now is None else now
    s = str(text).strip()
    if not s:
        raise ValueError("empty value")
    if s.startswith("@"):
        try:
            return float(s[1:])
        except ValueError:
            raise ValueError(f"{text!r}: '@' must be followed by a Unix time in seconds") from None
    clock = re.fullmatch(r"[Tt](\d{1,2}):(\d{2})(?::(\d{2}))?", s)
    if clock:
        hh, mm, ss = int(clock.group(1)), int(clock.group(2)), int(clock.group(3) or 0)
        if hh > 23 or mm > 59 or ss > 59:
            raise ValueError(f"{text!r} is not a valid clock time")
        target = _dt.datetime.fromtimestamp(now).replace(hour=hh, minute=mm, second=ss, microsecond=0)
        if target.timestamp() <= now:
            target += _dt.timedelta(days=1)
        return target.timestamp()
    if re.fullmatch(r"\d+:\d+(?::\d+)?", s):
        raise ValueError(f"{text!r} is ambiguous: write T{s} for a clock time or a duration with units (e.g. 10h30m)")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", s):
        try:
            return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 date-time") from None
    try:
        return now + parse_duration(s, bare_number=False)
    except ValueError as exc:
        if "has no unit" in str(exc):
            raise
        raise ValueError(
            f"{text!r} is not a deadline (a duration such as 90m or 4h, a clock time T10:30, "
            "an ISO date-time or @unix-seconds)"
        ) from None


def parse_wxh(text: str) -> Tuple[int, int]:
    """``640x360`` -> (width, height), both positive; ``X`` and spaces around it allowed."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT in pixels (e.g. 640x360)")
    if not int(m.group(1)) or not int(m.group(2)):
        raise ValueError(f"{text!r}: width and height must be positive")
    return int(m.group(1)), int(m.group(2))


def parse_hxw(text: str) -> Tuple[int, int]:
    """``512x1024`` -> (height, width): the one option that reads height first (``eval seg --crop``)."""
    try:
        height, width = parse_wxh(text)  # the same grammar, read the other way round
    except ValueError as exc:
        if "positive" in str(exc):
            raise
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH in pixels (e.g. 512x1024)") from None
    return height, width


_BYTES = re.compile(r"\s*(\d*\.?\d+)\s*(?:([kmgt])(i?)b?|(b?))\s*", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """A byte count: ``123``, ``123B``, decimal ``60KB``/``512MB``/``8GB``, binary ``8GiB``, ``500MiB``
    (and ``8G``, ``500M``: binary, as ``ls -h`` and the schedulers read them)."""
    m = _BYTES.fullmatch(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 8GiB, 512MB, 60KB or 123456)")
    value, unit, binary = float(m.group(1)), (m.group(2) or "").lower(), m.group(3)
    if not unit:
        n = int(value)
    else:
        plain = str(text).strip()[-1].lower() != "b"  # "8G": binary
        base = 1024 if binary or plain else 1000
        n = int(value * base ** ("_kmgt".index(unit)))
    if n <= 0:
        raise ValueError(f"{text!r} must be a positive size")
    return n


def signal_name(text: str, catchable: bool = False) -> str:
    """A signal's canonical name (``SIGUSR2``) from ``USR2``, ``SIGUSR2``, ``usr2`` or ``sigusr2``.

    Numbers are refused: they differ between systems (USR2 is 12 on Linux, 31 on macOS).
    ``catchable``: also refuse SIGKILL and SIGSTOP, which no handler sees.
    """
    s = str(text).strip().upper()
    name = s if s.startswith("SIG") else "SIG" + s
    if s.isdigit():
        raise ValueError(f"{text!r}: give the signal's name (e.g. USR2), not its number")
    sig = getattr(_signal, name, None)
    if not s or not isinstance(sig, _signal.Signals) or name.startswith("SIG_"):
        raise ValueError(f"{text!r} is not a signal name (e.g. USR2 or SIGUSR2)")
    if catchable and sig in (_signal.SIGKILL, _signal.SIGSTOP):
        raise ValueError(f"{text!r} cannot be caught (SIGKILL and SIGSTOP never reach a handler)")
    return sig.name


def signal_number(text: str, catchable: bool = False) -> int:
    """The number of :func:`signal_name`'s signal on this system."""
    return int(_signal.Signals[signal_name(text, catchable)])
