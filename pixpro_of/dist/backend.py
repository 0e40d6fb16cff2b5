"""The distributed backend interface the trainer talks to, and its single-process implementation.

The trainer never calls ``torch.distributed`` or Horovod directly; it asks a :class:`Backend`:

- ``rank``, ``world_size``, ``local_rank``, ``local_size``, ``is_main``, ``device``
- ``allreduce(tensor, op)`` (``"mean"`` or ``"sum"``; returns a new tensor),
  ``broadcast(tensor, src)`` (in place), ``broadcast_object(obj, src)``, ``barrier()``
- ``broadcast_parameters(module)`` (make every rank start from rank 0's weights and buffers)
- ``wrap_model(module)`` / ``unwrap(module)`` (DDP wraps; others return the module)
- ``wrap_optimizer(optimizer, module)`` (Horovod's DistributedOptimizer averages gradients)
- ``convert_sync_batchnorm(module)`` (SyncBN across ranks; identity for one process)
- ``shutdown()``

:func:`make_backend` builds one by name. ``"single"`` is implemented here; ``"horovod"`` and
``"ddp"`` are registered in :data:`BACKENDS` by the module that implements them.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Callable, Dict, Optional

from plumbing.errors import UserError


class Backend(abc.ABC):
    """What the trainer needs from a multi-process runtime. See the module docstring."""

    name: str = "abstract"

    def __init__(self, device: str = "auto"):
        self._device_request = device

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

    def shutdown(self) -> None:
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
        return tensor.clone()

    def broadcast(self, tensor, src: int = 0):
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
