""".ci/build_horovod_nccl.sh refuses to build without MPI (a Gloo-only Horovod under mpirun is N
one-rank worlds) and refuses a cached wheel that was built without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".ci" / "build_horovod_nccl.sh"
VENV = Path(sys.executable).parents[1]


def _env(tmp_path, path=None):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_HOME", "NCCL_HOME", "HOROVOD_CUDA_HOME", "HOROVOD_NCCL_HOME")
    }
    env["PIXPRO_CACHE"] = str(tmp_path / "cache")
    if path is not None:
        env["PATH"] = path
    return env


def _run(tmp_path, *args, path=None):
    return subprocess.run(
        ["bash", str(BUILD), "--venv", str(VENV), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path, path),
    )


@pytest.fixture
def cuda_torch():
    import torch

    if not torch.version.cuda:
        pytest.skip("the build script needs a CUDA build of torch in the venv")


def _path_without_mpicxx(tmp_path) -> str:
    """Every command of PATH, as links in one folder, except the MPI compiler wrappers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.startswith("mpic") or (bin_dir / name).exists():
                continue
            (bin_dir / name).symlink_to(os.path.join(folder, name))
    return str(bin_dir)


def test_no_mpicxx_is_refused_before_building(tmp_path, cuda_torch):
    path = _path_without_mpicxx(tmp_path)
    r = _run(tmp_path, "--dry-run", path=path)
    assert r.returncode == 1, r.stdout
    assert "[horovod-nccl] error: no mpicxx on PATH: the NCCL build needs MPI as well as NCCL" in r.stderr
    r = _run(tmp_path, path=path)  # a real build stops at the same place
    assert r.returncode == 1 and "no mpicxx on PATH" in r.stderr
    assert not (tmp_path / "cache" / "wheels").exists()  # stopped before any download or build


def test_dry_run_names_mpi_and_a_cached_gloo_only_wheel_is_refused(tmp_path, cuda_torch):
    if not any(os.access(os.path.join(d, "mpicxx"), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("no mpicxx on PATH (Debian package libopenmpi-dev)")
    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^controllers +MPI \(\S*/mpicxx\) \+ Gloo$", r.stdout, re.M), r.stdout
    dest = Path(re.search(r"^wheel cache +(\S+)$", r.stdout, re.M).group(1))
    pytag = "cp%d%d" % sys.version_info[:2]
    dest.mkdir(parents=True)
    wheel = dest / f"horovod-0.28.1-{pytag}-{pytag}-linux_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    (dest / "configure-summary.txt").write_text("-- Found NCCL: /x/include\n")  # an old Gloo-only build
    r = _run(tmp_path, "--print-wheel")
    assert (
        r.returncode == 1
        and f"was built without MPI (no 'Found MPI' in {dest}/configure-summary.txt); remove {dest} and build again"
        in r.stderr
    ), r.stderr
    (dest / "configure-summary.txt").write_text("-- Found NCCL: /x/include\n-- Found MPI_CXX: /usr/lib/libmpi.so\n")
    r = _run(tmp_path, "--print-wheel")
    assert r.returncode == 0 and r.stdout.strip() == str(wheel), r.stderr
