#!/usr/bin/env python3
"""Trainer stand-in for the two-node environment test: each rank records where it runs and the
environment it got, then exits 0.

``rank_env.py --run-dir DIR [--deadline ISO] [key=value ...]`` writes ``DIR/env/rank<R>.json``:
``{"rank", "host", "netns" (inode of its network namespace), "python", "argv", "env"}``, and with
``dist.backend=horovod`` among the arguments also ``"horovod"``: Horovod's rank, size, local and
cross rank and size after ``hvd.init()``.
"""

import json
import os
import socket
import sys


def main(argv):
    run_dir = argv[argv.index("--run-dir") + 1]
    rank = next(
        (int(os.environ[v]) for v in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK") if v in os.environ),
        0,
    )
    out = os.path.join(run_dir, "env")
    os.makedirs(out, exist_ok=True)
    rec = {
        "rank": rank,
        "host": socket.gethostname(),
        "netns": os.stat("/proc/self/ns/net").st_ino,
        "python": sys.executable,
        "argv": argv,
        "env": dict(os.environ),
    }
    if "dist.backend=horovod" in argv:
        import horovod.torch as hvd

        hvd.init()
        rec["horovod"] = {
            k: getattr(hvd, k)() for k in ("rank", "size", "local_rank", "local_size", "cross_rank", "cross_size")
        }
    tmp = os.path.join(out, f".rank{rank}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(out, f"rank{rank}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
