"""The older quick check, ``python -m pixpro_of smoke --np N``: this machine's Horovod and mpi4py collectives
under ``mpirun``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from plumbing.errors import UserError


def worker() -> int:
    """One MPI rank: Horovod and mpi4py collectives checked against their known results; rank 0 prints."""
    import horovod.torch as hvd
    import torch
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

        print(
            f"horovod {horovod.__version__} size={size} mpi_enabled={hvd.mpi_enabled()} "
            f"sum={s.tolist()[0]:g} avg={a.tolist()[0]:g} mpi4py_sum={m}"
        )
        for line in flat:
            print("FAIL", line)
        print("smoke: OK" if not flat else "smoke: FAILED")
        ok = not flat
    else:
        ok = True
    ok = comm.allreduce(int(ok), op=MPI.MIN)
    return 0 if ok else 1


def mpi_check(np_: int) -> int:
    """``np_`` ranks of :func:`worker` under ``mpirun``; their exit code."""
    if np_ < 1:
        raise UserError(f"--np must be at least 1, got {np_}")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise UserError("mpirun not found on PATH (install openmpi-bin or load the MPI module)")
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    cmd = [mpirun, "-np", str(np_), sys.executable, "-m", "pixpro_of.smoke.cli", "--worker"]
    return subprocess.run(cmd, env=env, timeout=180).returncode


def run_worker() -> int:
    """:func:`worker`; a rank that fails aborts the MPI job (the others must not wait in a collective)."""
    try:
        return worker()
    except BaseException:
        import traceback

        from mpi4py import MPI

        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
        raise
