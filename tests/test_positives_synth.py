"""Positives on the synthetic world against its exact geometry (exact, ground-truth and DIS flow).

The truth: a query cell centre is tracked with :meth:`Renderer.track` (a ray cast through the exact
sub-pixel centre, the hit point moved and projected into the other frame, visibility tested
there). A positive pair (i, j) is *correct* when query cell i is visible in the other frame and
lands within 0.7 bin diagonals of key cell j. Precision = correct / all positives, both directions.
"""

import numpy as np
import pytest
import torch

from flow.ops import full_flow_to_shard
from pixpro_of.data.pipeline import SampleBuilder, SampleConfig

W, H, T = 256, 128, 8
SEED = 3


@pytest.fixture(scope="module")
def video():
    from synth import render_video

    torch.set_num_threads(1)
    return render_video(SEED, T, size=(W, H))


@pytest.fixture(scope="module")
def world():
    from synth import Renderer

    return Renderer(SEED, T, size=(W, H))


def gt_track(points, fwd, valid):
    """Move points [N, 2] through per-step flows [n, 2, H, W] (nearest pixel); ok = valid at each step."""
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
    fwd = torch.from_numpy(video.fwd[t : t + k - 1])
    bwd = torch.from_numpy(video.bwd[t : t + k - 1])
    if flows == "gt":
        f8, b8 = full_flow_to_shard(fwd), full_flow_to_shard(bwd)
    elif flows == "swapped":  # a deliberately wrong direction: the check must notice
        f8, b8 = full_flow_to_shard(bwd), full_flow_to_shard(fwd)
    else:
        fr = video.rgb[t : t + k]
        f8, b8 = dis(fr[:-1], fr[1:]).low, dis(fr[1:], fr[:-1]).low
    return {
        "frame1": video.rgb[t],
        "frame2": video.rgb[t + k - 1],
        "fwd": f8.numpy(),
        "bwd": b8.numpy(),
        "video": "synth",
        "t": t,
        "k": k,
    }


def samples(video, world, k, flows="gt", n=30, seed=0):
    """``n`` samples of clips of ``k`` frames: ``(t, sample, pos12, pos21)``; positives from
    ``flows``: "exact" (the world's geometry), "gt" (exact per-step flows in shard units),
    "gt-full" (exact per-step flows at full resolution), "swapped" (gt, directions exchanged), "dis"."""
    from pixpro_of.positives import PositiveConfig, compute_positives
    from synth import ExactCorrespondence

    dis = None
    if flows == "dis":
        from flow.estimators import make_estimator

        dis = make_estimator("dis")
    builder = SampleBuilder(
        SampleConfig(image_size=64), feature_size=7, carry="positives" if flows == "gt" else "flows"
    )
    rng = np.random.default_rng(seed)
    for _ in range(n):
        t = int(rng.integers(0, T - k + 1))
        s = builder(clip_from(video, t, k, "gt" if flows in ("exact", "gt-full") else flows, dis), rng)
        if flows == "gt":
            yield t, s, s["pos12"], s["pos21"]
            continue
        args = (
            s["box1"][None].double(),
            torch.tensor([s["flip1"]]),
            s["box2"][None].double(),
            torch.tensor([s["flip2"]]),
            (H, W),
            7,
            PositiveConfig(),
        )
        if flows == "exact":
            out = compute_positives(*args, correspondence=ExactCorrespondence([world], [t], [k]))
        elif flows == "gt-full":
            out = compute_positives(
                *args,
                torch.from_numpy(video.fwd[t : t + k - 1])[None],
                torch.from_numpy(video.bwd[t : t + k - 1])[None],
            )
        else:
            c = clip_from(video, t, k, flows, dis)
            out = compute_positives(*args, torch.from_numpy(c["fwd"])[None], torch.from_numpy(c["bwd"])[None])
        yield t, s, out["pos12"][0], out["pos21"][0]


def truth(world, t, k, s):
    """The correct pairs ``[49, 49]`` of both directions of sample ``s`` (clip start t, length k)."""
    c1, d1 = centres(s["box1"].numpy(), s["flip1"])
    c2, d2 = centres(s["box2"].numpy(), s["flip2"])
    md = max(d1, d2)
    out = []
    for q, kc, a, b in ((c1, c2, t, t + k - 1), (c2, c1, t + k - 1, t)):
        landed, visible = world.track(a, b, q)
        dist = np.linalg.norm(landed[:, None] - kc[None], axis=-1) / md
        out.append(visible[:, None] & (dist < 0.7))
    return out


