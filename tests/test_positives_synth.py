"""Positives on the synthetic world against its exact ground truth (ground-truth and DIS flow).

A positive pair (i, j) is *correct* when query cell i, tracked through the world's exact
full-resolution flows (nearest-pixel look-ups, visible at every step), lands within 0.7 bin
diagonals of key cell j. Precision = correct / all positives, both directions.
"""
import numpy as np
import pytest
import torch

from flow.ops import full_flow_to_shard
from pixpro_of.data.pipeline import SampleBuilder, SampleConfig

W, H, T = 256, 128, 8


@pytest.fixture(scope="module")
def video():
    from pixpro_of.synth import render_video

    torch.set_num_threads(1)
    return render_video(3, T, size=(W, H))


def gt_track(points, fwd, valid):
    """Move points [N, 2] through exact flows [n, 2, H, W] (nearest pixel); ok = visible at each step."""
    p = points.astype(np.float64).copy()
    ok = np.ones(len(p), bool)
    for s in range(fwd.shape[0]):
        ix = np.floor(p[:, 0] + 0.5).astype(int)
        iy = np.floor(p[:, 1] + 0.5).astype(int)
        inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
        ix, iy = ix.clip(0, W - 1), iy.clip(0, H - 1)
        ok &= inside & valid[s, iy, ix]
        p = p + fwd[s][:, iy, ix].T
    return p, ok


def centres(box, flip, F=7):
    left, top, w, h = [float(x) for x in box]
    steps = (np.arange(F) + 0.5) / F
    xs = (left + w - 1 - steps * (w - 1)) if flip else (left + steps * (w - 1))
    ys = top + steps * (h - 1)
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), np.hypot((w - 1) / F, (h - 1) / F)


def clip_from(video, t, k, flows="gt", dis=None):
    fwd = torch.from_numpy(video.fwd[t:t + k - 1])
    bwd = torch.from_numpy(video.bwd[t:t + k - 1])
    if flows == "gt":
        f8, b8 = full_flow_to_shard(fwd), full_flow_to_shard(bwd)
    elif flows == "swapped":  # a deliberately wrong direction: the check must notice
        f8, b8 = full_flow_to_shard(bwd), full_flow_to_shard(fwd)
    else:
        fr = video.rgb[t:t + k]
        f8, b8 = dis(fr[:-1], fr[1:]).low, dis(fr[1:], fr[:-1]).low
    return {"frame1": video.rgb[t], "frame2": video.rgb[t + k - 1], "fwd": f8.numpy(), "bwd": b8.numpy(),
            "video": "synth", "t": t, "k": k}


def precision(video, k, flows="gt", n=30, seed=0):
    dis = None
    if flows == "dis":
        from flow.estimators import make_estimator

        dis = make_estimator("dis")
    builder = SampleBuilder(SampleConfig(image_size=64), feature_size=7)
    rng = np.random.default_rng(seed)
    good = total = 0
    for _ in range(n):
        t = int(rng.integers(0, T - k + 1))
        s = builder(clip_from(video, t, k, flows, dis), rng)
        c1, d1 = centres(s["box1"].numpy(), s["flip1"])
        c2, d2 = centres(s["box2"].numpy(), s["flip2"])
        md = max(d1, d2)
        for q, kc, pos, fl, vl in ((c1, c2, s["pos12"], video.fwd[t:t + k - 1], video.valid_fwd[t:t + k - 1]),
                                   (c2, c1, s["pos21"], video.bwd[t:t + k - 1][::-1], video.valid_bwd[t:t + k - 1][::-1])):
            true_pos, ok = gt_track(q, fl, vl)
            dist = np.linalg.norm(true_pos[:, None] - kc[None], axis=-1) / md
            I, J = np.nonzero(pos.numpy())
            total += len(I)
            good += int((ok[I] & (dist[I, J] < 0.7)).sum())
    return good / max(total, 1), total


@pytest.mark.parametrize("k,floor", [(2, 0.95), (6, 0.85)])
def test_ground_truth_flow_positives_land_on_the_same_point(video, k, floor):
    p, n = precision(video, k, "gt")
    print(f"\nGT flow (1/8, seed FB mask) k={k}: precision {p:.4f} over {n} positive pairs")
    assert n > 500
    assert p >= floor


def test_wrong_flow_direction_is_caught(video):
    p_right, _ = precision(video, 6, "gt", n=15)
    p_wrong, _ = precision(video, 6, "swapped", n=15)
    print(f"\nk=6 precision: right direction {p_right:.3f}, swapped fwd/bwd {p_wrong:.3f}")
    assert p_wrong < p_right - 0.1


def test_smooth_visible_cells_are_warped_exactly(video):
    """Away from motion boundaries the pipeline's warp equals the exact track (full-res GT flow)."""
    from pixpro_of.positives import FlowGrid, PositiveConfig, compute_positives

    rng = np.random.default_rng(1)
    k = 4
    checked = 0
    for _ in range(10):
        t = int(rng.integers(0, T - k + 1))
        box = torch.tensor([[rng.integers(0, 60), rng.integers(0, 30), 150, 90]], dtype=torch.float64)
        flip = torch.tensor([bool(rng.random() < 0.5)])
        fwd = torch.from_numpy(video.fwd[t:t + k - 1])[None]
        bwd = torch.from_numpy(video.bwd[t:t + k - 1])[None]
        out = compute_positives(box, flip, box, flip, (H, W), 7, PositiveConfig(), fwd, bwd)
        q = out["centres1"][0].numpy()
        # smooth: integer query points (no interpolation ambiguity) whose 3x3 flow neighbourhood is flat
        qi = np.floor(q + 0.5)
        true_pos, ok = gt_track(qi, video.fwd[t:t + k - 1], video.valid_fwd[t:t + k - 1])
        p = qi.copy()
        smooth = ok.copy()
        for s in range(k - 1):
            ix = np.floor(p[:, 0] + 0.5).astype(int).clip(1, W - 2)
            iy = np.floor(p[:, 1] + 0.5).astype(int).clip(1, H - 2)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    smooth &= np.abs(video.fwd[t + s][:, iy + dy, ix + dx] - video.fwd[t + s][:, iy, ix]).max(0) < 0.05
            p = p + video.fwd[t + s][:, iy, ix].T
        grid = FlowGrid(fwd, bwd, (H, W), PositiveConfig())
        moved = grid.displacement(torch.from_numpy(qi)[None])[0].numpy() + qi
        err = np.linalg.norm(moved - true_pos, axis=1)[smooth]
        checked += smooth.sum()
        assert err.max(initial=0) < 0.3, err.max()
    assert checked > 50


def test_dis_flow_precision_is_reported(video):
    p2, n2 = precision(video, 2, "dis", n=20)
    p6, n6 = precision(video, 6, "dis", n=20)
    print(f"\nDIS flow (medium, 1/8, seed FB mask): precision k=2 {p2:.4f} ({n2} pairs), k=6 {p6:.4f} ({n6} pairs)")
    assert p2 >= 0.8 and p6 >= 0.65
