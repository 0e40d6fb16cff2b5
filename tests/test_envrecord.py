"""launcher.envrecord: what a link ran with (job/env/), and the differences between links."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import envrecord
from launcher.job_files import RunDir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, cuda",
    [
        ("__version__ = '2.14.1+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n", "13.0"),
        ("__version__ = '2.1.0+cu121'\ncuda = '12.1'\nhip = None\n", "12.1"),
        ("__version__ = '2.3.0+cpu'\ncuda: Optional[str] = None\n", None),
        ("__version__ = '1.0'\n", None),
    ],
)
def test_parse_torch_cuda(text, cuda):
    assert envrecord.parse_torch_cuda(text) == cuda


def test_torch_cuda_is_read_without_importing_torch():
    code = (
        "import sys; from launcher import envrecord; v = envrecord.torch_build_cuda(); "
        "import json; print(json.dumps([v, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    version, imported = json.loads(out.stdout)
    import torch  # noqa: E402  (the test may import it: the answer must match)

    assert version == torch.version.cuda and imported is False


def test_parse_nvidia_smi():
    query = "0, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n1, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n"
    banner = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |\n"
    info = envrecord.parse_nvidia_smi(query, banner)
    assert info == {
        "gpus": [
            {"index": "0", "name": "NVIDIA H100 80GB HBM3", "memory": "81559 MiB"},
            {"index": "1", "name": "NVIDIA H100 80GB HBM3", "memory": "81559 MiB"},
        ],
        "driver": "550.54.15",
        "cuda_driver": "12.4",
    }
    assert envrecord.parse_nvidia_smi("", "") == {"gpus": [], "driver": None, "cuda_driver": None}


def record(**changes) -> dict:
    rec = {
        "time": "2026-01-01T00:00:00Z",
        "job_id": "12",
        "link": 0,
        "restart": 0,
        "hosts": ["n1", "n2"],
        "python": {"executable": "/venv/bin/python", "version": "3.11.7"},
        "packages": {"torch": "2.1.0", "numpy": "1.26.4", "horovod": None},
        "torch_cuda": "12.1",
        "project": {"version": "0.1.0", "commit": "abc", "dirty": False},
        "modules": {"loaded": ["cuda/12.1", "nccl/2.18"], "list": None},
        "gpu": {"gpus": [{"index": "0"}, {"index": "1"}], "driver": "535.1", "cuda_driver": "12.2"},
    }
    for key, value in changes.items():
        path = key.split("__")
        d = rec
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
    return rec


@pytest.mark.parametrize(
    "changes, diff",
    [
        ({}, []),
        ({"time": "later", "job_id": "13", "link": 1, "config": {"x": 1}}, []),  # not what a link must share
        ({"packages__torch": "2.2.0"}, ["torch 2.2.0 (first: 2.1.0)"]),
        ({"packages__horovod": "0.28.1"}, ["horovod 0.28.1 (first: none)"]),
        ({"python__executable": "/other/python"}, ["interpreter /other/python (first: /venv/bin/python)"]),
        ({"project__commit": "def"}, ["commit def (first: abc)"]),
        ({"hosts": ["n1"]}, ["hosts 1 (first: 2)"]),
        (
            {"gpu__driver": "550.2", "gpu__cuda_driver": "12.4"},
            ["driver 550.2 (first: 535.1)", "driver CUDA 12.4 (first: 12.2)"],
        ),
        ({"torch_cuda": "11.8"}, ["torch CUDA 11.8 (first: 12.1)"]),
        ({"modules__loaded": ["cuda/11.8"]}, ["modules cuda/11.8 (first: cuda/12.1 nccl/2.18)"]),
    ],
)
def test_differences(changes, diff):
    assert envrecord.differences(record(), record(**changes)) == diff


def test_the_job_entry_writes_a_record_and_warns_about_a_changed_environment(tmp_path):
    """``python -m launcher.envrecord HOSTFILE`` as the job runs it, with a ``module`` command exported
    to child shells (as Lmod and Environment Modules do) and a first link that ran another torch."""
    rd = RunDir(str(tmp_path / "run"))
    (rd.job / "env").mkdir(parents=True)
    (rd.job / "request.json").write_text(json.dumps({"scheduler": "local", "walltime_s": 60}) + "\n")
    first = record(time="2000-01-01T00:00:00Z", job_id="local-1", hosts=["localhost"])
    first["packages"]["torch"] = "1.0.0"
    (rd.job / "env" / "link-0-r0-local-1.json").write_text(json.dumps(first))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=4\nnodeB slots=4\n")
    env = dict(
        os.environ,
        RUN_DIR=str(rd.path),
        LAUNCHER_JOB_ID="local-2",
        LAUNCHER_LINK="1",
        LAUNCHER_RESTART_COUNT="3",
        LOADEDMODULES="cuda/12.1:nccl/2.18",
        **{"BASH_FUNC_module%%": '() {  echo "Currently Loaded Modules: 1) cuda/12.1 2) nccl/2.18"\n}'},
    )
    code = (
        "import sys; from launcher import envrecord; rc = envrecord.main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(hostfile)], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    path = rd.job / "env" / "link-1-r3-local-2.json"
    rec = json.loads(path.read_text())
    assert rec["hosts"] == ["nodeA", "nodeB"] and (rec["job_id"], rec["link"], rec["restart"]) == ("local-2", 1, 3)
    assert rec["python"]["executable"] == sys.executable
    for name in ("torch", "torchvision", "h5py", "numpy"):
        assert rec["packages"][name] == metadata.version(name)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["project"]["version"] == "0.1.0" and rec["project"]["commit"] == head
    assert rec["modules"] == {
        "loaded": ["cuda/12.1", "nccl/2.18"],
        "list": "Currently Loaded Modules: 1) cuda/12.1 2) nccl/2.18",
    }
    assert rec["request"] == {"scheduler": "local", "walltime_s": 60} and rec["config"] is None
    lines = out.stdout.splitlines()
    assert lines[0].startswith("launcher: environment: python ") and "2 host(s)" in lines[0]
    assert lines[0].endswith("recorded in job/env/link-1-r3-local-2.json")
    assert lines[1].startswith("launcher: warning: this link runs with another environment than link 0 (job local-1): ")
    assert f"torch {metadata.version('torch')} (first: 1.0.0)" in lines[1] and "hosts 2 (first: 1)" in lines[1]
    # status's lines: one per link that differs from the first
    warn = envrecord.warnings(rd)
    assert len(warn) == 1 and warn[0].startswith(
        "link 1 restart 3 (job local-2) ran with another environment than link 0 (job local-1): "
    )


def test_nvidia_smi_where_there_is_one(tmp_path):
    """A node with GPUs: nvidia-smi's answers (an nvidia-smi printing a real H100 node's output)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        "case \"$1\" in --query-gpu=*) echo '0, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB' ;;\n"
        "*) echo '| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |' ;; esac\n"
    )
    smi.chmod(0o755)
    code = "import json; from launcher import envrecord; print(json.dumps(envrecord.gpu_info()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    info = json.loads(out.stdout)
    assert info["driver"] == "550.54.15" and info["cuda_driver"] == "12.4" and len(info["gpus"]) == 1


def test_a_record_that_cannot_be_written_does_not_stop_the_job(tmp_path):
    run = tmp_path / "run"
    (run / "job").mkdir(parents=True)
    (run / "job" / "env").write_text("a file where the folder should be")
    out = subprocess.run(
        [sys.executable, "-m", "launcher.envrecord", str(tmp_path / "nohosts")],
        env=dict(os.environ, RUN_DIR=str(run)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0 and out.stdout.startswith("launcher: the environment record was not written (")
    bad = subprocess.run(
        [sys.executable, "-m", "launcher.envrecord"],
        env=dict(os.environ, RUN_DIR=str(run)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("launcher envrecord: error: usage:")
