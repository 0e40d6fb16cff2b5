"""``python -m launcher.supervise [--shield] [--forward SIG] -- COMMAND ...``: run a rank launcher
so that a stop signal becomes a checkpoint, whoever receives it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Dict, List, Optional, Sequence

from plumbing.parse import signal_number
from plumbing.runs import EXIT_RESUME, EXIT_USAGE

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
SHIELDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MPI_LAUNCHERS = ("mpirun", "mpiexec", "orterun", "prterun", "srun")
WRAPPERS = ("horovodrun", "sh", "bash", "dash")
POLL_S = 0.25
LEFTOVER_GRACE_S = 3.0  # after the launcher exited on its own: time its leftovers get to end
# prctl option from <linux/prctl.h>: orphaned descendants are reparented to this process, not to init
PR_SET_CHILD_SUBREAPER = 36


def _proc_table() -> Dict[int, tuple]:
    """``{pid: (ppid, name, argv)}`` of every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        # comm may contain spaces and parentheses: ppid is the 2nd field after the last ')'.
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        table[int(entry)] = (ppid, name, argv)
    return table


def _descendants(root: int, table: Dict[int, tuple]) -> List[int]:
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _ancestors(pid: int, table: Dict[int, tuple], stop: int) -> List[int]:
    out = []
    while pid in table and pid != stop:
        pid = table[pid][0]
        out.append(pid)
    return out


def _base(argv: Sequence[str]) -> str:
    """The program a process runs: its argv[0], or the script a Python interpreter runs."""
    if not argv:
        return ""
    prog = os.path.basename(argv[0])
    if prog.startswith("python") and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            return argv[2].split(".")[-1]
        return os.path.basename(argv[1])
    return prog


def forward_targets(child: int, table: Optional[Dict[int, tuple]] = None) -> List[int]:
    """The processes that carry a stop signal on to the ranks, for a launcher process ``child``."""
    table = _proc_table() if table is None else table
    if child not in table:
        return []

    def is_mpi(pid):
        return table[pid][1] in MPI_LAUNCHERS or _base(table[pid][2]) in MPI_LAUNCHERS

    if is_mpi(child):
        return [child]
    prog = _base(table[child][2]) or table[child][1]
    if prog == "torchrun" or (prog == "run" and "torch.distributed.run" in " ".join(table[child][2])):
        return [p for p in table if table[p][0] == child]  # its workers
    # A wrapper (horovodrun, which becomes "sh -c 'mpirun ...'", or a site script): the topmost
    # MPI launchers below it; signalling the wrapper itself would kill it and orphan the ranks.
    mpis = [p for p in _descendants(child, table) if is_mpi(p)]
    top = [p for p in mpis if not any(a in mpis for a in _ancestors(p, table, child))]
    if top:
        return top
    if prog in WRAPPERS or table[child][1] in WRAPPERS:
        return []  # its MPI launcher has not started yet: the supervisor tries again
    return [child]  # anything else (one rank on its own) takes the signal itself


