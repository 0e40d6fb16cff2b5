"""``python -m pixpro_of demo --out DIR``: the main job on the embedded default (the synthetic world).

Each stage prints what it did and where its outputs are. Stages run in order and stop at the
first failure (non-zero exit).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

from pixpro_of.errors import UserError


def _stage(name: str, cmd: List[str], log_dir: Path) -> None:
    t0 = time.time()
    log = log_dir / f"{name}.log"
    print(f"[demo] {name}: {' '.join(cmd)}", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log.read_text().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise UserError(f"stage {name!r} failed with exit code {rc}; full log: {log}")
    print(f"[demo] {name}: ok in {time.time() - t0:.1f}s (log {log})", flush=True)


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="pixpro_of demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    ap.add_argument("--np", type=int, default=2, help="MPI ranks for the distributed stages (default 2)")
    args = ap.parse_args(list(argv))
    out = Path(args.out).resolve()
    logs = out / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot create ({exc.strerror})") from None
    py = sys.executable
    t0 = time.time()
    _stage("smoke", [py, "-m", "pixpro_of", "smoke", "--np", str(args.np)], logs)
    print(f"[demo] done in {time.time() - t0:.1f}s; logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
