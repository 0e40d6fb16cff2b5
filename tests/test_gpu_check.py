"""bench/gpu_check.sh (the one command for a GPU node) and .ci/build_horovod_nccl.sh, without a GPU:
the dry run lists the steps with their commands and time limits and checks what a CPU machine can
check; both scripts pass shellcheck; the real run names the card on every line, stops at its budget,
fails a Horovod without NCCL, and says so when there is no GPU at all."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
BUILD = ROOT / ".ci" / "build_horovod_nccl.sh"
VENV = Path(sys.executable).parents[1]
STEPS = ["venv", "build_horovod", "check_build", "hvd_allreduce", "bench_gpu_step", "bench_input", "world", "train"]


def gpu_check(*args, env=None, timeout=300):
    e = dict(os.environ, **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), "--venv", str(VENV), *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=ROOT)


def fake_gpu_path(tmp_path: Path) -> str:
    """A PATH with an ``nvidia-smi`` that names a card, so the real run's machinery runs on CPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$*" in *driver_version*) echo "000.00, 0 MiB";; *) echo "Test Card X1";; esac\n')
    smi.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_dry_run_lists_the_steps_and_checks_the_prerequisites(how, tmp_path):
    if how == "flag":
        p = gpu_check("--dry-run", "--out", str(tmp_path / "out"))
    else:
        p = gpu_check("--out", str(tmp_path / "out"), env={"GPU_CHECK_DRY_RUN": "1"})
    out = p.stdout
    steps = re.findall(r"^step (\d+) (\S+) timeout (\d+)s: (.*)$", out, re.M)
    assert [s[1] for s in steps] == STEPS, out
    assert [int(s[0]) for s in steps] == list(range(1, len(STEPS) + 1))
    cmd = {name: re.sub(r"\\(.)", r"\1", c) for _, name, _, c in steps}  # printf %q's escapes undone
    limits = {name: int(t) for _, name, t, _ in steps}
    assert all(0 < t <= 300 for t in limits.values()), limits
    assert ".ci/build_horovod_nccl.sh --venv" in cmd["build_horovod"] and "--install" in cmd["build_horovod"]
    assert cmd["check_build"].endswith("horovodrun --check-build")
    assert "horovodrun -np 1" in cmd["hvd_allreduce"]
    assert "bench/bench_gpu_step.py --device cuda --raft-pairs 16" in cmd["bench_gpu_step"]
    assert re.search(r"bench/bench_input\.py --device cuda --workers \d+ --arch resnet50 --batch 64 --image-size 224",
                     cmd["bench_input"])
    assert re.search(r"hdf5_tools pack synth:videos=128,frames=8,size=512x288,seed=0 \S+/out/train/data --nodes 1 ",
                     cmd["world"]), cmd["world"]
    train = cmd["train"]
    assert "-m pixpro_of train --config pixpro_k6 --run-dir" in train
    for key in ("data.synthetic=true", "data.synth.videos=128", "data.synth.frames=8", "data.synth.width=512",
                "data.synth.height=288", "run.device=cuda", "stop.deadline=2m"):
        assert key in train, train
    assert limits["train"] >= 150  # the 2-minute deadline, the world's packing and the last checkpoint
    assert "(skipped: the venv exists)" in out
    # the budget: the steps' limits may exceed it (each is cut to what is left), the default is 13 minutes
    assert re.search(r"^gpu_check: dry run; budget 780 s", out, re.M)

    checks = {name.strip(): status for status, name in re.findall(r"^check (ok|FAIL|skip) +([^:\n]+)", out, re.M)}
    for name in ("timeout (coreutils)", "torch is a CUDA build", "Horovod NCCL build plan",
                 "bench_gpu_step.py --raft-pairs", "training overrides (--print-config)"):
        assert checks.get(name) == "ok", (name, out)
    assert re.search(r"Horovod NCCL build plan: .*CUDA toolkit .*NCCL .*wheel cache .*nccl[0-9.]+-cuda[0-9.]+", out), out
    assert "nvidia-smi" in " ".join(checks)
    for tool in ("mpirun", "mpicxx"):
        assert checks[tool] == ("ok" if shutil.which(tool) else "skip"), out
    bench_input = "bench_input.py --device --workers --arch --batch --image-size"
    if (ROOT / "bench" / "bench_input.py").exists():
        assert checks[bench_input] == "ok", out
    else:
        assert checks[bench_input] == "FAIL" and "bench/bench_input.py is missing" in out
    assert p.returncode == (1 if "FAIL" in checks.values() else 0), (p.returncode, out, p.stderr)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_scripts_pass_shellcheck_and_bash_n():
    for f in (SCRIPT, BUILD):
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (f, r.stderr)
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (Debian package 'shellcheck')")
    r = subprocess.run(["shellcheck", "--severity=info", str(SCRIPT), str(BUILD)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[:4000]


def test_build_script_dry_run_names_the_wheels_and_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_HOME", "NCCL_HOME", "HOROVOD_CUDA_HOME", "HOROVOD_NCCL_HOME")}  # the wheels, not modules
    r = subprocess.run(["bash", str(BUILD), "--venv", str(VENV), "--dry-run"], capture_output=True, text=True,
                       timeout=120, env=dict(env, PIXPRO_CACHE=str(tmp_path / "cache")))
    import torch
    if not torch.version.cuda:
        assert r.returncode == 1 and "CPU-only build" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    cuda = torch.version.cuda
    assert f"CUDA toolkit     {tmp_path}/cache/cuda-wheels-{cuda}-nccl" in r.stdout, r.stdout
    assert re.search(rf"nvidia-cuda-nvcc(-cu\d+)?=={re.escape(cuda)}\.\*", r.stdout), r.stdout
    assert re.search(r"nvidia-nccl-cu\d+==[0-9.]+", r.stdout)
    assert re.search(rf"wheel cache +{tmp_path}/cache/wheels/horovod-0\.28\.1-torch\S+-nccl[0-9.]+-cuda{re.escape(cuda)}$",
                     r.stdout, re.M), r.stdout
    assert not (tmp_path / "cache").exists()  # a dry run installs and downloads nothing
    # a site's modules instead of the wheels: a toolkit without nvcc is refused with the path
    r = subprocess.run(["bash", str(BUILD), "--venv", str(VENV), "--dry-run"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, HOROVOD_CUDA_HOME=str(tmp_path / "no-cuda"), HOROVOD_NCCL_HOME=str(tmp_path)))
    assert r.returncode == 1 and f"no nvcc at {tmp_path}/no-cuda/bin/nvcc" in r.stderr, r.stderr


def test_without_a_gpu_the_real_run_says_so(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    p = gpu_check("--out", str(tmp_path / "out"))
    assert p.returncode == 1
    assert "no GPU here" in p.stderr


def test_budget_spent_skips_every_step_and_names_the_card(tmp_path):
    out = tmp_path / "out"
    p = gpu_check("--out", str(out), env={"PATH": fake_gpu_path(tmp_path), "GPU_CHECK_BUDGET_S": "0"})
    assert p.returncode == 1, p.stdout + p.stderr
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("gpu_check: card Test Card X1 (driver, memory: 000.00, 0 MiB)")
    for step in STEPS[1:]:
        assert re.search(rf"^\[Test Card X1\] {step}: SKIPPED", summary, re.M), summary
    assert "some steps FAILED on Test Card X1" in summary


@pytest.mark.slow
def test_check_build_fails_a_horovod_without_nccl(tmp_path):
    """The CPU Horovod of CI has no NCCL: the check_build step runs horovodrun and fails, naming why."""
    if not (VENV / "bin" / "horovodrun").exists():
        pytest.skip("no horovodrun in the venv")
    probe = subprocess.run([sys.executable, "-c", "import horovod.torch as h; print(bool(h.nccl_built()))"],
                           capture_output=True, text=True, timeout=120)
    if probe.stdout.strip() != "False":
        pytest.skip("this venv's Horovod has NCCL (or does not import)")
    out = tmp_path / "out"
    p = gpu_check("--only", "check_build", "--out", str(out), env={"PATH": fake_gpu_path(tmp_path)})
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"^\[Test Card X1\] check_build \|\s+\[X\] PyTorch", p.stdout, re.M), p.stdout
    summary = (out / "summary.txt").read_text()
    assert "[Test Card X1] check_build: FAIL rc=0 (no [X] NCCL under Tensor Operations)" in summary, summary
    assert "[Test Card X1] check_build: built: frameworks PyTorch; controllers MPI Gloo; tensor operations MPI Gloo" in summary
    assert (out / "check_build.log").exists()
    assert not (out / "train").exists()  # --only ran nothing else
