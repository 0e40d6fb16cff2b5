"""Every collective of the trainer gets tensors on the backend's device (NCCL refuses CPU ones).

On CPU the training device is the host, so a host tensor passed to a collective goes unnoticed;
:class:`pixpro_of.dist.checked.DeviceCheckedBackend` declares the collectives on ``meta`` and
refuses anything else, which is how these tests catch the bug class without a GPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixpro_of.dist.backend import (
    CollectiveDeviceError,
    SingleProcessBackend,
    check_world_matches_launch,
    make_backend,
)
from pixpro_of.dist.checked import DeviceCheckedBackend
from pixpro_of.train.failures import TrainingFailure
from pixpro_of.train.trainer import Trainer
from plumbing.errors import UserError
from plumbing.jobenv import job_environment
from plumbing.runs import EXIT_FINISHED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def torch_globals():
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


def test_checked_backend_refuses_host_tensors_and_carries_values():
    be = DeviceCheckedBackend(SingleProcessBackend(device="cpu"), declared="meta")
    assert be.collective_device == torch.device("meta") and be.device == torch.device("cpu")
    with pytest.raises(
        CollectiveDeviceError,
        match=r"allreduce received a tensor on cpu; this backend's "
        r"collectives take tensors on meta",
    ):
        be.allreduce(torch.tensor([1.0]), op="sum")
    with pytest.raises(CollectiveDeviceError, match="broadcast received a tensor on cpu"):
        be.broadcast(torch.zeros(2), 0)
    with pytest.raises(CollectiveDeviceError, match="not made by to_collective"):
        be.allreduce(torch.zeros(2, device="meta"))
    t = be.to_collective(torch.tensor([1.5, 2.5], dtype=torch.float64))
    out = be.allreduce(t, op="sum")
    assert out.device == torch.device("meta") and be.to_host(out).tolist() == [1.5, 2.5]
    assert be.allreduce_values([3.0, 4.0], op="mean") == [3.0, 4.0]
    assert sum(n for (what, _), n in be.calls.items() if what == "allreduce") == 2


def test_real_backends_refuse_a_tensor_off_their_collective_device():
    be = make_backend("single", device="cpu")
    with pytest.raises(
        CollectiveDeviceError,
        match="allreduce received a tensor on meta; this backend's collectives take tensors on cpu",
    ):
        be.allreduce(torch.zeros(1, device="meta"))


def test_the_trainer_keeps_every_collective_on_the_backend_device(tmp_path, torch_globals):
    """One rank: the stop agreement runs every step through the checked collectives."""
    from test_train_support import TINY_OVERRIDES, tiny_components

    from pixpro_of.config import load_config

    cfg = load_config(None, TINY_OVERRIDES + ["run.epochs=2"])
    be = DeviceCheckedBackend(SingleProcessBackend(device="cpu"))
    assert Trainer(cfg, tmp_path / "run", backend=be, components=tiny_components()).run() == EXIT_FINISHED
    assert be.calls[("allreduce", "_stop_requested")] >= 5


def test_the_check_catches_a_host_tensor_in_the_stop_agreement(tmp_path, torch_globals, monkeypatch):
    """The bug this guards against: the stop flag built on the host, as the trainer once did."""

    def host_stop_flag(self):
        flag = self.backend.allreduce(torch.tensor([0.0]), op="sum")
        return bool(flag.item() > 0)

    monkeypatch.setattr(Trainer, "_stop_requested", host_stop_flag)
    from test_train_support import TINY_OVERRIDES, tiny_components

    from pixpro_of.config import load_config

    cfg = load_config(None, TINY_OVERRIDES)
    be = DeviceCheckedBackend(SingleProcessBackend(device="cpu"))
    with pytest.raises(
        TrainingFailure, match="allreduce received a tensor on cpu; this backend's collectives take tensors on meta"
    ):
        Trainer(cfg, tmp_path / "run", backend=be, components=tiny_components()).run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_run_every_agreement_on_the_declared_device(tmp_path):
    """2 ranks on 2 'nodes' (node sets of 6 and 8 videos), skip accounting on, metrics every step:
    the stop agreement, the metrics average, the node-set equalisation and the skip count all
    reach the collectives on the declared device."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            GROUP_RANK=str(rank),
            GROUP_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests/dist_workers/checked_trainer.py"),
                    str(tmp_path / "run"),
                    str(tmp_path),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, p in enumerate(procs):
        assert p.returncode == 0, outs[rank][-3000:]
    for rank in range(2):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["code"] == EXIT_FINISHED and res["error"] == ""
        assert res["steps_per_epoch"] == 6  # node 0's 6 videos / 1 per rank, though node 1 holds 8
        calls = res["calls"]
        for caller in ("_stop_requested", "_average_over_ranks", "_equal_node_steps", "_account_skips"):
            assert calls.get(f"allreduce {caller}", 0) >= 1, (caller, calls)


def test_a_single_backend_under_a_multi_rank_launch_refuses_to_start(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("OMPI_", "PMIX_", "PMI_", "SLURM_", "MV2_")) or key in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "8")
    be = make_backend("single", device="cpu")
    with pytest.raises(UserError) as info:
        check_world_matches_launch(be)
    msg = str(info.value)
    assert msg == (
        "dist.backend=single runs 1 rank but openmpi started 8 ranks: every rank would train alone "
        "on the same run directory; use dist.backend=horovod (under mpirun/horovodrun) or "
        "dist.backend=ddp (torchrun, srun or mpirun)"
    )

    class FourRanks(SingleProcessBackend):
        name = "fake4"
        world_size = property(lambda self: 4)

    with pytest.raises(UserError, match=r"^dist.backend=fake4 sees 4 ranks but openmpi started 8; "):
        check_world_matches_launch(FourRanks(device="cpu"))
    check_world_matches_launch(FourRanks(device="cpu"), job_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}))
    # A SLURM batch script alone is one process, whatever its allocation's task count.
    check_world_matches_launch(be, job_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}))


def test_the_train_command_refuses_single_under_mpirun_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_", "SLURM_"))}
    env.update(
        OMPI_COMM_WORLD_RANK="0",
        OMPI_COMM_WORLD_SIZE="8",
        OMPI_COMM_WORLD_LOCAL_RANK="0",
        OMPI_COMM_WORLD_LOCAL_SIZE="8",
    )
    res = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "train", "--config", "cpu_small", "--run-dir", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "pixpro_of train: error: dist.backend=single runs 1 rank but openmpi started 8 ranks"
    ), res.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
