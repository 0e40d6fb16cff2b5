"""``python -m launcher.supervise [--shield] [--forward SIG] -- COMMAND ...``: run a rank launcher
so that a stop signal becomes a checkpoint, whoever receives it.

Schedulers stop a job by signalling its processes: SLURM (requeue, preemption, scancel) and PBS
send SIGTERM to every process of the job, Grid Engine sends its notify signal, a user sends
SIGTERM to ``mpirun``. Left alone, ``mpirun`` (and ``horovodrun``) answer SIGTERM by aborting
the job and killing the ranks a moment later, before they reach the step boundary where they
checkpoint, and exit 1. Under this supervisor:

- With ``--shield`` the command starts with SIGTERM, SIGINT and SIGHUP *blocked* (the mask is
  inherited through ``exec``; Open MPI's daemons and SLURM's step daemons unblock them again for
  the ranks they start, and the trainer unblocks them itself). A signal sent to the shielded
  launcher stays pending; the supervisor sees it pending (``/proc/PID/status``) and treats it as
  a stop request, so nothing aborts the job.
- A stop request (any of SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 sent to the supervisor, or one
  pending in the shielded launcher) is passed on once, as ``--forward`` (default SIGUSR2), to the
  processes that pass it to the ranks: ``mpirun``/``srun`` themselves (they forward SIGUSR2 to every
  rank on every node), the ``mpirun`` under ``horovodrun``, the workers under ``torchrun``. The
  trainer checkpoints at its next step boundary and exits 75.
- Exit code: the command's, except that after a stop request any non-zero exit becomes 75
  (``EX_TEMPFAIL``: the run continues from its newest valid checkpoint; the trainer only ever
  replaces a checkpoint by a complete newer one).

Linux only (``/proc``). Exit 2 with one line for a usage error.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

EXIT_RESUME = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
SHIELDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MPI_LAUNCHERS = ("mpirun", "mpiexec", "orterun", "prterun", "srun")
POLL_S = 0.25


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
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
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
    prog = _base(table[child][2]) or table[child][1]
    if prog in MPI_LAUNCHERS or table[child][1] in MPI_LAUNCHERS:
        return [child]
    below = _descendants(child, table)
    if prog == "horovodrun":
        mpis = [p for p in below if table[p][1] in MPI_LAUNCHERS or _base(table[p][2]) in MPI_LAUNCHERS]
        return mpis or [child]
    if prog == "torchrun" or (prog == "run" and "torch.distributed.run" in " ".join(table[child][2])):
        workers = [p for p in below if table.get(p, (None,))[0] == child]
        return workers
    return [child]


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
        except ValueError:
            pass
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
        self.proc: Optional[subprocess.Popen] = None

    def say(self, text: str) -> None:
        if self.verbose:
            print(f"supervise: {text}", file=sys.stderr, flush=True)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        if self.stop_reason is None:
            self.stop_reason = f"SIG{signal.Signals(signum).name[3:]}"

    def _preexec(self) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set(SHIELDED) if self.shield else set())

    def _forward_now(self) -> None:
        self.forwarded = True
        targets = forward_targets(self.proc.pid)
        name = signal.Signals(self.forward).name
        self.say(f"stop requested ({self.stop_reason}): {name} to {' '.join(map(str, targets)) or 'nothing yet'}")
        for pid in targets:
            try:
                os.kill(pid, self.forward)
            except ProcessLookupError:
                pass
        if not targets:
            self.forwarded = False  # the launcher has no ranks yet: try again at the next poll

    def run(self) -> int:
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        try:
            self.proc = subprocess.Popen(self.argv, preexec_fn=self._preexec)
        except FileNotFoundError:
            print(f"supervise: error: {self.argv[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"supervise: error: {self.argv[0]}: permission denied", file=sys.stderr)
            return 126
        while True:
            try:
                rc = self.proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stop_reason is None and self.shield:
                pending = signal_pending(self.proc.pid, SHIELDED)
                if pending is not None:
                    self.stop_reason = f"SIG{signal.Signals(pending).name[3:]} to {os.path.basename(self.argv[0])}"
            if self.stop_reason is not None and not self.forwarded:
                self._forward_now()
        if rc < 0:
            rc = 128 - rc
        if self.stop_reason is not None and rc != 0:
            self.say(f"{os.path.basename(self.argv[0])} exited {rc} after {self.stop_reason}: exit {EXIT_RESUME} "
                     f"(resume from the newest checkpoint)")
            return EXIT_RESUME
        return rc


def _signal_number(name: str) -> int:
    n = name.upper()
    if not n.startswith("SIG"):
        n = "SIG" + n
    sig = getattr(signal, n, None)
    if not isinstance(sig, signal.Signals):
        raise ValueError(name)
    return int(sig)


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
                forward = _signal_number(args.pop(0))
            except ValueError as exc:
                print(f"launcher supervise: error: --forward {exc}: not a signal name", file=sys.stderr)
                return 2
        else:
            print(f"launcher supervise: error: unknown option {opt!r} "
                  "(usage: [--shield] [--forward SIG] [--quiet] -- COMMAND ...)", file=sys.stderr)
            return 2
    if not args or args[0] != "--" or len(args) < 2:
        print("launcher supervise: error: no command (usage: [--shield] [--forward SIG] -- COMMAND ...)",
              file=sys.stderr)
        return 2
    return Supervisor(args[1:], shield=shield, forward=forward, verbose=not quiet).run()


if __name__ == "__main__":
    sys.exit(main())
