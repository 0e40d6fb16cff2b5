"""``python -m pixpro_of train`` end to end on the synthetic world with the real model and pipeline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixpro_of.train.checkpoint import CheckpointStore
from pixpro_of.train.metrics_log import read_csv

QUICK = [
    "run.max_steps=6",
    "run.deterministic=true",
    "model.proj_hidden=64",
    "model.proj_dim=32",
    "data.synth.videos=8",
    "data.synth.frames=4",
    "data.batch_size=2",
    "log.tensorboard=false",
]


def train(run: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pixpro_of", "train", "--config", "cpu_small", "--run-dir", str(run), *QUICK, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def steps(run: Path):
    try:
        return [int(r["step"]) for r in read_csv(run / "metrics.csv")]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.slow
def test_cpu_preset_trains_stops_on_sigterm_to_the_job_and_resumes_exactly(tmp_path):
    ref = tmp_path / "ref"
    p = train(ref)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert (ref / "done").exists() and (ref / "data" / "manifest.json").exists()  # synthetic world packed
    assert steps(ref) == [1, 2, 3, 4, 5, 6]
    rows = read_csv(ref / "metrics.csv")
    assert float(rows[0]["positive_pair/num"]) > 0 and 0.0 <= float(rows[0]["mask_ratio"]) <= 1.0

    # The same run, given SIGTERM as a batch scheduler does: to the whole process group,
    # DataLoader workers included. It must stop at a step boundary with exit code 75.
    run = tmp_path / "run"
    shards = f"data.shards=[{ref / 'data' / 'manifest.json'}]"
    p = train(run, shards, "data.num_workers=1", start_new_session=True)
    t0 = time.time()
    while not steps(run) and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 75, err[-3000:]
    stopped = CheckpointStore(run / "checkpoints").entries()[0].step
    assert 1 <= stopped < 6 and steps(run) == list(range(1, stopped + 1))
    assert "stopping at step" in err and "signal SIGTERM" in err

    p = train(run, shards)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert f"resumed from step {stopped}" in err
    a, _ = CheckpointStore(ref / "checkpoints").load_latest()
    b, _ = CheckpointStore(run / "checkpoints").load_latest()
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert steps(run) == [1, 2, 3, 4, 5, 6]

    # Resubmitting a finished job exits 0 at once.
    t0 = time.time()
    p = train(run, shards)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "finished already" in err and time.time() - t0 < 30


def test_seed_preset_without_shards_says_so(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "train", "--config", "pixpro_k6", "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("pixpro_of train: error: data.shards is empty")


def test_cli_deadline_counts_from_the_start_and_exits_75(tmp_path):
    run = tmp_path / "run"
    t0 = time.time()
    p = train(run, "data.synth.videos=4", "data.synth.frames=3", "--deadline", "2s")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 75, err[-3000:]
    assert "deadline:" in err and not (run / "done").exists()
    import json

    saved = json.loads((run / "config.json").read_text())["stop"]["deadline"]
    assert saved.startswith("@") and t0 < float(saved[1:]) <= time.time() + 2.5  # an absolute time now
    assert CheckpointStore(run / "checkpoints").load_latest() is not None
