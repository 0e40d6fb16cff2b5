"""The launch environment: this process's rank, local rank, node and node count, read from whichever launcher started it
(torchrun, Open MPI/PMIx, MPICH, MVAPICH, srun/SLURM, else the batch system's host list).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import List, Mapping, Optional, overload

from plumbing.errors import UserError

#: launchers whose ranks share an MPI world (mpi4py's COMM_WORLD is the job)
MPI_LAUNCHERS = ("openmpi", "pmix", "mpich", "mvapich")


@dataclass(frozen=True)
class JobEnvironment:
    """Where this process stands in its job. A lone process is rank 0 of 1 on node 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1
    node: int = 0
    nodes: int = 1
    launcher: str = ""  #: torchrun, openmpi, pmix, mpich, mvapich, srun, slurm, or "" (not started as ranks)
    scheduler: str = ""  #: slurm, pbs, sge, pjm, or "" (no batch system)

    @property
    def mpi(self) -> bool:
        """Started by an MPI launcher (``mpirun``/``mpiexec``): its ranks form an MPI world."""
        return self.launcher in MPI_LAUNCHERS

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@overload
def _int(env: Mapping[str, str], name: str, default: int) -> int: ...
@overload
def _int(env: Mapping[str, str], name: str, default: None = None) -> Optional[int]: ...
def _int(env: Mapping[str, str], name: str, default: Optional[int] = None) -> Optional[int]:
    """``env[name]`` as an int; ``default`` when unset; a UserError naming it when not a number."""
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text.strip())
    except ValueError:
        raise UserError(f"launch environment: {name}={text!r} is not a whole number") from None


def _first(env: Mapping[str, str], *names: str) -> Optional[int]:
    for name in names:
        value = _int(env, name)
        if value is not None:
            return value
    return None


