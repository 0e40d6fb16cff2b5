"""Horovod backend (``dist.backend=horovod``): ``horovod.torch`` over MPI, started by plain ``mpirun``."""

from __future__ import annotations

import sys
import types
from typing import Any

from pixpro_of.dist.backend import Backend, check_collective_device, register_backend
from plumbing.errors import UserError

try:
    import horovod.torch as hvd
except ImportError as exc:  # pragma: no cover - exercised by a test that hides horovod
    raise UserError(
        f"dist.backend=horovod: Horovod is not installed ({exc}); run `make setup` to build it, "
        "or use dist.backend=ddp (PyTorch DDP, no extra install)"
    ) from None


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self, device: str = "auto", timeout_s: float = 1800.0):
        super().__init__(device, timeout_s)
        hvd.init()
        self._object_broadcasts = 0
        dev = self.device
        if dev.type == "cuda":
            import torch

            torch.cuda.set_device(dev)

    @property
    def rank(self) -> int:
        return hvd.rank()

    @property
    def world_size(self) -> int:
        return hvd.size()

    @property
    def local_rank(self) -> int:
        return hvd.local_rank()

    @property
    def local_size(self) -> int:
        return hvd.local_size()

    def allreduce(self, tensor, op: str = "mean"):
        if op not in ("mean", "sum"):
            raise ValueError(f"allreduce op must be 'mean' or 'sum', got {op!r}")
        check_collective_device(tensor, self.collective_device, "allreduce")
        return hvd.allreduce(tensor, op=hvd.Average if op == "mean" else hvd.Sum)

    def broadcast(self, tensor, src: int = 0):
        check_collective_device(tensor, self.collective_device, "broadcast")
        return hvd.broadcast_(tensor, root_rank=src)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        # Horovod names the collective after type(obj) unless told otherwise, so ranks passing
        # placeholders of another type (None vs a str) would wait for each other forever.
        self._object_broadcasts += 1
        return hvd.broadcast_object(obj, root_rank=src, name=f"broadcast_object.{self._object_broadcasts}")

    def barrier(self) -> None:
        hvd.barrier()

    def broadcast_parameters(self, module) -> None:
        hvd.broadcast_parameters(module.state_dict(), root_rank=0)

    def broadcast_optimizer_state(self, optimizer) -> None:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def wrap_optimizer(self, optimizer, module):
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        named = [(n, p) for n, p in named if id(p) in in_opt]
        opt = hvd.DistributedOptimizer(optimizer, named_parameters=named, op=hvd.Average)
        base_class = optimizer.__class__

        def zero_grad(self, set_to_none: bool = True):
            # Horovod 0.28's zero_grad() takes no arguments; keep its pending-allreduce check
            # and accept torch's set_to_none.
            if self._handles:
                raise AssertionError(
                    "optimizer.zero_grad() called between backward() and step(): "
                    "Horovod gradient allreduces are still in flight"
                )
            return base_class.zero_grad(self, set_to_none=set_to_none)

        opt.zero_grad = types.MethodType(zero_grad, opt)
        return opt

    def convert_sync_batchnorm(self, module):
        from pixpro_of.dist.syncbn import collective_bn_factory, convert_batchnorm

        if self.world_size == 1:
            return module
        if self.device.type == "cuda":

            def allreduce_sum(t, name):
                return hvd.allreduce(t, op=hvd.Sum, name=name)

            return convert_batchnorm(module, collective_bn_factory(allreduce_sum))

        from mpi4py import MPI

        if MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            # CPU tensors: a direct MPI_Allreduce of the few per-channel sums costs microseconds,
            # while a Horovod op waits for the background thread's negotiation cycle. Horovod
            # initialised MPI with THREAD_MULTIPLE and talks on its own communicator, so this is safe.
            comm = MPI.COMM_WORLD.Dup()

            def allreduce_sum(t, name):
                out = t.detach().contiguous().clone()
                comm.Allreduce(MPI.IN_PLACE, out.numpy(), op=MPI.SUM)
                return out
        else:

            def allreduce_sum(t, name):
                return hvd.allreduce(t, op=hvd.Sum, name=name)

        return convert_batchnorm(module, collective_bn_factory(allreduce_sum))

    def optimizer_step(self, optimizer, scaler) -> None:
        """Horovod's AMP recipe: wait for the gradients' allreduce, unscale them, then step without
        a second synchronisation. Without a scaler, the DistributedOptimizer's own step."""
        if not scaler.is_enabled():
            optimizer.step()
            return
        optimizer.synchronize()
        scaler.unscale_(optimizer)
        with optimizer.skip_synchronize():
            scaler.step(optimizer)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (after an exception on this rank)."""
        sys.stderr.flush()
        sys.stdout.flush()
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(code)

    def shutdown(self) -> None:
        hvd.shutdown()


register_backend("horovod", HorovodBackend)
