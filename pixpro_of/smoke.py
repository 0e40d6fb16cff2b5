"""A short check that the distributed stack works: ``python -m pixpro_of smoke --np 2``.

Starts ``mpirun -np N`` on this module in worker mode; every rank does a Horovod
allreduce (sum and average), a Horovod broadcast, a DistributedOptimizer step and
an mpi4py allreduce, and rank 0 prints what it measured. Exit code 0 when all values
are right on every rank.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace
from typing import Sequence

import click

from plumbing.cli import call, command as cli_command
from plumbing.errors import UserError


def _worker() -> int:
    import torch
    import horovod.torch as hvd
    from mpi4py import MPI

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    comm = MPI.COMM_WORLD
    errors = []
    if comm.Get_rank() != rank or comm.Get_size() != size:
        errors.append(f"mpi4py rank/size {comm.Get_rank()}/{comm.Get_size()} != horovod {rank}/{size}")

    expected_sum = sum(range(size))
    s = hvd.allreduce(torch.full((4,), float(rank)), op=hvd.Sum, name="smoke_sum")
    if not torch.equal(s, torch.full((4,), float(expected_sum))):
        errors.append(f"horovod sum allreduce gave {s.tolist()}")
    a = hvd.allreduce(torch.full((4,), float(rank)), op=hvd.Average, name="smoke_avg")
    if not torch.allclose(a, torch.full((4,), expected_sum / size)):
        errors.append(f"horovod average allreduce gave {a.tolist()}")
    b = hvd.broadcast(torch.full((3,), float(rank + 7)), root_rank=0, name="smoke_bcast")
    if not torch.equal(b, torch.full((3,), 7.0)):
        errors.append(f"horovod broadcast gave {b.tolist()}")

    # DistributedOptimizer: each rank's gradient is its rank; the step uses the average.
    w = torch.nn.Parameter(torch.zeros(2))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)])
    (w * float(rank)).sum().backward()
    opt.step()
    if not torch.allclose(w.detach(), torch.full((2,), -expected_sum / size)):
        errors.append(f"DistributedOptimizer step gave {w.detach().tolist()}")

    m = comm.allreduce(rank + 1, op=MPI.SUM)
    if m != size * (size + 1) // 2:
        errors.append(f"mpi4py allreduce gave {m}")

    all_errors = comm.gather(errors, root=0)
    if rank == 0:
        flat = [f"rank {r}: {e}" for r, errs in enumerate(all_errors) for e in errs]
        import horovod

        print(f"horovod {horovod.__version__} size={size} mpi_enabled={hvd.mpi_enabled()} "
              f"sum={s.tolist()[0]:g} avg={a.tolist()[0]:g} mpi4py_sum={m}")
        for line in flat:
            print("FAIL", line)
        print("smoke: OK" if not flat else "smoke: FAILED")
        ok = not flat
    else:
        ok = True
    ok = comm.allreduce(int(ok), op=MPI.MIN)
    return 0 if ok else 1


@cli_command("smoke", epilog="Example: python -m pixpro_of smoke --np 2")
@click.option("--np", "np_", type=int, default=2, show_default=True, help="number of MPI ranks")
@click.option("--worker", is_flag=True, hidden=True)
def command(np_, worker) -> int:
    """A short check of the distributed stack: Horovod and mpi4py collectives on N MPI ranks."""
    args = SimpleNamespace(np=np_, worker=worker)
    if args.worker:
        try:
            return _worker()
        except BaseException:
            # A dead rank must end the job, not leave the others blocked in a collective.
            import traceback
            from mpi4py import MPI

            traceback.print_exc()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
            raise
    if args.np < 1:
        raise UserError(f"--np must be at least 1, got {args.np}")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise UserError("mpirun not found on PATH (install openmpi-bin or load the MPI module)")
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    cmd = [mpirun, "-np", str(args.np), sys.executable, "-m", "pixpro_of.smoke", "--worker"]
    return subprocess.run(cmd, env=env, timeout=180).returncode


def main(argv: Sequence[str] = ()) -> int:
    return call(command, argv, "pixpro_of smoke")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
