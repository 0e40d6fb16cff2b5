"""The installable stack: Horovod built with PyTorch+MPI+Gloo, MPI collectives, packaging."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pixpro_of", "flow", "hdf5_tools", "launcher"]


def test_horovod_check_build_lists_pytorch_mpi_gloo(mpi_env):
    exe = Path(sys.executable).parent / "horovodrun"
    out = subprocess.run([str(exe), "--check-build"], capture_output=True, text=True, env=mpi_env, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    frameworks = text.split("Available Frameworks:")[1].split("Available Controllers:")[0]
    controllers = text.split("Available Controllers:")[1].split("Available Tensor Operations:")[0]
    ops = text.split("Available Tensor Operations:")[1]
    assert "[X] PyTorch" in frameworks
    assert "[X] MPI" in controllers and "[X] Gloo" in controllers
    assert "[X] MPI" in ops and "[X] Gloo" in ops


@pytest.mark.mpi
def test_mpirun_two_ranks_horovod_and_mpi4py_allreduce(mpi_env):
    out = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "smoke", "--np", "2"],
        capture_output=True,
        text=True,
        env=mpi_env,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # ranks 0 and 1: sum of ranks = 1, average 0.5; mpi4py sum of (rank+1) = 3
    assert re.search(r"size=2 mpi_enabled=True sum=1 avg=0.5 mpi4py_sum=3", out.stdout), out.stdout
    assert "smoke: OK" in out.stdout


def test_smoke_rejects_bad_rank_count(mpi_env):
    out = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "smoke", "--np", "0"],
        capture_output=True,
        text=True,
        env=mpi_env,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "pixpro_of smoke: error: --np must be at least 1, got 0"


def _all_modules():
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        yield pkg
        for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + "."):
            yield info.name


@pytest.mark.parametrize("name", sorted(set(_all_modules())))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_cli_help_does_not_need_torch():
    code = (
        "import sys; import launcher.cli, hdf5_tools.cli, pixpro_of.__main__, flow.__main__;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_unknown_command_is_one_line_error():
    out = subprocess.run([sys.executable, "-m", "pixpro_of", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "unknown command 'frobnicate'" in out.stderr


@pytest.mark.slow
def test_pip_install_ships_clis_templates_and_profiles(tmp_path):
    """`pip install .` (not editable) gives working console scripts outside the checkout, with package data."""
    target = tmp_path / "site"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for script in ("launcher", "hdf5_tools"):
        res = subprocess.run(
            [sys.executable, str(target / "bin" / script), "--help"],
            cwd=outside,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"Usage: {script} ")  # click's help
    probe = (
        "import importlib.resources as r, launcher, pixpro_of;"
        "print(launcher.__file__);"
        "print(sorted(p.name for p in r.files('launcher.templates').iterdir()));"
        "print(sorted(p.name for p in r.files('launcher.profiles').iterdir()));"
        "print(sorted(p.name for p in r.files('pixpro_of.configs').iterdir()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=outside, capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(str(target)), "the installed copy, not the checkout, must be imported"
    shipped = {
        "templates": ROOT / "templates",
        "profiles": ROOT / "configs" / "clusters",
        "configs": ROOT / "configs" / "train",
    }
    for line, (kind, src) in zip(lines[1:], shipped.items()):
        expected = sorted(p.name for p in src.iterdir() if p.suffix in {".j2", ".sh", ".toml", ".yaml", ".json", ".py"})
        installed = [n for n in ast.literal_eval(line) if n != "__pycache__"]
        assert installed == expected, f"{kind}: installed {line} vs checkout {expected}"


@pytest.mark.parametrize("mode", [[], ["--test"]], ids=["setup", "setup-test"])
def test_setup_is_quiet_and_does_nothing_when_done(mode):
    """A second `make setup` or `make setup-test` (as `make demo` and `make test` run them) must not
    rebuild or reinstall anything."""
    env = dict(os.environ, VENV=str(Path(sys.executable).parent.parent))
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "setup.sh"), *mode], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"setup was not idle: {out.stdout}"
