"""Fail fast (issue 14): a fault injected into a running training job ends the whole job within
30 s, non-zero, with one line naming the shard, video and frame (or the rank and what it was
doing), no traceback and no process left behind: 1 rank and ``mpirun -np 2`` (Horovod, DDP).

The job is the real ``pixpro_of train`` command (reader, pipeline, DataLoader with one worker,
trainer, backends) with a tiny model double, on the synthetic world's shards
(tests/test_faults_support.py); each fault is injected once step 2 is logged.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest
import test_faults_support as fs

SHARD = r"shard-n000-00000\.h5"
EXPECTED = {
    "jpeg": rf"^{SHARD}: video 'synth-\d{{5}}' frame \d+: JPEG bytes fail their CRC32 \((rank \d, )?epoch \d+, "
    rf"batch \d+; data\.on_bad_sample=skip would skip it\)$",
    "flow": rf"^{SHARD}: video 'synth-\d{{5}}' flow_fwd pair \d+ fails its CRC32 \((rank \d, )?epoch \d+, batch \d+; "
    rf"data\.on_bad_sample=skip would skip it\)$",
    "truncate": rf"^/\S+/{SHARD}: (shard changed size from \d+ to \d+ bytes while training read it \(truncated or "
    rf"rewritten\)|cannot open shard \(truncated or not HDF5: .*\)) \((rank \d, )?epoch \d+, batch \d+\)$",
    "delete": rf"^/\S+/{SHARD}: (shard not found|shard was deleted while training read it) \((rank \d, )?epoch \d+, "
    rf"batch \d+\)$",
    "worker": r"^(rank \d: )?DataLoader worker \(pid \d+\) was killed by SIGKILL \(the OOM killer\?; lower "
    r"data\.num_workers or data\.prefetch_factor\) (while|\(found) .+$",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The packed shards, copied afresh for each test (faults damage them)."""
    return fs.make_shards(tmp_path_factory.mktemp("pristine") / "data").parent


def _inject(fault, shard):
    return {
        "jpeg": lambda token: fs.corrupt_jpegs(shard),
        "flow": lambda token: fs.corrupt_flows(shard),
        "truncate": lambda token: fs.truncate(shard),
        "delete": lambda token: fs.delete(shard),
        "worker": fs.kill_worker,
    }[fault]


def _run(pristine, tmp_path, fault, ranks=1, backend="horovod"):
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    run = tmp_path / "run"
    r = fs.run_with_fault(
        fs.train_cmd(run, data / "manifest.json", ranks, backend),
        run,
        _inject(fault, fs.shard_of(data / "manifest.json")),
    )
    return r


def _check(r, fault):
    out = r["output"]
    lines = fs.error_lines(out)
    assert r["rc"] == 2, out[-3000:]
    assert len(lines) == 1, out[-3000:]
    assert re.match(EXPECTED[fault], lines[0][len(fs.ERROR_LINE) :]), lines[0]
    assert "Traceback" not in out and "Error:" not in out.replace(lines[0], ""), out[-3000:]
    assert r["t_exit"] - r["t_inject"] <= 30.0
    if r["first_bad_read"] is not None:
        assert r["t_exit"] - r["first_bad_read"] <= 30.0
    assert r["left"] == [], "processes left behind"


@pytest.mark.parametrize("fault", ["jpeg", "flow", "truncate", "delete", "worker"])
def test_a_fault_ends_a_one_rank_job_with_one_line(fault, pristine, tmp_path):
    r = _run(pristine, tmp_path, fault)
    _check(r, fault)
    log = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "failed: " in log  # the log file tells the story too


def test_kill9_of_the_trainer_leaves_no_worker_and_no_traceback(pristine, tmp_path):
    """The trainer killed as the OOM killer or a scheduler would: its DataLoader worker dies with
    it (no orphan polling a dead parent, no ConnectionResetError traceback)."""

    def kill_trainer(token):
        # The loader may be between epochs when step 2 is logged (its iterator is read one batch
        # ahead): wait for the next epoch's workers.
        end = time.time() + 30
        while not fs.loader_workers(token) and time.time() < end:
            time.sleep(0.02)
        workers = set(fs.loader_workers(token))
        assert workers, "no DataLoader worker to orphan"
        main = [p for p in fs.job_processes(token) if p not in workers]
        for pid in main:
            os.kill(pid, signal.SIGKILL)

    shutil.copytree(pristine, tmp_path / "data")
    run = tmp_path / "run"
    r = fs.run_with_fault(fs.train_cmd(run, tmp_path / "data" / "manifest.json"), run, kill_trainer)
    assert r["rc"] == -signal.SIGKILL
    assert r["left"] == []
    assert "Traceback" not in r["output"] and "ConnectionResetError" not in r["output"], r["output"][-3000:]


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["horovod", "ddp"])
@pytest.mark.parametrize("fault", ["jpeg", "worker"])
def test_a_fault_ends_a_two_rank_job_with_one_line(fault, backend, pristine, tmp_path):
    r = _run(pristine, tmp_path, fault, ranks=2, backend=backend)
    _check(r, fault)
