"""The synthetic world's ground truth: flow, occlusion, labels, depth and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from plumbing.errors import UserError
from synth import LABEL_IDS, SKY_DEPTH, Renderer, render_video

W, H, T = 256, 144, 6


@pytest.fixture(scope="module")
def video():
    return render_video(3, T, (W, H))


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample img [H, W, C] at float positions (align_corners: pixel centres at integers)."""
    h, w = img.shape[:2]
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    return (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x0 + 1] * fx * (1 - fy)
        + img[y0 + 1, x0] * (1 - fx) * fy
        + img[y0 + 1, x0 + 1] * fx * fy
    )


def same_surface_cell(depth: np.ndarray, labels: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where the 2x2 pixel cell around (x, y) lies on one surface (same label, depth within 5 %),
    i.e. where bilinear interpolation does not mix two objects."""
    h, w = depth.shape
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    d = np.stack([depth[y0 + a, x0 + b] for a in (0, 1) for b in (0, 1)])
    lab = np.stack([labels[y0 + a, x0 + b] for a in (0, 1) for b in (0, 1)])
    return (d.max(0) < d.min(0) * 1.05) & (lab == lab[0]).all(0)


def test_shapes_dtypes_and_units(video):
    assert video.rgb.shape == (T, H, W, 3) and video.rgb.dtype == np.uint8
    assert video.depth.shape == (T, H, W) and video.depth.dtype == np.float32
    assert video.labels.shape == (T, H, W) and video.labels.dtype == np.uint8
    for name in ("fwd", "bwd"):
        arr = getattr(video, name)
        assert arr.shape == (T - 1, 2, H, W) and arr.dtype == np.float32
        assert np.isfinite(arr).all()
    for name in ("valid_fwd", "valid_bwd"):
        arr = getattr(video, name)
        assert arr.shape == (T - 1, H, W) and arr.dtype == bool
    sky = video.labels == 23
    assert np.all(video.depth[sky] == SKY_DEPTH)
    assert np.all((video.depth[~sky] > 0.05) & (video.depth[~sky] < SKY_DEPTH))
    # The camera looks down the road: the bottom-centre pixel is road close by, the top-centre one is far.
    assert np.all(video.labels[:, -1, W // 2] == 7)
    assert np.all(video.depth[:, -1, W // 2] < 6.0)
    assert np.all(video.depth[:, 0, W // 2] > 20.0)


def test_labels_are_cityscapes_ids_and_all_classes_occur():
    seen = set()
    for seed in (0, 1, 2):
        v = render_video(seed, 3, (192, 108))
        ids = set(np.unique(v.labels).tolist())
        assert ids <= set(LABEL_IDS), ids - set(LABEL_IDS)
        seen |= ids
    assert seen == set(LABEL_IDS)  # road, sidewalk, building, pole, vegetation, sky, car


def test_road_depth_matches_ground_plane(video):
    """Depth of road pixels is the ray/ground intersection: z-depth grows towards the horizon row."""
    rows = np.arange(H // 2 + 10, H)
    col = video.depth[0, rows, W // 2]
    assert np.all(np.diff(col) < 0)  # lower rows are nearer
    # Flat ground: 1 / depth is linear in the image row (for zero roll).
    inv = 1.0 / col
    fit = np.polyval(np.polyfit(rows, inv, 1), rows)
    assert np.max(np.abs(fit - inv) / inv) < 1e-3


def test_warping_next_frame_with_forward_flow_reproduces_frame(video):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    covered = []
    for t in range(T - 1):
        x2, y2 = xx + video.fwd[t, 0], yy + video.fwd[t, 1]
        textured = video.labels[t] != 23  # everything but the smooth sky
        mask = video.valid_fwd[t] & textured & same_surface_cell(video.depth[t + 1], video.labels[t + 1], x2, y2)
        warped = bilinear(video.rgb[t + 1].astype(np.float32), x2, y2)
        err = np.abs(warped - video.rgb[t]).mean(-1)
        assert err[mask].mean() < 3.0, (t, err[mask].mean())
        # The check has teeth: without the flow the frames differ much more on the same pixels.
        still = np.abs(video.rgb[t + 1].astype(np.float32) - video.rgb[t]).mean(-1)[mask].mean()
        assert still > 3.0 and still > 4 * err[mask].mean(), (t, still, err[mask].mean())
        covered.append(mask.mean())
    assert min(covered) > 0.3


def test_forward_and_backward_flow_cancel(video):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for t in range(T - 1):
        x2, y2 = xx + video.fwd[t, 0], yy + video.fwd[t, 1]
        mask = video.valid_fwd[t] & same_surface_cell(video.depth[t + 1], video.labels[t + 1], x2, y2)
        back = bilinear(video.bwd[t].transpose(1, 2, 0), x2, y2)
        resid = np.abs(video.fwd[t].transpose(1, 2, 0) + back).max(-1)[mask]
        assert resid.mean() < 0.01 and np.percentile(resid, 99) < 0.01, (t, resid.mean(), np.percentile(resid, 99))
        assert mask.mean() > 0.3
        # Flows are not trivially zero.
        assert np.abs(video.fwd[t]).max() > 5


def test_validity_marks_out_of_frame_and_occluded_points(video):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    occluded_err, valid_err, n_occluded = [], [], 0
    for t in range(T - 1):
        x2, y2 = xx + video.fwd[t, 0], yy + video.fwd[t, 1]
        outside = (x2 < 0) | (x2 > W - 1) | (y2 < 0) | (y2 > H - 1)
        assert not np.any(video.valid_fwd[t] & outside)
        xb, yb = xx + video.bwd[t, 0], yy + video.bwd[t, 1]
        outside_b = (xb < 0) | (xb > W - 1) | (yb < 0) | (yb > H - 1)
        assert not np.any(video.valid_bwd[t] & outside_b)
        # In-frame points marked invalid are hidden in the next frame: the next frame shows something
        # else there, so the photometric error is much larger than on valid pixels.
        occ = ~video.valid_fwd[t] & ~outside
        n_occluded += occ.sum()
        err = np.abs(bilinear(video.rgb[t + 1].astype(np.float32), x2, y2) - video.rgb[t]).mean(-1)
        occluded_err.append(err[occ])
        valid_err.append(err[video.valid_fwd[t]])
    assert n_occluded > 20
    assert np.concatenate(occluded_err).mean() > 4 * np.concatenate(valid_err).mean()


def test_forward_driving_expands_the_view(video):
    """Going forward, points flow outwards (the focus of expansion is inside the frame) and some
    points of frame t leave the view while nearly all of frame t+1 was already visible in frame t."""
    assert video.valid_fwd.mean() < video.valid_bwd.mean()
    road_left = (video.labels[0] == 7) & (np.arange(W) < W // 4)[None, :]
    road_right = (video.labels[0] == 7) & (np.arange(W) > 3 * W // 4)[None, :]
    assert video.fwd[0, 0][road_left].mean() < 0 < video.fwd[0, 0][road_right].mean()
    assert video.fwd[0, 1][video.labels[0] == 7].mean() > 0  # road moves down


def test_same_seed_same_video_and_different_seed_differs(video):
    again = render_video(3, T, (W, H))
    for name in ("rgb", "depth", "labels", "fwd", "bwd", "valid_fwd", "valid_bwd"):
        assert np.array_equal(getattr(video, name), getattr(again, name)), name
    other = render_video(4, 2, (W, H))
    assert not np.array_equal(other.rgb[0], video.rgb[0])


def test_streaming_renderer_matches_render_video(video):
    frames = list(Renderer(3, T, (W, H)).frames())
    assert [f.t for f in frames] == list(range(T)) and frames[0].fwd is None
    assert np.array_equal(frames[2].rgb, video.rgb[2]) and np.array_equal(frames[2].labels, video.labels[2])
    assert np.array_equal(frames[2].fwd, video.fwd[1]) and np.array_equal(frames[2].valid_bwd, video.valid_bwd[1])


def test_single_frame_video_has_no_flow():
    v = render_video(0, 1, (64, 48))
    assert v.rgb.shape == (1, 48, 64, 3) and v.fwd.shape == (0, 2, 48, 64) and v.valid_bwd.shape == (0, 48, 64)


def test_bdd_resolution_renders():
    v = render_video(5, 2, (1280, 720))
    assert v.rgb.shape == (2, 720, 1280, 3) and v.fwd.shape == (1, 2, 720, 1280)
    assert v.valid_fwd.mean() > 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=-1, frames=2, size=(64, 48)), "seed"),
        (dict(seed=0, frames=0, size=(64, 48)), "frames"),
        (dict(seed=0, frames=2, size=(0, 0)), "size 0x0"),
        (dict(seed=0, frames=2, size=(4000, 48)), "size 4000x48"),
        (dict(seed=0, frames=2, size=(64, 48), fps=0.0), "fps"),
    ],
)
def test_bad_arguments_raise_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        render_video(**kwargs)


def test_size_changes_only_the_resolution():
    small, big = Renderer(9, 4, (128, 72)), Renderer(9, 4, (320, 180))
    assert np.array_equal(small.scene.box_lo, big.scene.box_lo) and np.array_equal(small.scene.cyl_y, big.scene.cyl_y)
    for t in range(4):
        a, b = small.camera(t), big.camera(t)
        assert np.array_equal(a.pos, b.pos) and np.array_equal(a.rot, b.rot) and b.f == 2.5 * a.f


def test_renderer_without_flow_gives_the_same_frames(video):
    frames = list(Renderer(3, 3, (W, H), flow=False).frames())
    assert all(f.fwd is None and f.valid_bwd is None for f in frames)
    ref = render_video(3, 3, (W, H))
    assert np.array_equal(frames[2].rgb, ref.rgb[2]) and np.array_equal(frames[2].depth, ref.depth[2])
