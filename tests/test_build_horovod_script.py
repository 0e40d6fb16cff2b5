""".ci/build_horovod_nccl.sh without a GPU: its dry run names the wheels and the cache, a site
toolkit without nvcc is refused, and it passes shellcheck (moved here from test_gpu_check.py when
the GPU check stopped building Horovod)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".ci" / "build_horovod_nccl.sh"
VENV = Path(sys.executable).parents[1]


def test_build_script_passes_shellcheck_and_bash_n():
    r = subprocess.run(["bash", "-n", str(BUILD)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (Debian package 'shellcheck')")
    r = subprocess.run(["shellcheck", "--severity=info", str(BUILD)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[:4000]


def test_build_script_dry_run_names_the_wheels_and_the_cache(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_HOME", "NCCL_HOME", "HOROVOD_CUDA_HOME", "HOROVOD_NCCL_HOME")
    }  # the wheels, not modules
    r = subprocess.run(
        ["bash", str(BUILD), "--venv", str(VENV), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(env, PIXPRO_CACHE=str(tmp_path / "cache")),
    )
    import torch

    if not torch.version.cuda:
        assert r.returncode == 1 and "CPU-only build" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    cuda = torch.version.cuda
    assert f"CUDA toolkit     {tmp_path}/cache/cuda-wheels-{cuda}-nccl" in r.stdout, r.stdout
    assert re.search(rf"nvidia-cuda-nvcc(-cu\d+)?=={re.escape(cuda)}\.\*", r.stdout), r.stdout
    assert re.search(r"nvidia-nccl-cu\d+==[0-9.]+", r.stdout)
    assert re.search(
        rf"wheel cache +{tmp_path}/cache/wheels/horovod-0\.28\.1-torch\S+-nccl[0-9.]+-cuda{re.escape(cuda)}$",
        r.stdout,
        re.M,
    ), r.stdout
    assert not (tmp_path / "cache").exists()  # a dry run installs and downloads nothing
    # a site's modules instead of the wheels: a toolkit without nvcc is refused with the path
    r = subprocess.run(
        ["bash", str(BUILD), "--venv", str(VENV), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HOROVOD_CUDA_HOME=str(tmp_path / "no-cuda"), HOROVOD_NCCL_HOME=str(tmp_path)),
    )
    assert r.returncode == 1 and f"no nvcc at {tmp_path}/no-cuda/bin/nvcc" in r.stderr, r.stderr
