"""The distributed backend interface the trainer talks to, and its single-process implementation."""

from __future__ import annotations

import abc
import importlib
from typing import Any, Callable, Dict, List, Optional, Sequence

from plumbing.errors import UserError


class CollectiveDeviceError(ValueError):
    """A collective received a tensor on another device than the backend's collectives use."""


def check_collective_device(tensor, expected, what: str) -> None:
    """Raise :class:`CollectiveDeviceError` when ``tensor`` is not on ``expected``."""
    if tensor.device != expected:
        raise CollectiveDeviceError(
            f"{what} received a tensor on {tensor.device}; this backend's collectives "
            f"take tensors on {expected} (move host values with to_collective())"
        )


class Backend(abc.ABC):
    """What the trainer needs from a multi-process runtime. See the module docstring."""

    name: str = "abstract"

    def __init__(self, device: str = "auto", timeout_s: float = 1800.0):
        self._device_request = device
        self.timeout_s = float(timeout_s)  # how long a collective may wait (backends that can bound it)

    # ------------------------------------------------------------------ topology
    @property
    @abc.abstractmethod
    def rank(self) -> int: ...

    @property
    @abc.abstractmethod
    def world_size(self) -> int: ...

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def local_size(self) -> int:
        return 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self):
        """``cuda:local_rank`` when CUDA is requested/available, else ``cpu``."""
        import torch

        req = self._device_request
        if req == "cuda" and not torch.cuda.is_available():
            raise UserError("run.device=cuda but no CUDA device is visible")
        if req == "cuda" or (req == "auto" and torch.cuda.is_available()):
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")

    @property
    def collective_device(self):
        """Where :meth:`allreduce` and :meth:`broadcast` take their tensors (the training device
        by default: NCCL and Horovod's GPU path need CUDA tensors there, gloo CPU ones)."""
        return self.device

    def to_collective(self, tensor):
        """``tensor`` (host values) on :attr:`collective_device`, ready for a collective."""
        return tensor.to(self.collective_device)

    def to_host(self, tensor):
        """A collective's result as a CPU tensor (for ``.item()`` / ``.tolist()``)."""
        return tensor.detach().cpu()

    def allreduce_values(self, values: Sequence[float], op: str = "mean") -> List[float]:
        """Host floats reduced over ranks (float64 on :attr:`collective_device`); one collective."""
        import torch

        t = self.to_collective(torch.tensor([float(v) for v in values], dtype=torch.float64))
        return self.to_host(self.allreduce(t, op=op)).tolist()

    # ------------------------------------------------------------------ collectives
    @abc.abstractmethod
    def allreduce(self, tensor, op: str = "mean"):
        """Reduce ``tensor`` over ranks (``op`` = ``mean`` or ``sum``); returns a new tensor."""

    @abc.abstractmethod
    def broadcast(self, tensor, src: int = 0):
        """Overwrite ``tensor`` in place with rank ``src``'s value; returns it."""

    @abc.abstractmethod
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Wait until every rank arrives."""

    def broadcast_parameters(self, module) -> None:
        """Every parameter and buffer of ``module`` takes rank 0's value."""
        for t in list(module.parameters()) + list(module.buffers()):
            self.broadcast(t.data, 0)

    # ------------------------------------------------------------------ wrapping
    def wrap_model(self, module):
        """Wrap for gradient synchronisation where the backend does it in the model (DDP)."""
        return module

    def unwrap(self, module):
        """The plain module behind :meth:`wrap_model`."""
        return getattr(module, "module", module)

    def wrap_optimizer(self, optimizer, module):
        """Wrap for gradient synchronisation where the backend does it in the optimizer (Horovod)."""
        return optimizer

    def convert_sync_batchnorm(self, module):
        """Batch norm statistics over all ranks (identity when there is one process)."""
        return module

    def optimizer_step(self, optimizer, scaler) -> None:
        """``scaler.step(optimizer)`` (which unscales first when the scaler is enabled)."""
        scaler.step(optimizer)

    def shutdown(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release the runtime (no-op by default)."""


class SingleProcessBackend(Backend):
    """One process, one device: collectives are identities."""

    name = "single"

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def allreduce(self, tensor, op: str = "mean"):
        if op not in ("mean", "sum"):
            raise ValueError(f"allreduce op must be 'mean' or 'sum', got {op!r}")
        check_collective_device(tensor, self.collective_device, "allreduce")
        return tensor.clone()

    def broadcast(self, tensor, src: int = 0):
        check_collective_device(tensor, self.collective_device, "broadcast")
        if src != 0:
            raise ValueError(f"broadcast source rank {src} does not exist in a 1-process run")
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if src != 0:
            raise ValueError(f"broadcast source rank {src} does not exist in a 1-process run")
        return obj

    def barrier(self) -> None:
        return None


# name -> factory(device=...) or "module:attribute" loaded on first use.
BACKENDS: Dict[str, Any] = {
    "single": SingleProcessBackend,
}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``make_backend(name)`` available (used by the Horovod and DDP modules)."""
    BACKENDS[name] = factory


def make_backend(name: str, device: str = "auto", **kwargs: Any) -> Backend:
    """The backend called ``name`` (``single``; ``horovod``/``ddp`` once implemented)."""
    factory: Optional[Any] = BACKENDS.get(name)
    why = ""
    if factory is None and name.isidentifier():
        # Distributed backends live in their own modules: pixpro_of.dist.<name>.
        try:
            importlib.import_module(f"pixpro_of.dist.{name}")
        except ImportError as exc:
            why = f"; {str(exc).splitlines()[0]}" if getattr(exc, "name", "") != f"pixpro_of.dist.{name}" else ""
        factory = BACKENDS.get(name)
    if factory is None:
        known = sorted(BACKENDS)
        raise UserError(f"dist.backend={name!r} is not available (available: {', '.join(known)}){why}")
    return factory(device=device, **kwargs)


#: launchers that start the ranks themselves (a SLURM batch script alone, launcher ``slurm``,
#: reports its allocation's task count but is one process)
RANK_LAUNCHERS = ("torchrun", "openmpi", "pmix", "mpich", "mvapich", "srun")


def check_world_matches_launch(backend: Backend, job=None) -> None:
    """Refuse a backend whose world differs from the ranks the launcher started.

    ``mpirun -np 8 python -m pixpro_of train ... dist.backend=single`` would start eight rank-0
    trainers on one device, all writing one run directory. ``job``: a
    :class:`plumbing.jobenv.JobEnvironment` (read from the environment by default).
    """
    if job is None:
        from plumbing.jobenv import job_environment

        job = job_environment()
    if job.launcher not in RANK_LAUNCHERS or job.world_size <= 1 or backend.world_size == job.world_size:
        return
    if backend.world_size == 1:
        choice = "dist.backend=horovod (under mpirun/horovodrun) or dist.backend=ddp (torchrun, srun or mpirun)"
        raise UserError(
            f"dist.backend={backend.name} runs 1 rank but {job.launcher} started {job.world_size} "
            f"ranks: every rank would train alone on the same run directory; use {choice}"
        )
    raise UserError(
        f"dist.backend={backend.name} sees {backend.world_size} ranks but {job.launcher} started "
        f"{job.world_size}; start the trainer with the launcher its backend expects "
        f"(horovod: mpirun/horovodrun; ddp: torchrun, srun or mpirun)"
    )
