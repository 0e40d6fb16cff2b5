"""A stand-in rank for the supervisor tests: counts steps, and on SIGTERM/SIGUSR2 finishes its
step, writes ``OUT/rank<R>.txt`` (the step and the signal it saw) and exits 75, as the trainer does.
Usage: stop_rank.py OUT [EXIT_CODE_WHEN_DONE]. Prints "up" once its handlers are installed."""

import os
import signal
import sys
import time

out = sys.argv[1]
rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
seen = []
for s in (signal.SIGTERM, signal.SIGUSR2):
    signal.signal(s, lambda n, f: seen.append(signal.Signals(n).name))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGUSR2})
open(os.path.join(out, f"up{rank}"), "w").close()
for step in range(1, 1200):
    time.sleep(0.05)
    if seen:
        time.sleep(2.0)  # the rest of the step and the checkpoint (longer than mpirun waits after SIGTERM)
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(f"{step} {seen[0]}\n")
        sys.exit(75)
    if len(sys.argv) > 2 and step == 20:
        sys.exit(int(sys.argv[2]))
sys.exit(0)
