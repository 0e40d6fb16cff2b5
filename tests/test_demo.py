"""`make demo` end to end (issue 9): synth -> pack -> DIS flow -> launcher (2 ranks, Horovod) -> convert -> probe."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.mpi
def test_demo_runs_end_to_end(tmp_path, mpi_env):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "demo", "--out", str(out), "--epochs", "4", "--probe-iters", "30"],
        capture_output=True,
        text=True,
        env=mpi_env,
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = out / "run"
    assert (run / "done").exists()
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert (run / "checkpoints" / latest).exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["k"] == 6 and cfg["dist"]["backend"] == "horovod"
    assert "2 ranks" in (run / "logs" / "run.log").read_text() or "rank(s)" in (run / "logs" / "train.log").read_text()
    with open(out / "encoder_d2.pkl", "rb") as f:
        d2 = pickle.load(f)
    assert d2["__author__"] == "PixPro" and "stem.conv1.weight" in d2["model"]
    assert (out / "encoder_tv.pth").stat().st_size > 1_000_000
    for name in ("pretrained", "random"):
        scores = json.loads((out / "eval" / name / "scores.json").read_text())
        assert 0.0 <= scores["mIoU"] <= 100.0
        assert (out / "eval" / name / "predictions.png").exists()
    assert (out / "pictures" / "positive_pairs.png").exists()
    assert (out / "pictures" / "flow" / "panel.png").exists()
    summary = (out / "summary.md").read_text()
    assert "linear-probe mIoU" in summary and "random init" in summary
    # a second run replaces its own previous output ...
    assert (out / ".pixpro_demo").exists()


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    res = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    assert "exists and is not a previous demo output" in res.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
