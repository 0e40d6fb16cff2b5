"""Horovod and DDP backends under real `mpirun -np 2` (issue 7, backend level)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKERS = Path(__file__).parent / "dist_workers"


def _mpirun(np_, args, env, timeout=180):
    cmd = ["mpirun", "--oversubscribe", "-np", str(np_), sys.executable] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_two_ranks_equal_one_rank_with_double_batch(backend, tmp_path, mpi_env):
    """2 ranks x batch 4 with SyncBN give the weights of 1 rank x batch 8 after 5 SGD steps."""
    two = tmp_path / "two.pt"
    one = tmp_path / "one.pt"
    res = _mpirun(2, [WORKERS / "equivalence.py", backend, 8, 5, two], mpi_env)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(
        [sys.executable, str(WORKERS / "equivalence.py"), "single", "8", "5", str(one)],
        capture_output=True,
        text=True,
        env=mpi_env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    a, b = torch.load(two), torch.load(one)
    assert sorted(a["state"]) == sorted(b["state"]), "SyncBN conversion must keep state-dict names"
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k].float(), b["state"][k].float(), rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    # the BN running statistics moved (so the comparison covers SyncBN's global statistics)
    assert not torch.allclose(a["state"]["1.running_var"], torch.ones(8))


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_killed_rank_ends_the_job_within_60s(backend, mpi_env):
    t0 = time.time()
    res = _mpirun(2, [WORKERS / "die.py", backend], mpi_env, timeout=120)
    elapsed = time.time() - t0
    assert res.returncode != 0
    assert elapsed < 60, f"job took {elapsed:.0f}s to end after a rank died"


def test_missing_horovod_is_a_one_line_error_naming_ddp():
    code = (
        "import sys; sys.modules['horovod'] = None; sys.modules['horovod.torch'] = None\n"
        "from pixpro_of.dist.backend import make_backend\n"
        "from plumbing.errors import UserError\n"
        "try:\n    make_backend('horovod', device='cpu')\n"
        "except UserError as e:\n    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    msg = res.stdout.strip()
    assert len(msg.splitlines()) == 1
    assert msg.startswith("dist.backend=horovod: Horovod is not installed")
    assert "dist.backend=ddp" in msg


def test_ddp_topology_from_scheduler_variables():
    # The DDP backend takes its ranks from plumbing.jobenv (tests/test_jobenv.py covers every launcher).
    from plumbing.jobenv import job_environment

    def topology(env):
        job = job_environment(env)
        return job.rank, job.world_size, job.local_rank

    assert topology({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1)
    assert topology({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == (
        5,
        16,
        1,
    )
    assert topology({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}) == (2, 4, 0)
    assert topology({}) == (0, 1, 0)


def test_collective_batchnorm_matches_batchnorm_on_one_rank():
    from pixpro_of.dist.syncbn import CollectiveBatchNorm, collective_bn_factory, convert_batchnorm

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ref[1].weight.data.uniform_()
    ref[1].bias.data.uniform_()
    conv = convert_batchnorm(__import__("copy").deepcopy(ref), collective_bn_factory(lambda t, name: t.clone()))
    assert isinstance(conv[1], CollectiveBatchNorm)
    x = torch.randn(6, 3, 8, 8)
    y_ref, y = ref(x), conv(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    (y_ref**2).sum().backward()
    (y**2).sum().backward()
    torch.testing.assert_close(conv[0].weight.grad, ref[0].weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv[1].weight.grad, ref[1].weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv[1].running_var, ref[1].running_var)
    ref.eval()
    conv.eval()
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)