def signal_pending(pid: int, signums: Sequence[int]) -> Optional[int]:
    """The first of ``signums`` pending (blocked, not yet delivered) for process ``pid``, if any."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    mask = 0
    for key in ("ShdPnd", "SigPnd"):
        try:
            mask |= int(fields.get(key, "0").strip(), 16)
        except ValueError:  # a kernel that formats the field otherwise: treat as nothing pending
            continue
    for s in signums:
        if mask & (1 << (int(s) - 1)):
            return int(s)
    return None


class Supervisor:
    def __init__(self, argv: Sequence[str], shield: bool, forward: int, verbose: bool = True):
        self.argv = list(argv)
        self.shield = shield
        self.forward = forward
        self.verbose = verbose
        self.stop_reason: Optional[str] = None
        self.forwarded = False
        self.pid = 0
        self.alive: set = set()
        self.codes: Dict[int, int] = {}
        self.ended: set = set()  # leftovers this supervisor signalled itself

    def say(self, text: str) -> None:
        if self.verbose:
            print(f"supervise: {text}", file=sys.stderr, flush=True)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name

    def _forward_now(self) -> None:
        """Pass the stop on once to whatever carries it to the ranks (retried while nothing does)."""
        targets: List[int] = []
        table = _proc_table()
        roots = [self.pid] if self.pid in self.alive else []
        roots += [p for p in self.alive if p != self.pid]  # orphans of a launcher that died
        for root in roots:
            targets += [t for t in forward_targets(root, table) if t not in targets]
        name = signal.Signals(self.forward).name
        if targets:
            self.say(f"stop requested ({self.stop_reason}): {name} to {' '.join(map(str, targets))}")
        _send(targets, self.forward)
        self.forwarded = bool(targets)

    def _reap(self) -> None:
        """Collect every exited child (the launcher and, as subreaper, its orphans)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.alive.clear()
                return
            if pid == 0:
                return
            self.alive.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            self.codes[pid] = 128 - code if code < 0 else code
            if pid == self.pid and code < 0 and -code in SHIELDED and self.stop_reason is None:
                self.stop_reason = f"{signal.Signals(-code).name} to {os.path.basename(self.argv[0])}"

    def _launcher_left_on_its_own(self) -> bool:
        code = self.codes.get(self.pid)
        return self.stop_reason is None and code is not None and not (code > 128 and code - 128 in SHIELDED)

    def _end_leftovers(self, sig: int) -> None:
        """Send ``sig`` to every process still alive below this supervisor."""
        table = _proc_table()
        pids = []
        for root in sorted(self.alive):
            pids += [p for p in [root] + _descendants(root, table) if p not in pids]
        if sig == signal.SIGTERM and pids:
            names = ", ".join(f"{_base(table[p][2]) or table[p][1]} (pid {p})" for p in pids if p in table)
            self.say(
                f"{os.path.basename(self.argv[0])} exited {self.codes.get(self.pid)} and left "
                f"{len(pids)} process(es) running after {LEFTOVER_GRACE_S:.0f} s: ending {names}"
            )
        _send(pids, sig)
        self.ended.update(pids)

    def _adopted(self) -> None:
        """Orphans reparented to this process (it is a child subreaper) are waited for too."""
        me = os.getpid()
        for pid, (ppid, _, _) in _proc_table().items():
            if ppid == me:
                self.alive.add(pid)

    def run(self) -> int:
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        _become_subreaper()
        mask = set(SHIELDED) if self.shield else set()
        try:
            self.pid = os.posix_spawnp(self.argv[0], self.argv, os.environ, setsigmask=mask, setsigdef=STOP_SIGNALS)
        except FileNotFoundError:
            print(f"supervise: error: {self.argv[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"supervise: error: {self.argv[0]}: permission denied", file=sys.stderr)
            return 126
        self.alive = {self.pid}
        self.codes = {}
        left_at: Optional[float] = None
        terminated = False
        while self.alive:
            time.sleep(POLL_S)
            self._reap()
            if self.pid not in self.alive:
                self._adopted()  # a launcher that died may have left ranks or daemons behind
                if self._launcher_left_on_its_own() and self.alive:
                    now = time.monotonic()
                    left_at = now if left_at is None else left_at
                    if not terminated and now - left_at >= LEFTOVER_GRACE_S:
                        self._end_leftovers(signal.SIGTERM)
                        terminated = True
                    elif terminated and now - left_at >= 2 * LEFTOVER_GRACE_S:
                        self._end_leftovers(signal.SIGKILL)
            if self.stop_reason is None and self.shield and self.pid in self.alive:
                pending = signal_pending(self.pid, SHIELDED)
                if pending is not None:
                    self.stop_reason = f"{signal.Signals(pending).name} to {os.path.basename(self.argv[0])}"
            if self.stop_reason is not None and not self.forwarded and self.alive:
                self._forward_now()
        rc = self.codes.get(self.pid, 1)
        if rc == 0 or (rc > 128 and rc - 128 in SHIELDED):
            # The launcher died of its signal and left its MPI launcher to finish: that one's code counts.
            rc = max((c for p, c in self.codes.items() if p != self.pid and p not in self.ended), default=rc) or rc
        if self.stop_reason is not None and rc != 0:
            self.say(
                f"{os.path.basename(self.argv[0])} exited {rc} after {self.stop_reason}: exit {EXIT_RESUME} "
                f"(resume from the newest checkpoint)"
            )
            return EXIT_RESUME
        return rc


def _send(pids: Sequence[int], sig: int) -> None:
    """Signal each of ``pids``; one that has exited meanwhile is simply skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def _become_subreaper() -> None:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants are reparented here, not to init."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        # No prctl (not Linux/glibc): orphans go to init instead; the launcher itself is still
        # supervised, only a dying horovodrun's leftovers are not adopted.
        return


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    shield, forward, quiet = False, int(signal.SIGUSR2), False
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--shield":
            shield = True
        elif opt == "--quiet":
            quiet = True
        elif opt == "--forward" and args:
            try:
                forward = signal_number(args.pop(0))  # USR2, SIGUSR2 or usr2 (plumbing.parse)
            except ValueError as exc:
                print(f"launcher supervise: error: --forward: {exc}", file=sys.stderr)
                return EXIT_USAGE
        else:
            print(
                f"launcher supervise: error: unknown option {opt!r} "
                "(usage: [--shield] [--forward SIG] [--quiet] -- COMMAND ...)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if not args or args[0] != "--" or len(args) < 2:
        print(
            "launcher supervise: error: no command (usage: [--shield] [--forward SIG] -- COMMAND ...)", file=sys.stderr
        )
        return EXIT_USAGE
    return Supervisor(args[1:], shield=shield, forward=forward, verbose=not quiet).run()


if __name__ == "__main__":
    sys.exit(main())
