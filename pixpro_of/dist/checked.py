"""A backend wrapper that catches host tensors handed to collectives, without a GPU."""

from __future__ import annotations

import collections
import os
import sys
from typing import Any

import torch

from pixpro_of.dist.backend import Backend, CollectiveDeviceError, check_collective_device

_HOST = "_pixpro_host_value"
_HERE = os.path.dirname(os.path.abspath(__file__))


class DeviceCheckedBackend(Backend):
    """``inner``'s ranks and training device, with its collectives declared on ``declared``."""

    def __init__(self, inner: Backend, declared: Any = "meta"):
        self.inner = inner
        self.declared = torch.device(declared)
        if self.declared == inner.device:
            raise ValueError(f"declared device {self.declared} must differ from the training device")
        self.name = inner.name
        self.calls: collections.Counter = collections.Counter()

    # ------------------------------------------------------------------ topology (the wrapped backend's)
    rank = property(lambda self: self.inner.rank)
    world_size = property(lambda self: self.inner.world_size)
    local_rank = property(lambda self: self.inner.local_rank)
    local_size = property(lambda self: self.inner.local_size)
    device = property(lambda self: self.inner.device)
    timeout_s = property(lambda self: self.inner.timeout_s)

    @property
    def collective_device(self):
        return self.declared

    # ------------------------------------------------------------------ host values <-> declared device
    def to_collective(self, tensor):
        host = self.inner.to_host(tensor).clone()
        out = torch.empty(host.shape, dtype=host.dtype, device=self.declared)
        setattr(out, _HOST, host)
        return out

    def to_host(self, tensor):
        if tensor.device == self.declared:
            return self._values(tensor, "to_host")
        return self.inner.to_host(tensor)

    def _values(self, tensor, what: str):
        host = getattr(tensor, _HOST, None)
        if host is None:
            raise CollectiveDeviceError(
                f"{what} received a tensor on {self.declared} that was not made by "
                f"to_collective(); build host values there with to_collective()"
            )
        return host

    def _record(self, what: str) -> None:
        f = sys._getframe(2)
        while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _HERE:
            f = f.f_back
        self.calls[(what, f.f_code.co_name if f is not None else "?")] += 1

    # ------------------------------------------------------------------ checked collectives
    def allreduce(self, tensor, op: str = "mean"):
        check_collective_device(tensor, self.declared, "allreduce")
        host = self._values(tensor, "allreduce")
        self._record("allreduce")
        out = self.inner.allreduce(self.inner.to_collective(host), op=op)
        return self.to_collective(self.inner.to_host(out))

    def broadcast(self, tensor, src: int = 0):
        check_collective_device(tensor, self.declared, "broadcast")
        host = self._values(tensor, "broadcast")
        self._record("broadcast")
        on_inner = self.inner.to_collective(host)
        self.inner.broadcast(on_inner, src)
        host.copy_(self.inner.to_host(on_inner))
        return tensor

    # ------------------------------------------------------------------ the rest: the wrapped backend
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return self.inner.broadcast_object(obj, src)

    def barrier(self) -> None:
        self.inner.barrier()

    def broadcast_parameters(self, module) -> None:
        self.inner.broadcast_parameters(module)  # model tensors live on the training device

    def wrap_model(self, module):
        return self.inner.wrap_model(module)

    def unwrap(self, module):
        return self.inner.unwrap(module)

    def wrap_optimizer(self, optimizer, module):
        return self.inner.wrap_optimizer(optimizer, module)

    def convert_sync_batchnorm(self, module):
        return self.inner.convert_sync_batchnorm(module)

    def optimizer_step(self, optimizer, scaler) -> None:
        self.inner.optimizer_step(optimizer, scaler)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def __getattr__(self, name: str):  # broadcast_optimizer_state, abort, job, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
