"""Flow on the fly (data.flow_source=raft): frame pairs, directions, positives and the trainer path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pixpro_of.data.online_flow import ClipFlow, positives_on_the_fly
from pixpro_of.data.pipeline import SampleBuilder, SampleConfig, collate
from pixpro_of.train.metrics_log import read_csv

W, H, T = 160, 128, 5


@pytest.fixture(scope="module")
def video():
    from synth import render_video

    return render_video(5, T, size=(W, H))


@pytest.fixture(scope="module")
def dis():
    from flow.estimators import make_estimator

    return make_estimator("dis", dis_preset="fast")


def test_clip_flow_runs_every_adjacent_pair_both_ways_in_time_order(video, dis):
    frames = torch.from_numpy(np.stack([video.rgb[0:3], video.rgb[2:5]]))  # [B=2, k=3, H, W, 3]
    fwd, bwd = ClipFlow(dis, chunk=3)(frames)
    assert fwd.shape == bwd.shape == (2, 2, 2, H // 8, W // 8)
    for b, t in ((0, 0), (1, 2)):
        for j in range(2):
            want_f = dis(video.rgb[t + j][None], video.rgb[t + j + 1][None]).low[0]
            want_b = dis(video.rgb[t + j + 1][None], video.rgb[t + j][None]).low[0]
            assert torch.equal(fwd[b, j], want_f), (b, j)
            assert torch.equal(bwd[b, j], want_b), (b, j)
    f1, b1 = ClipFlow(dis, chunk=1)(frames)  # chunking does not change the pairs
    assert torch.equal(f1, fwd) and torch.equal(b1, bwd)
    # A direction mix-up would show: forward and backward flows of a moving scene differ.
    assert not torch.allclose(fwd, bwd, atol=0.1)


def test_clip_flow_rejects_bad_frames(dis):
    with pytest.raises(ValueError, match=r"uint8 \[B, k, H, W, 3\]"):
        ClipFlow(dis)(torch.zeros(2, 3, H, W, 3))
    with pytest.raises(ValueError, match="at least 2 frames"):
        ClipFlow(dis)(torch.zeros(2, 1, H, W, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="chunk"):
        ClipFlow(dis, chunk=0)


@pytest.mark.parametrize("k", [2, 4])
def test_positives_on_the_fly_equal_those_of_stored_flows(video, dis, k):
    """Same clips, same RNG: positives computed per batch from flow estimated on the fly equal the
    worker-side positives of clips that carry the same flows (the precomputed path)."""
    stored = SampleBuilder(SampleConfig(image_size=64), feature_size=7)
    deferred = SampleBuilder(SampleConfig(image_size=64), feature_size=7, carry="frames")
    ref, later = [], []
    for i, t in enumerate(range(T - k + 1)):
        frames = video.rgb[t : t + k]
        fwd = dis(frames[:-1], frames[1:]).low.numpy()
        bwd = dis(frames[1:], frames[:-1]).low.numpy()
        clip = {"frame1": frames[0], "frame2": frames[-1], "fwd": fwd, "bwd": bwd, "video": "v", "t": t, "k": k}
        ref.append(stored(clip, np.random.default_rng(i)))
        later.append(deferred(dict(clip, fwd=None, bwd=None, frames=frames), np.random.default_rng(i)))
    batch = collate(later)
    assert batch.frames.shape == (len(later), k, H, W, 3) and batch.frames.dtype == torch.uint8
    assert batch.pos12 is None and batch.fwd is None
    pos = positives_on_the_fly(batch, ClipFlow(dis, chunk=5), SampleConfig(image_size=64), 7)
    want = collate(ref)
    assert torch.equal(pos["pos12"], want.pos12) and torch.equal(pos["pos21"], want.pos21)
    assert int(want.pos12.sum()) > 0
    np.testing.assert_allclose(pos["mask_ratio"].numpy(), want.mask_ratio.numpy(), atol=1e-6)
    for key in ("view1", "view2", "box1", "box2"):
        assert torch.equal(getattr(batch, key), getattr(want, key))


def test_reader_gives_every_frame_and_skips_flows(tmp_path):
    from hdf5_tools.manifest import shards_for_node
    from hdf5_tools.pack import PackConfig, pack
    from pixpro_of.data.shards import ShardClipDataset

    pack(PackConfig(src="synth:videos=2,frames=5,size=64x32,seed=1", out=str(tmp_path), nodes=1, progress=False))
    paths = shards_for_node(str(tmp_path / "manifest.json"), 0, 1)
    both = ShardClipDataset(paths, 3)[(1, 1)]
    clip = ShardClipDataset(paths, 3, all_frames=True, flows=False)[(1, 1)]
    assert clip["frames"].shape == (3, 32, 64, 3) and clip["fwd"] is None and clip["bwd"] is None
    assert np.array_equal(clip["frames"][0], both["frame1"]) and np.array_equal(clip["frames"][2], both["frame2"])
    assert not np.array_equal(clip["frames"][1], both["frame1"])


QUICK = [
    "run.max_steps=2",
    "run.deterministic=true",
    "model.proj_hidden=64",
    "model.proj_dim=32",
    "data.synth.videos=4",
    "data.synth.frames=4",
    f"data.synth.width={W}",
    f"data.synth.height={H}",
    "data.batch_size=2",
    "data.k=3",
    "data.num_workers=0",
    "log.tensorboard=false",
]


def train(run: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pixpro_of", "train", "--config", "cpu_small", "--run-dir", str(run), *QUICK, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def final_model(run: Path) -> dict:
    from pixpro_of.train.checkpoint import CheckpointStore

    state, _ = CheckpointStore(run / "checkpoints").load_latest()
    return state["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    ma, mb = final_model(a), final_model(b)
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key


@pytest.mark.slow
def test_positives_on_the_device_train_the_same_weights(tmp_path):
    """data.positives_on=device (stored flows passed to the trainer, positives per batch) trains
    bit-identical weights to the worker-side positives on CPU."""
    assert train(tmp_path / "worker", "data.num_workers=1").returncode == 0
    p = train(tmp_path / "device", "data.positives_on=device", "data.num_workers=1")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_csv(tmp_path / "device" / "metrics.csv")
    assert all(float(r["time/positives"]) > 0 for r in rows)
    ref = read_csv(tmp_path / "worker" / "metrics.csv")
    assert [r["positive_pair/num"] for r in rows] == [r["positive_pair/num"] for r in ref]
    assert [r["mask_ratio"] for r in rows] == [r["mask_ratio"] for r in ref]
    assert_same_weights(tmp_path / "worker", tmp_path / "device")


@pytest.mark.slow
def test_trainer_estimates_raft_flow_on_the_fly_and_resumes_exactly(tmp_path):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = tmp_path / "raft-small.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)  # a real checkpoint file (random weights)
    raft = (
        "data.flow_source=raft",
        f"data.raft_weights={weights}",
        "data.raft_iters=2",
        "data.raft_chunk=3",
        "run.max_steps=3",
    )
    run = tmp_path / "run"
    p = train(run, *raft)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for r in rows:
        assert float(r["time/positives"]) > 0
        assert 0.0 <= float(r["mask_ratio"]) <= 1.0
        assert np.isfinite(float(r["loss"]))

    # Exact resume holds with flow on the fly: stopped by SIGTERM after the first step, resumed.
    split = tmp_path / "split"
    cmd = [sys.executable, "-m", "pixpro_of", "train", "--config", "cpu_small", "--run-dir", str(split), *QUICK, *raft]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 300:
        try:
            if read_csv(split / "metrics.csv"):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    p = train(split, *raft)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_weights(run, split)

    p = train(tmp_path / "bad", "data.flow_source=raft", f"data.raft_weights={tmp_path / 'missing.pth'}")
    assert p.returncode == 2
    assert "data.raft_weights" in p.stderr and "missing.pth" in p.stderr and "Traceback" not in p.stderr
    p = train(tmp_path / "none", "data.flow_source=raft")
    assert p.returncode == 2 and "data.raft_weights must name a RAFT checkpoint" in p.stderr