def tasks_per_node(text: str) -> List[int]:
    """SLURM's compressed counts (``2(x3),1`` = [2, 2, 2, 1]); a UserError when malformed."""
    out: List[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise UserError(f"launch environment: tasks per node {text!r} is not in SLURM's form (e.g. 2(x3),1)")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _scheduler(env: Mapping[str, str]) -> str:
    if "SLURM_JOB_ID" in env or "SLURM_JOBID" in env:
        return "slurm"
    if "PJM_JOBID" in env:
        return "pjm"
    if "PBS_JOBID" in env or "PBS_NODEFILE" in env:
        return "pbs"
    if "PE_HOSTFILE" in env or ("SGE_ROOT" in env and "JOB_ID" in env):
        return "sge"
    return ""


def _hosts(path: str) -> List[str]:
    """Distinct host names of a scheduler host file, in order of first appearance (first word of a line)."""
    try:
        with open(path) as f:
            words = [line.split()[0] for line in f if line.strip()]
    except OSError as exc:
        raise UserError(f"launch environment: cannot read the host list {path} ({exc.strerror or exc})") from None
    return list(dict.fromkeys(words))


def _host_index(hosts: List[str], hostname: str) -> int:
    short = hostname.split(".")[0]
    for i, h in enumerate(hosts):
        if h == hostname or h.split(".")[0] == short:
            return i
    return 0


def _ranks(env: Mapping[str, str], launcher: str, rank: str, size: str, local: str, local_size: str) -> dict:
    r, w = _int(env, rank, 0), _int(env, size, 1)
    lr, ls = _int(env, local, 0), _int(env, local_size, 1)
    return dict(launcher=launcher, rank=r, world_size=w, local_rank=lr, local_size=ls)


def _slurm(env: Mapping[str, str], launcher: str, rank: Optional[int] = None) -> dict:
    step = launcher == "srun" or launcher == "pmix"
    r = _int(env, "SLURM_PROCID", 0) if rank is None else rank
    w = _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") if step else _int(env, "SLURM_NTASKS")
    node = _int(env, "SLURM_NODEID", 0)
    nodes = (
        _first(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
        if step
        else _first(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    )
    counts_text = (
        (env.get("SLURM_STEP_TASKS_PER_NODE") if step else None)
        or env.get("SLURM_NTASKS_PER_NODE")
        or env.get("SLURM_TASKS_PER_NODE")
    )
    counts = tasks_per_node(counts_text) if counts_text else []
    local_size = counts[node] if node < len(counts) else (counts[-1] if counts else 1)
    return dict(
        launcher=launcher,
        rank=r,
        world_size=w if w is not None else 1,
        local_rank=_int(env, "SLURM_LOCALID", 0),
        local_size=local_size,
        node=node,
        nodes=nodes if nodes is not None else max(node + 1, 1),
    )


def _batch_nodes(env: Mapping[str, str], scheduler: str, hostname: Optional[str]) -> dict:
    """Node index and count of a lone process inside a PBS, Grid Engine or PJM job."""
    host = hostname if hostname is not None else socket.gethostname()
    if scheduler == "pbs":
        if env.get("PBS_NODEFILE"):
            hosts = _hosts(env["PBS_NODEFILE"])
            node = _int(env, "PBS_VNODENUM")  # set per node by pbsdsh
            return dict(node=node if node is not None else _host_index(hosts, host), nodes=max(len(hosts), 1))
        return {}
    if scheduler == "sge":
        if env.get("PE_HOSTFILE"):
            hosts = _hosts(env["PE_HOSTFILE"])
            return dict(node=_host_index(hosts, host), nodes=max(len(hosts), 1))
        nodes = _int(env, "NHOSTS")
        return dict(nodes=nodes) if nodes else {}
    if scheduler == "pjm":
        nodes = _int(env, "PJM_NODE")
        if env.get("PJM_O_NODEINF"):
            hosts = _hosts(env["PJM_O_NODEINF"])
            return dict(node=_host_index(hosts, host), nodes=nodes or max(len(hosts), 1))
        return dict(nodes=nodes) if nodes else {}
    return {}


def job_environment(env: Optional[Mapping[str, str]] = None, hostname: Optional[str] = None) -> JobEnvironment:
    """This process's place in its job, from ``env`` (default ``os.environ``); see the module docstring.

    ``hostname`` (default this host's) finds the node in a scheduler's host list.
    """
    env = os.environ if env is None else env
    scheduler = _scheduler(env)
    if "RANK" in env and "WORLD_SIZE" in env:
        f = _ranks(env, "torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        group = _int(env, "GROUP_RANK")
        f["node"] = group if group is not None else f["rank"] // max(f["local_size"], 1)
        group_size = _int(env, "GROUP_WORLD_SIZE")
        f["nodes"] = group_size if group_size else -(-f["world_size"] // max(f["local_size"], 1))
    elif "OMPI_COMM_WORLD_SIZE" in env:
        f = _ranks(
            env,
            "openmpi",
            "OMPI_COMM_WORLD_RANK" if "OMPI_COMM_WORLD_RANK" in env else "PMIX_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        )
    elif "PMIX_RANK" in env:
        if "SLURM_PROCID" in env:
            f = _slurm(env, "pmix", rank=_int(env, "PMIX_RANK"))
        else:
            f = _ranks(env, "pmix", "PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK", "PMIX_LOCAL_SIZE")
    elif "PMI_RANK" in env and "PMI_SIZE" in env:
        f = _ranks(env, "mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")
    elif "MV2_COMM_WORLD_SIZE" in env:
        f = _ranks(
            env,
            "mvapich",
            "MV2_COMM_WORLD_RANK",
            "MV2_COMM_WORLD_SIZE",
            "MV2_COMM_WORLD_LOCAL_RANK",
            "MV2_COMM_WORLD_LOCAL_SIZE",
        )
    elif "SLURM_STEP_NUM_NODES" in env or "SLURM_STEP_NUM_TASKS" in env:
        f = _slurm(env, "srun")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        f = _slurm(env, "slurm")
    else:
        f = dict(_batch_nodes(env, scheduler, hostname))
    if "node" not in f and f.get("launcher"):
        f["node"] = f["rank"] // max(f["local_size"], 1)
        f["nodes"] = -(-f["world_size"] // max(f["local_size"], 1))
    job = JobEnvironment(scheduler=scheduler, **f)
    _check(job)
    return job


def _check(job: JobEnvironment) -> None:
    """Refuse variables that contradict each other (a rank outside its world, a node outside the job).

    A local rank past the local size passes: launchers that give no local size (torchrun without
    ``LOCAL_WORLD_SIZE``) leave it at 1.
    """
    bad = None
    if job.world_size < 1 or not 0 <= job.rank < job.world_size:
        bad = f"rank {job.rank} of a world of {job.world_size}"
    elif job.local_size < 1 or job.local_rank < 0:
        bad = f"local rank {job.local_rank} of {job.local_size} on its node"
    elif job.nodes < 1 or not 0 <= job.node < job.nodes:
        bad = f"node {job.node} of {job.nodes}"
    if bad:
        raise UserError(f"launch environment ({job.launcher or job.scheduler or 'none'}): {bad}")
