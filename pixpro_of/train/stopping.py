"""When to stop early: a wall-clock deadline and stop signals, checked at step boundaries.

A signal handler only sets a flag (nothing else is safe inside a handler); the trainer asks
:meth:`StopControl.should_stop` after every optimizer step and, when it says so, writes a
checkpoint and exits with code 75 ("checkpointed, resume me").

The deadline rule: stop when ``time left < safety_factor × (step time + checkpoint time) + margin``,
where the step time is the slowest of the recent steps and the checkpoint time is the slowest
checkpoint measured so far (or an estimate until one has been written).
"""

from __future__ import annotations

import signal
import time
from collections import deque
from typing import Callable, Deque, Dict, Iterable, List, Optional

from plumbing.parse import checked, signal_number
from plumbing.parse import parse_deadline as parse_deadline_at


def parse_deadline(text: str, now: Optional[float] = None, what: str = "--deadline") -> float:
    """The deadline as a Unix time in seconds (the grammar is :func:`plumbing.parse.parse_deadline`:
    ``@unix``, an ISO date-time, ``T10:30``, or a duration with a unit such as ``90m``)."""
    return checked(lambda t: parse_deadline_at(t, now), str(text), what)


def signal_numbers(names: Iterable[str]) -> List[int]:
    """``['SIGUSR2', 'term']`` → signal numbers; UserError for unknown or uncatchable names."""
    return [checked(lambda n: signal_number(n, catchable=True), str(name), "stop.signals") for name in names]


class StopControl:
    """Decides, at each step boundary, whether to checkpoint and stop.

    ``deadline``: Unix time or None. ``clock``: a ``time.time``-like function (tests pass a fake).
    """

    def __init__(
        self,
        deadline: Optional[float] = None,
        margin_s: float = 30.0,
        safety_factor: float = 1.5,
        signals: Iterable[str] = ("SIGUSR2", "SIGTERM"),
        clock: Callable[[], float] = time.time,
        window: int = 20,
    ):
        self.deadline = deadline
        self.margin_s = float(margin_s)
        self.safety_factor = float(safety_factor)
        self.signal_nums = signal_numbers(signals)
        self.clock = clock
        self._steps: Deque[float] = deque(maxlen=window)
        self.checkpoint_s = 0.0
        self.signal_received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self.reason = ""

    @classmethod
    def from_config(cls, stop) -> "StopControl":
        """The control of ``cfg.stop`` (deadline, margin, safety factor, signals)."""
        return cls(
            parse_deadline(stop.deadline) if stop.deadline else None, stop.margin_s, stop.safety_factor, stop.signals
        )

    # -- signals
    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        # Only set a flag: the checkpoint happens at the next step boundary.
        self.signal_received = signum

    def install(self) -> None:
        """Install the flag-setting handler for the configured signals (main thread only).

        The signals are also unblocked: a launcher under ``launcher.supervise --shield`` starts
        with SIGTERM blocked, and launchers that do not reset the mask (torchrun) pass it on.
        """
        for num in self.signal_nums:
            self._previous[num] = signal.signal(num, self._handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signal_nums)

    def uninstall(self) -> None:
        for num, prev in self._previous.items():
            signal.signal(num, prev)
        self._previous.clear()

    # -- timing
    def record_step(self, seconds: float) -> None:
        self._steps.append(float(seconds))

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s = max(self.checkpoint_s, float(seconds))

    def step_estimate(self) -> float:
        return max(self._steps) if self._steps else 0.0

    def needed_s(self) -> float:
        """Seconds that must remain to run one more step and then checkpoint safely."""
        return self.safety_factor * (self.step_estimate() + self.checkpoint_s) + self.margin_s

    def time_left(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - self.clock()

    def should_stop(self) -> bool:
        """True when a stop signal arrived or the deadline is too close for another step."""
        if self.signal_received is not None:
            self.reason = f"signal {signal.Signals(self.signal_received).name}"
            return True
        left = self.time_left()
        if left is not None and left < self.needed_s():
            self.reason = (
                f"deadline: {left:.1f} s left < {self.needed_s():.1f} s needed "
                f"(step {self.step_estimate():.2f} s, checkpoint {self.checkpoint_s:.2f} s, "
                f"x{self.safety_factor:g} + {self.margin_s:g} s margin)"
            )
            return True
        return False
