"""hdf5_tools stage (plain and under mpirun) and a pack killed with SIGKILL that resumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hdf5_tools import fake_sources
from hdf5_tools.manifest import file_crc32, load_manifest
from hdf5_tools.pack import PackConfig, pack
from hdf5_tools.stage import StageConfig, stage
from hdf5_tools.verify import verify_shard
from plumbing.errors import UserError


@pytest.fixture()
def packed(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(4):
        fake_sources.write_frame_folder(
            tmp_path / "src", "train", f"v{i}", rgb=(rng.random((3 + i, 16, 16, 3)) * 255).astype(np.uint8)
        )
    return pack(PackConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), nodes=2, shard_size=1, progress=False))


def test_stage_copies_one_nodes_shards_and_skips_verified_copies(packed, tmp_path):
    dst = tmp_path / "local"
    r = stage(StageConfig(manifest=os.path.join(packed.root, "manifest.json"), to=str(dst), node=1))
    mine = sorted(s.file for s in packed.shards if s.node == 1)
    assert r.copied == len(mine) and r.skipped == 0 and r.bytes_copied > 0 and r.mb_per_s > 0
    assert sorted(p.name for p in dst.glob("*.h5")) == mine
    assert not list(dst.glob(".*.tmp.*"))  # no temporary copy left (plumbing.atomic names)
    for s in packed.shards:
        if s.node == 1:
            assert file_crc32(dst / s.file) == s.crc32
            assert verify_shard(str(dst / s.file)).ok
    r2 = stage(StageConfig(manifest=os.path.join(packed.root, "manifest.json"), to=str(dst), node=1))
    assert (r2.copied, r2.skipped) == (0, len(mine))
    # A damaged local copy is replaced.
    with open(dst / mine[0], "r+b") as f:
        f.truncate(100)
    r3 = stage(StageConfig(manifest=os.path.join(packed.root, "manifest.json"), to=str(dst), node=1))
    assert (r3.copied, r3.skipped) == (1, len(mine) - 1)
    assert load_manifest(dst / "manifest.json", check_files=False).nodes == 2


def test_stage_refuses_a_changed_source_and_a_missing_file(packed, tmp_path):
    manifest = os.path.join(packed.root, "manifest.json")
    s = next(s for s in packed.shards if s.node == 0)
    src = os.path.join(packed.root, s.file)
    with open(src, "r+b") as f:
        f.seek(s.bytes - 10)
        f.write(b"\x00" * 10 if f.read(10) != b"\x00" * 10 else b"\x01" * 10)
    with pytest.raises(
        UserError, match=rf"{s.file}: shard \d+ has SHA-256 [0-9a-f]{{64}} .* the manifest says {s.sha256}"
    ):
        stage(StageConfig(manifest=manifest, to=str(tmp_path / "local"), node=0))
    assert not list((tmp_path / "local").glob("*.h5"))
    assert [p.name for p in (tmp_path / "local").glob(".*")] == [".pixpro-stage"]  # only the marker
    os.unlink(src)
    r = subprocess.run(
        [sys.executable, "-m", "hdf5_tools.cli", "stage", manifest, "--node", "0", "--to", str(tmp_path / "l2")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"hdf5_tools stage: error: {manifest}: shard 0 lists a missing file {src}"
    r = subprocess.run(
        [sys.executable, "-m", "hdf5_tools.cli", "stage", manifest, "--to", str(tmp_path / "l3")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI"))},
    )
    assert r.returncode == 2 and "--node is required outside mpirun" in r.stderr


@pytest.mark.mpi
def test_stage_under_mpirun_elects_one_copier_per_node(packed, tmp_path, mpi_env):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed")
    dst = tmp_path / "local"
    cmd = [
        "mpirun",
        "-np",
        "3",
        sys.executable,
        "-m",
        "hdf5_tools.cli",
        "stage",
        os.path.join(packed.root, "manifest.json"),
        "--to",
        str(dst),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("stage:")]
    # One machine = one node of a 1-node job: it holds every node set, copied exactly once.
    assert lines == [lines[0]] and lines[0].startswith(f"stage: node 0 of 1: copied {len(packed.shards)} shards")
    assert sorted(p.name for p in dst.glob("*.h5")) == sorted(s.file for s in packed.shards)


def test_pack_killed_with_sigkill_resumes(tmp_path):
    src = "synth:videos=8,frames=12,size=96x64,seed=1"
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "hdf5_tools.cli",
        "pack",
        src,
        str(out),
        "--nodes",
        "2",
        "--shard-size",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("shard-*.h5")) and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.h5")}
    assert 1 <= len(finished) < 8, "the pack was expected to be killed part-way"
    for name in finished:
        assert verify_shard(str(out / name)).ok  # whatever has a final name is complete
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "packed 8 videos, 96 frames into 8 shards" in r.stdout
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished
    assert not list(out.glob(".*.partial"))
    assert all(verify_shard(str(out / s.file)).ok for s in load_manifest(out / "manifest.json").shards)


def test_an_srun_step_gives_the_node_and_must_have_one_task_per_node():
    from hdf5_tools.stage import slurm_step_node
    from plumbing.jobenv import job_environment

    step = {
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    }
    assert slurm_step_node(job_environment(step)) == (1, 2)
    assert slurm_step_node(job_environment({})) is None  # not in a step: --node or mpirun
    assert slurm_step_node(job_environment(dict(step, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="1"))) is None
    crowded = dict(step, SLURM_STEP_NUM_TASKS="4", SLURM_STEP_TASKS_PER_NODE="2(x2)", SLURM_PROCID="3")
    with pytest.raises(UserError, match=r"srun --ntasks-per-node=1 \(this step has 4 tasks on 2 nodes\)"):
        slurm_step_node(job_environment(crowded))