def precision(video, world, k, flows="gt", n=30, seed=0):
    """``(precision, recall, positive pairs)`` of the positives from ``flows`` against the truth."""
    good = total = correct = 0
    for t, s, pos12, pos21 in samples(video, world, k, flows, n, seed):
        for pos, right in zip((pos12.numpy(), pos21.numpy()), truth(world, t, k, s)):
            total += int(pos.sum())
            good += int((pos & right).sum())
            correct += int(right.sum())
    return good / max(total, 1), good / max(correct, 1), total


def test_track_matches_the_ground_truth_flow_at_pixels(video, world):
    """Renderer.track at integer pixels = the rendered per-step flow and validity, for both directions."""
    rng = np.random.default_rng(0)
    pts = np.stack([rng.integers(0, W, 500), rng.integers(0, H, 500)], 1).astype(np.float64)
    ix, iy = pts[:, 0].astype(int), pts[:, 1].astype(int)
    for t in (0, 3, 6):
        landed, visible = world.track(t, t + 1, pts)
        np.testing.assert_allclose(landed - pts, video.fwd[t][:, iy, ix].T, atol=1e-3)
        np.testing.assert_array_equal(visible, video.valid_fwd[t][iy, ix])
        landed, visible = world.track(t + 1, t, pts)
        np.testing.assert_allclose(landed - pts, video.bwd[t][:, iy, ix].T, atol=1e-3)
        np.testing.assert_array_equal(visible, video.valid_bwd[t][iy, ix])
    with pytest.raises(ValueError, match="t1=8 out of range"):
        world.track(0, T, pts)


@pytest.mark.parametrize("k", [2, 6])
def test_exact_correspondences_give_exactly_the_true_positives(video, world, k):
    """With the world's exact correspondences, every positive pair lands on the same physical point
    within the 0.7-bin tolerance (precision 1.0) and no true pair is missed (recall 1.0): crop boxes,
    flips, cell centres, bin diagonals, directions and the matrices' layout are all exact."""
    p, r, n = precision(video, world, k, "exact")
    print(f"\nexact correspondences k={k}: precision {p:.4f}, recall {r:.4f} over {n} positive pairs")
    assert n > 500
    assert p == 1.0 and r == 1.0


@pytest.mark.parametrize("k,floor", [(2, 0.95), (6, 0.88)])
def test_ground_truth_flow_positives_land_on_the_same_point(video, world, k, floor):
    """The seed's path on exact per-step flows: stored at 1/8 (shard units), chained, FB-masked.
    Not 1.0: the 1/8 grid and bilinear chaining blur motion boundaries, and the FB mask passes some
    points that an occluder moving almost like them hides (measured and reported, floors guard)."""
    p, r, n = precision(video, world, k, "gt")
    pf, rf, nf = precision(video, world, k, "gt-full")
    print(
        f"\nGT flow k={k}: 1/8 shard flows precision {p:.4f} recall {r:.4f} ({n} pairs); "
        f"full-resolution flows precision {pf:.4f} recall {rf:.4f} ({nf} pairs)"
    )
    assert n > 500 and nf > 500
    assert p >= floor and pf >= floor


def test_wrong_flow_direction_is_caught(video, world):
    p_right, _, _ = precision(video, world, 6, "gt", n=15)
    p_wrong, _, _ = precision(video, world, 6, "swapped", n=15)
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
        fwd = torch.from_numpy(video.fwd[t : t + k - 1])[None]
        bwd = torch.from_numpy(video.bwd[t : t + k - 1])[None]
        out = compute_positives(box, flip, box, flip, (H, W), 7, PositiveConfig(), fwd, bwd)
        q = out["centres1"][0].numpy()
        # smooth: integer query points (no interpolation ambiguity) whose 3x3 flow neighbourhood is flat
        qi = np.floor(q + 0.5)
        true_pos, ok = gt_track(qi, video.fwd[t : t + k - 1], video.valid_fwd[t : t + k - 1])
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


def test_dis_flow_precision_is_reported(video, world):
    p2, r2, n2 = precision(video, world, 2, "dis", n=20)
    p6, r6, n6 = precision(video, world, 6, "dis", n=20)
    print(
        f"\nDIS flow (medium, 1/8, seed FB mask): k=2 precision {p2:.4f} recall {r2:.4f} ({n2} pairs), "
        f"k=6 precision {p6:.4f} recall {r6:.4f} ({n6} pairs)"
    )
    assert p2 >= 0.8 and p6 >= 0.65
