"""``python -m pixpro_of smoke``: the five-minute self-check of a cluster set-up, run as every rank of
``launcher submit --smoke`` (one line per check and a verdict; exit 0 only on PASS). Without ``--run-dir``:
the older quick Horovod/mpi4py check (:mod:`pixpro_of.smoke.mpi_check`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import click

from pixpro_of.smoke.checks import RANK_BATCH
from pixpro_of.smoke.mpi_check import mpi_check, run_worker
from pixpro_of.smoke.rank import run_rank
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


@cli_command(
    "smoke",
    epilog="Examples: launcher submit --smoke --scheduler local --gpus 0 --preset cpu_small --wait "
    "(every rank of a job runs 'python -m pixpro_of smoke --run-dir RUN --ranks N ...'); "
    "python -m pixpro_of smoke --np 2 (this machine's Horovod and mpi4py under mpirun)",
)
@click.option("--run-dir", default=None, help="the smoke job's run directory (rank mode: one process per rank)")
@click.option("--ranks", type=int, default=None, help="ranks the job started (each rank checks its world size)")
@click.option("--gpus-per-node", type=int, default=0, show_default=True, help="GPUs the job asked for per node")
@click.option(
    "--rank-batch",
    type=int,
    default=RANK_BATCH,
    show_default=True,
    help="samples per rank in the 20 training steps (the tiny shard set is packed for it)",
)
@click.option("--config", default=None, help="the run's trainer config file or preset")
@click.option("--deadline", default=None, help="report by this time (the job's deadline; trainer syntax)")
@click.option(
    "--np",
    "np_",
    type=int,
    default=2,
    show_default=True,
    help="without --run-dir: MPI ranks of the quick Horovod/mpi4py check",
)
@click.option("--worker", is_flag=True, hidden=True)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def command(run_dir, ranks, gpus_per_node, rank_batch, config, deadline, np_, worker, overrides) -> int:
    """The self-check of a cluster set-up, as every rank of 'launcher submit --smoke' (one line per
    check and a verdict; exit 0 only on PASS); without --run-dir, a quick Horovod/mpi4py check."""
    if worker:
        return run_worker()  # a dead rank must end the job, not leave the others blocked in a collective
    if run_dir is None:
        if overrides:
            raise UserError(f"unexpected argument {overrides[0]!r}: key=value words need --run-dir (rank mode)")
        return mpi_check(np_)
    if ranks is None or ranks < 1:
        raise UserError("--ranks: give the number of ranks the job started (at least 1)")
    if rank_batch < 1:
        raise UserError(f"--rank-batch {rank_batch}: must be at least 1")
    bad = [w for w in overrides if "=" not in w or w.startswith("-")]
    if bad:
        raise UserError(f"unexpected argument {bad[0]!r}: the trainer's overrides are key=value")
    preset = Path(config).stem if config else "the default config"
    opts = SimpleNamespace(
        run_dir=os.path.abspath(run_dir),
        ranks=ranks,
        gpus_per_node=gpus_per_node,
        rank_batch=rank_batch,
        config=config,
        deadline=deadline,
        overrides=list(overrides),
        preset=preset,
    )
    return run_rank(opts)


def main(argv: Sequence[str] = ()) -> int:
    return call(command, argv, "pixpro_of smoke")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
