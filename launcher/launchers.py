"""Launch methods: how the ranks of a job start inside its allocation, one type per method.

A launch method is apart from the scheduler that obtained the nodes: ``mpirun`` runs under PBS,
Grid Engine, PJM and SLURM alike. Each type owns its argv (words with :mod:`launcher.shellwords`
placeholders for what only the running job knows: the host file, the forwarded environment,
the rendezvous address), the backends its ranks can form, and how it starts one process per node
(staging, ``torchrun``'s per-node agents) and one process on one host (the probe of a node that
stopped answering).
"""

from __future__ import annotations

import abc
from typing import Dict, List, Optional, Tuple

from launcher.shellwords import array, var
from plumbing.errors import UserError

HOSTFILE = var("LAUNCHER_HOSTFILE")
MPI_ENV = array("launcher_mpi_env")  # -x NAME for every variable the ranks need
PER_NODE = array("launcher_per_node")
PYTHON = var("LAUNCHER_PYTHON")


class LaunchMethod(abc.ABC):
    """One way to start ranks. ``backends``: what its ranks can form, the first the default."""

    name: str = ""
    backends: Tuple[str, ...] = ()
    schedulers: Optional[Tuple[str, ...]] = None  # None: under any scheduler
    needs_per_node: bool = False  # starts through one process per node (torchrun's agents)

    def check(self, scheduler: str, backend: Optional[str]) -> str:
        """The backend to use (``backend`` or the default); a UserError for a combination that cannot run."""
        if self.schedulers is not None and scheduler not in self.schedulers:
            raise UserError(f"--launch {self.name} needs --scheduler {' or '.join(self.schedulers)} (got {scheduler})")
        chosen = backend or self.backends[0]
        if chosen not in ("horovod", "ddp"):
            raise UserError(f"--backend {chosen!r}: use horovod or ddp")
        if chosen not in self.backends:
            raise UserError(f"--launch {self.name} starts {self.describe()} ranks; use --backend {self.backends[0]}")
        return chosen

    def describe(self) -> str:
        return {"horovod": "Horovod", "ddp": "torch.distributed"}[self.backends[0]]

    @abc.abstractmethod
    def ranks_argv(self, plan) -> List[str]:
        """The command that starts every rank of ``plan``; the rank's own command follows it."""

    def per_node_argv(self, plan, scheduler: str) -> List[str]:
        """One process per node: a SLURM step (no MPI needed), else ``mpirun`` one per node."""
        if scheduler == "slurm":
            return [
                "srun",
                f"--nodes={plan.nodes}",
                "--ntasks-per-node=1",
                f"--ntasks={plan.nodes}",
                "--kill-on-bad-exit=1",
            ]
        return [
            "mpirun",
            "-np",
            str(plan.nodes),
            "-hostfile",
            HOSTFILE,
            "-map-by",
            "ppr:1:node",
            *plan.profile.mpirun_flags,
            MPI_ENV,
        ]

    def probe_argv(self, plan, scheduler: str) -> List[str]:
        """One process on one host, the host to follow: asks a node whether it still answers."""
        if scheduler == "slurm":
            return ["srun", "--nodes=1", "--ntasks=1", "--nodelist"]
        return ["mpirun", "-np", "1", *plan.profile.mpirun_flags, "-host"]


class Mpirun(LaunchMethod):
    name = "mpirun"
    backends = ("horovod", "ddp")

    def ranks_argv(self, plan):
        return [
            "mpirun",
            "-np",
            str(plan.ranks),
            "-hostfile",
            HOSTFILE,
            "-map-by",
            f"ppr:{plan.ranks_per_node}:node",
            *plan.profile.mpirun_flags,
            MPI_ENV,
        ]


class Horovodrun(LaunchMethod):
    name = "horovodrun"
    backends = ("horovod",)

    def ranks_argv(self, plan):
        return [
            "horovodrun",
            "--mpi",
            "-np",
            str(plan.ranks),
            "-hostfile",
            HOSTFILE,
            "--mpi-args=" + " ".join(plan.profile.mpirun_flags),
        ]


class Srun(LaunchMethod):
    name = "srun"
    backends = ("ddp", "horovod")
    schedulers = ("slurm",)

    def ranks_argv(self, plan):
        return [
            "srun",
            f"--nodes={plan.nodes}",
            f"--ntasks-per-node={plan.ranks_per_node}",
            f"--ntasks={plan.ranks}",
            f"--cpus-per-task={plan.cpus_per_rank}",
            "--kill-on-bad-exit=0",
        ]


class Torchrun(LaunchMethod):
    name = "torchrun"
    backends = ("ddp",)
    needs_per_node = True

    def ranks_argv(self, plan):
        # One torchrun agent per node, each under its own supervisor (it passes a stop to its workers).
        return [
            PER_NODE,
            PYTHON,
            "-m",
            "launcher.supervise",
            "--",
            "torchrun",
            f"--nnodes={plan.nodes}",
            f"--nproc-per-node={plan.ranks_per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={var('MASTER_ADDR')}:{var('MASTER_PORT')}",
            f"--rdzv-id={var('LAUNCHER_JOB_ID')}",
            "--no-python",
        ]


LAUNCH_METHODS: Dict[str, LaunchMethod] = {m.name: m for m in (Mpirun(), Horovodrun(), Srun(), Torchrun())}


def get_launch_method(name: str) -> LaunchMethod:
    try:
        return LAUNCH_METHODS[name]
    except KeyError:
        raise UserError(f"--launch {name!r}: choose from {', '.join(LAUNCH_METHODS)}") from None
