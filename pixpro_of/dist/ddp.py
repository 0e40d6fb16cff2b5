"""PyTorch DDP backend (``dist.backend=ddp``): ``torch.distributed`` with NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import datetime
import os
import socket
import sys
from typing import Any, Tuple

import torch
import torch.distributed as dist

from pixpro_of.dist.backend import Backend, check_collective_device, register_backend
from plumbing.errors import UserError
from plumbing.jobenv import JobEnvironment, job_environment


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rendezvous(job: JobEnvironment) -> Tuple[str, int]:
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port:
        return addr, int(port)
    if job.world_size == 1:
        return "127.0.0.1", _free_port()
    if job.mpi:
        from mpi4py import MPI

        info = (socket.gethostname(), _free_port()) if job.rank == 0 else None
        host, p = MPI.COMM_WORLD.bcast(info, root=0)
        return addr or host, int(port or p)
    raise UserError("dist.backend=ddp needs MASTER_ADDR and MASTER_PORT (set by the launcher, srun jobs or torchrun)")


class DDPBackend(Backend):
    name = "ddp"

    def __init__(self, device: str = "auto", timeout_s: float = 1800.0):
        super().__init__(device, timeout_s)
        self.job = job_environment()
        self._rank, self._world, self._local = self.job.rank, self.job.world_size, self.job.local_rank
        if not dist.is_initialized():
            addr, port = _rendezvous(self.job)
            use_cuda = self.device.type == "cuda"
            if use_cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group(
                "nccl" if use_cuda else "gloo",
                init_method=f"tcp://{addr}:{port}",
                rank=self._rank,
                world_size=self._world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    @property
    def local_rank(self) -> int:
        return self._local

    @property
    def local_size(self) -> int:
        return self.job.local_size

    def allreduce(self, tensor, op: str = "mean"):
        if op not in ("mean", "sum"):
            raise ValueError(f"allreduce op must be 'mean' or 'sum', got {op!r}")
        check_collective_device(tensor, self.collective_device, "allreduce")
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        if op == "mean":
            out = out / self._world if out.is_floating_point() else out // self._world
        return out

    def broadcast(self, tensor, src: int = 0):
        check_collective_device(tensor, self.collective_device, "broadcast")
        dist.broadcast(tensor, src=src)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        dev = self.collective_device
        if dev.type == "cuda":  # NCCL: name the device, or it guesses one from the rank
            dist.barrier(device_ids=[dev.index])
        else:
            dist.barrier()

    def broadcast_optimizer_state(self, optimizer) -> None:
        state = self.broadcast_object(optimizer.state_dict() if self.rank == 0 else None, 0)
        optimizer.load_state_dict(state)

    def wrap_model(self, module):
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self._world == 1:
            return module
        import inspect

        ids = [self.device.index] if self.device.type == "cuda" else None
        # The seed used broadcast_buffers=False: buffers are synchronised once at construction
        # (from rank 0), not before every forward. Newer torch spells it forward_sync_buffers.
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
            return DDP(module, device_ids=ids, forward_sync_buffers=False)
        return DDP(module, device_ids=ids, broadcast_buffers=False)

    def convert_sync_batchnorm(self, module):
        from pixpro_of.dist.syncbn import collective_bn_factory, convert_batchnorm

        if self._world == 1:
            return module
        if self.device.type == "cuda":
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)

        def allreduce_sum(t, name):
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return t

        return convert_batchnorm(module, collective_bn_factory(allreduce_sum))

    def abort(self, code: int = 1) -> None:
        """End this rank now; the others fail their next collective within the timeout."""
        sys.stderr.flush()
        sys.stdout.flush()
        if self.job.mpi:
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(code)
        os._exit(code)

    def shutdown(self) -> None:
        if not dist.is_initialized():
            return
        self.barrier()
        dist.destroy_process_group()
        # The TCP store lives in rank 0: rank 0 must not tear it down while another rank's
        # client still uses it, so wait for everyone once more outside torch.distributed.
        if self.job.mpi:
            from mpi4py import MPI

            MPI.COMM_WORLD.Barrier()


register_backend("ddp", DDPBackend)
