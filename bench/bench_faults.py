"""Fail-fast measurements (issue 14): inject each fault into a running training job and time its exit.

For every fault x launch (1 rank; ``mpirun -np 2`` with Horovod; with DDP) a fresh copy of the
synthetic shards is packed, training starts (the ``cpu_small`` preset with a tiny PixPro double,
one DataLoader worker, see tests/test_faults_support.py), and once step 2 is logged the fault is
injected into the live job:

- ``jpeg``: one byte of every frame flipped (CRC failures); ``flow``: one byte of every flow_fwd chunk;
- ``truncate``: the shard cut to half its size; ``delete``: the shard unlinked;
- ``worker``: one DataLoader worker SIGKILLed (the OOM killer's way).

Printed per run: exit code, seconds from the injection to the job's exit, seconds from the first
bad read the trainer logged to the exit (the goal is <= 30 s), the number of ``pixpro_of train:
error:`` lines, whether any traceback was printed, processes left behind, and the one-line error.

usage: python bench/bench_faults.py [--faults jpeg,flow,truncate,delete,worker] [--launch 1,horovod,ddp] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_faults_support as fs  # noqa: E402

from plumbing.runs import EXIT_FINISHED, EXIT_RESUME  # noqa: E402

FAULTS = {
    "jpeg": lambda shard: lambda token: fs.corrupt_jpegs(shard),
    "flow": lambda shard: lambda token: fs.corrupt_flows(shard),
    "truncate": lambda shard: lambda token: fs.truncate(shard),
    "delete": lambda shard: lambda token: fs.delete(shard),
    "worker": lambda shard: fs.kill_worker,
}


def run_one(root: Path, fault: str, launch: str) -> dict:
    work = root / f"{fault}-{launch}"
    manifest = fs.make_shards(work / "data")
    shard = fs.shard_of(manifest)
    ranks, backend = (1, "single") if launch == "1" else (2, launch)
    run = work / "run"
    r = fs.run_with_fault(fs.train_cmd(run, manifest, ranks, backend), run, FAULTS[fault](shard))
    lines = fs.error_lines(r["output"])
    first = r["first_bad_read"]
    out = {
        "fault": fault,
        "launch": launch if launch != "1" else "1 rank",
        "rc": r["rc"],
        "exit_after_inject_s": round(r["t_exit"] - r["t_inject"], 2),
        "exit_after_first_bad_read_s": round(r["t_exit"] - first, 2) if first else None,
        "error_lines": len(lines),
        "traceback": "Traceback" in r["output"],
        "left": len(r["left"]),
        "message": lines[0][len(fs.ERROR_LINE) :] if lines else r["output"].strip().splitlines()[-1:],
    }
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--launch", default="1,horovod,ddp", help="1 (one rank), horovod, ddp (mpirun -np 2)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_faults_") as tmp:
        for launch in a.launch.split(","):
            for fault in a.faults.split(","):
                row = run_one(Path(tmp), fault, launch)
                rows.append(row)
                if a.json:
                    print(json.dumps(row), flush=True)
                else:
                    first = row["exit_after_first_bad_read_s"]
                    print(
                        f"{row['fault']:9s} {row['launch']:8s} rc={row['rc']} exit {row['exit_after_inject_s']:5.2f} s "
                        f"after injection, {'%5.2f s' % first if first is not None else '  n/a  '} after the first "
                        f"bad read; {row['error_lines']} error line(s), traceback={row['traceback']}, "
                        f"left={row['left']}: {row['message']}",
                        flush=True,
                    )
    worst = max(r["exit_after_inject_s"] for r in rows)
    print(f"slowest exit after an injected fault: {worst:.2f} s (goal <= 30 s)")
    return (
        0
        if all(r["rc"] not in (EXIT_FINISHED, EXIT_RESUME) and r["left"] == 0 and not r["traceback"] for r in rows)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
