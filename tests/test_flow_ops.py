"""flow.ops: chaining, FB consistency masks, sampling, warping and resizing on analytic flows."""

import math

import numpy as np
import pytest
import torch

from flow.ops import (
    chain_backward,
    chain_flows,
    endpoint_error,
    fb_consistency,
    full_flow_to_shard,
    in_frame,
    pixel_grid,
    resize_flow,
    sample_at,
    shard_flow_to_full,
    upsample_flow,
    warp_image,
)


def affine_flow(A, t, h, w):
    """Flow of the map x -> A x + t on an h x w grid: (A - I) x + t, as [1, 2, h, w] float64."""
    g = pixel_grid(h, w, dtype=torch.float64)
    A = torch.tensor(A, dtype=torch.float64)
    t = torch.tensor(t, dtype=torch.float64).view(2, 1, 1)
    mapped = torch.einsum("ij,jhw->ihw", A, g) + t
    return (mapped - g).unsqueeze(0)


def test_chain_of_two_affine_flows_equals_analytic_composite():
    h, w = 48, 64
    A1, t1 = [[1.02, 0.03], [-0.02, 0.98]], [1.5, -0.75]
    A2, t2 = [[0.97, -0.04], [0.01, 1.03]], [-2.25, 1.0]
    f1, f2 = affine_flow(A1, t1, h, w), affine_flow(A2, t2, h, w)
    comp = chain_flows(torch.stack([f1, f2], dim=1))
    A = np.array(A2) @ np.array(A1)
    t = np.array(A2) @ np.array(t1) + np.array(t2)
    expected = affine_flow(A.tolist(), t.tolist(), h, w)
    # Bilinear interpolation of an affine field is exact where the intermediate point is inside the frame.
    mid = pixel_grid(h, w, dtype=torch.float64) + f1[0]
    inside = (mid[0] >= 0) & (mid[0] <= w - 1) & (mid[1] >= 0) & (mid[1] <= h - 1)
    assert inside.float().mean() > 0.8
    err = (comp[0] - expected[0]).abs().amax(0)
    assert err[inside].max() < 1e-9
    # And outside it the composite differs (zero padding: the point stops moving), so the test can see it.
    assert err[~inside].max() > 0.1


def test_chain_translations_add_and_points_leaving_the_frame_stop():
    h, w = 20, 30
    f = torch.zeros(2, 3, 2, h, w)
    f[:, :, 0] = 1.5
    f[:, :, 1] = -0.5
    c = chain_flows(f)
    assert c.shape == (2, 2, h, w)
    assert torch.allclose(c[:, :, 10, 10], torch.tensor([4.5, -1.5]).expand(2, 2))
    # x = 29 moves to 30.5 (outside) after the first step, then reads zero flow.
    assert torch.allclose(c[0, :, 10, 29], torch.tensor([1.5, -0.5]))
    # x = 28 -> 29.5, where the lookup gets half the last column's flow (zero padding) -> 30.25, outside: stays.
    assert torch.allclose(c[0, 0, 10, 28], torch.tensor(1.5 + 1.5 * 0.5 + 0.0))


def test_chain_single_flow_is_identity_and_backward_chain_uses_reverse_order():
    f = torch.randn(1, 1, 2, 8, 9)
    assert torch.equal(chain_flows(f), f[:, 0])
    h, w = 16, 16
    bwd = torch.zeros(1, 2, 2, h, w)
    bwd[:, 0, 0] = -1.0  # bwd[0]: frame 1 -> 0
    bwd[:, 1, 1] = -2.0  # bwd[1]: frame 2 -> 1
    out = chain_backward(bwd)
    assert torch.allclose(out[0, :, 8, 8], torch.tensor([-1.0, -2.0]))
    # Applying bwd[1] first then bwd[0] differs from the other order only where points leave the
    # frame; check at the first row, where a y step of -2 leaves the frame before the x step.
    assert torch.allclose(out[0, :, 0, 8], torch.tensor([0.0, -2.0]))


def moving_square(h=64, w=64, d=6, top=20, left=10, size=16):
    """Static background; a square moves d px right. Returns fwd, bwd, gt valid masks (fwd, bwd)."""
    fwd = torch.zeros(1, 2, h, w)
    bwd = torch.zeros(1, 2, h, w)
    sq1 = torch.zeros(h, w, dtype=torch.bool)
    sq1[top : top + size, left : left + size] = True
    sq2 = torch.zeros(h, w, dtype=torch.bool)
    sq2[top : top + size, left + d : left + d + size] = True
    fwd[0, 0][sq1] = d
    bwd[0, 0][sq2] = -d
    # Frame-1 pixel is visible in frame 2 unless it is background covered by the square in frame 2.
    valid_fwd = ~(sq2 & ~sq1)
    valid_bwd = ~(sq1 & ~sq2)  # background uncovered in frame 2 was hidden in frame 1
    return fwd, bwd, valid_fwd, valid_bwd


@pytest.mark.parametrize("mode", ["seed", "unflow"])
def test_fb_mask_exact_on_ground_truth_occlusions(mode):
    fwd, bwd, gt_f, gt_b = moving_square()
    m_f = fb_consistency(fwd, bwd, mode)
    m_b = fb_consistency(bwd, fwd, mode)
    assert m_f.shape == (1, 64, 64) and m_f.dtype == torch.bool
    border = torch.zeros(64, 64, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    if mode == "unflow":
        assert torch.equal(m_f[0], gt_f)
        assert torch.equal(m_b[0], gt_b)
    else:
        # The seed rejects targets exactly on the border row/column (|x_n| < 1 is strict); elsewhere exact.
        assert torch.equal(m_f[0][~border], gt_f[~border])
        assert torch.equal(m_b[0][~border], gt_b[~border])
        assert not m_f[0][border].any()


@pytest.mark.parametrize("mode", ["seed", "unflow"])
def test_fb_mask_out_of_frame_targets_always_invalid(mode):
    h, w = 24, 40
    fwd = torch.zeros(1, 2, h, w)
    fwd[:, 0] = 5.0
    fwd[:, 1] = -3.0
    bwd = -fwd  # perfectly consistent, so only the frame test can reject
    m = fb_consistency(fwd, bwd, mode, alpha1=10.0, alpha2=1e6)
    target_inside = in_frame(fwd)[0]
    assert (~target_inside).sum() > 0
    assert not m[0][~target_inside].any()
    assert m[0][target_inside].float().mean() > 0.9


def test_seed_mode_threshold_matches_documented_arithmetic():
    # docs/original-system.md 2.6: at 720x1280, static points allow ~11.8 px cycle error in x and ~6.6 px in y.
    h, w = 720, 1280
    allowed_x = (w - 1) / 2 * math.sqrt(0.5 / math.hypot(h, w))
    allowed_y = (h - 1) / 2 * math.sqrt(0.5 / math.hypot(h, w))
    assert 11.5 < allowed_x < 12.0 and 6.4 < allowed_y < 6.8
    fwd = torch.zeros(1, 2, h, w)
    # With b = e and f = 0 the alpha1 term adds 0.01 e^2: e^2 (1 - 0.01) <= alpha2 / diagonal.
    for axis, allowed in ((0, allowed_x / math.sqrt(0.99)), (1, allowed_y / math.sqrt(0.99))):
        for e, ok in ((allowed - 0.05, True), (allowed + 0.05, False)):
            bwd = torch.zeros(1, 2, h, w)
            bwd[:, axis] = e
            m = fb_consistency(fwd, bwd, "seed")
            assert bool(m[0, 360, 640]) is ok, (axis, e)


def test_unflow_mode_threshold_and_resolution_scaling():
    h, w = 40, 60
    fwd = torch.zeros(1, 2, h, w)
    for e, ok in ((0.70, True), (0.72, False)):  # 0.99 |cycle|^2 < 0.5 px^2
        bwd = torch.zeros(1, 2, h, w)
        bwd[:, 0] = e
        assert bool(fb_consistency(fwd, bwd, "unflow")[0, 20, 30]) is ok
    # alpha2 given at twice this resolution -> 0.5 / 4 = 0.125 px^2 here (e < 0.3553).
    for e, ok in ((0.35, True), (0.36, False)):
        bwd = torch.zeros(1, 2, h, w)
        bwd[:, 1] = e
        assert bool(fb_consistency(fwd, bwd, "unflow", alpha2_size=(2 * h, 2 * w))[0, 20, 30]) is ok
    # alpha1 term: |f + b|^2 < 0.01 (|f|^2 + |b|^2) + 0.5 with |f| = 20 and a 1.2 px cycle error.
    fwd[:, 0] = 20.0
    bwd = torch.zeros(1, 2, h, w)
    bwd[:, 0] = -20.0 + 1.2  # 1.44 < 0.01 * (400 + 353.44) + 0.5 = 8.03
    m = fb_consistency(fwd, bwd, "unflow")
    assert bool(m[0, 20, 10])
    assert not bool(fb_consistency(fwd, bwd, "unflow", alpha1=0.0)[0, 20, 10])


def test_fb_mask_rejects_bad_mode_and_shapes():
    f = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="mode should be 'seed' or 'unflow'"):
        fb_consistency(f, f, "nope")
    with pytest.raises(ValueError, match="same shape"):
        fb_consistency(f, torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match=r"should have shape \[\.\.\., 2, H, W\]"):
        fb_consistency(torch.zeros(1, 3, 8, 8), f)


def test_sample_at_bilinear_and_zero_outside():
    field = torch.arange(12.0).view(1, 1, 3, 4).repeat(2, 2, 1, 1)
    field[1] *= -1
    pts = torch.tensor([[[0.5, 0.5], [3.0, 2.0], [4.0, 1.0], [-1.0, 0.0]]]).repeat(2, 1, 1)
    out = sample_at(field, pts)
    assert out.shape == (2, 4, 2)
    assert torch.allclose(out[0, :, 0], torch.tensor([2.5, 11.0, 0.0, 0.0]))
    assert torch.allclose(out[1, :, 1], -torch.tensor([2.5, 11.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"points should have shape \[B, N, 2\]"):
        sample_at(field, torch.zeros(2, 4, 3))


def test_warp_image_backward_warp_of_translation():
    rng = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 20, 30, generator=rng)
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0] = 2.0
    flow[:, 1] = 1.0
    out = warp_image(img, flow)
    assert torch.allclose(out[:, :, :-1, :-2], img[:, :, 1:, 2:], atol=1e-6)
    assert out[:, :, -1, :].abs().max() < 1e-5 and out[:, :, :, -2:].abs().max() < 1e-5
    u8 = (img * 255).to(torch.uint8)
    assert warp_image(u8, torch.zeros(1, 2, 20, 30)).dtype == torch.float32


def test_upsample_and_resize_scale_values_per_axis():
    low = torch.zeros(3, 2, 90 // 10, 160 // 10)
    low[:, 0] = 1.0
    low[:, 1] = -2.0
    up = upsample_flow(low, (72, 128))  # x8 in both axes
    assert up.shape == (3, 2, 72, 128)
    assert torch.allclose(up[:, 0], torch.full((3, 72, 128), 8.0))
    assert torch.allclose(up[:, 1], torch.full((3, 72, 128), -16.0))
    r = resize_flow(low[None], (9, 8))  # any leading dims, x halves
    assert r.shape == (1, 3, 2, 9, 8)
    assert torch.allclose(r[..., 0, :, :], torch.tensor(0.5)) and torch.allclose(r[..., 1, :, :], torch.tensor(-2.0))
    # An affine flow is reproduced exactly by align_corners=True resizing when scaled by (W-1)/(w-1).
    f = affine_flow([[1.1, 0.0], [0.0, 0.9]], [0.0, 0.0], 9, 17)
    big = resize_flow(f, (17, 33), scale=(32 / 16, 16 / 8))
    expect = affine_flow([[1.1, 0.0], [0.0, 0.9]], [0.0, 0.0], 17, 33)
    assert torch.allclose(big, expect, atol=1e-6)


def test_shard_flow_round_trip_for_sizes_not_multiple_of_8():
    H, W = 37, 50
    full = torch.zeros(2, 2, H, W)
    full[:, 0] = 4.0
    full[:, 1] = -8.0
    low = full_flow_to_shard(full)
    assert low.shape == (2, 2, 5, 7)
    assert torch.allclose(low[:, 0], torch.tensor(0.5)) and torch.allclose(low[:, 1], torch.tensor(-1.0))
    back = shard_flow_to_full(low, (H, W))
    assert back.shape == (2, 2, H, W)
    assert torch.allclose(back, full)
    with pytest.raises(ValueError, match=r"for frame size 37x50"):
        shard_flow_to_full(torch.zeros(1, 2, 4, 7), (H, W))


def test_endpoint_error_with_and_without_mask():
    gt = torch.zeros(2, 2, 4, 4)
    pred = gt.clone()
    pred[0, 0, 0, 0] = 3.0
    pred[0, 1, 0, 0] = 4.0
    assert torch.allclose(endpoint_error(pred, gt), torch.tensor([5.0 / 16, 0.0]))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0, :2] = True
    assert torch.allclose(endpoint_error(pred, gt, mask), torch.tensor([2.5, 0.0]))


def _seed_reference(flows, fwd, bwd, alpha1=0.01, alpha2=0.5):
    """The seed's chain and mask, written directly from the formulas in docs/original-system.md 2.5 and 2.6."""
    import torch.nn.functional as F

    def to_unit(c, h, w):  # pixel positions -> [-1, 1]
        return torch.stack([2 * c[:, 0] / (w - 1) - 1, 2 * c[:, 1] / (h - 1) - 1], 1)

    def unit_flow(f, h, w):
        return torch.stack([2 * f[:, 0] / (w - 1), 2 * f[:, 1] / (h - 1)], 1)

    b, n, _, h, w = flows.shape
    grid = pixel_grid(h, w).unsqueeze(0).repeat(b, 1, 1, 1)
    p = grid.clone()
    for s in range(n):
        p = p + F.grid_sample(flows[:, s], to_unit(p, h, w).permute(0, 2, 3, 1), align_corners=True)
    chain = p - grid
    fn, bn = unit_flow(fwd, h, w), unit_flow(bwd, h, w)
    c1 = to_unit(grid, h, w) + fn
    mask = (c1[:, 0].abs() < 1) & (c1[:, 1].abs() < 1)
    bi = F.grid_sample(bn, c1.permute(0, 2, 3, 1), align_corners=True)
    eps = alpha1 * ((fn**2).sum(1) + (bi**2).sum(1)) + alpha2 / math.sqrt(h * h + w * w)
    return chain, mask & (((fn + bi) ** 2).sum(1) - eps <= 0)


def test_chain_and_seed_mask_match_the_seed_formulas_bit_for_bit():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    fwd = F.interpolate(torch.randn(2, 2, 12, 20, generator=g) * 6, size=(90, 160), mode="bilinear", align_corners=True)
    bwd = -fwd + torch.randn(2, 2, 90, 160, generator=g) * 0.8
    flows = torch.stack([fwd, bwd, 0.5 * fwd], 1)
    chain, mask = _seed_reference(flows, fwd, bwd)
    assert torch.equal(chain_flows(flows), chain)
    ours = fb_consistency(fwd, bwd, "seed")
    assert torch.equal(ours, mask)
    assert 0.2 < ours.float().mean() < 0.8  # both outcomes occur, so the comparison means something


def _noisy_pair(seed, noise, b=2, h=30, w=44, scale=2.0):
    """Smooth flows and noisy inverses (noise in px): both outcomes of the FB test occur."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    fwd = F.interpolate(torch.randn(b, 2, 5, 7, generator=g) * scale, size=(h, w), mode="bilinear", align_corners=True)
    return fwd, -fwd + torch.randn(b, 2, h, w, generator=g) * noise


NOISE = {"seed": 1.2, "unflow": 0.3}  # ~30-70 % valid at scale 2


@pytest.mark.parametrize("mode", ["seed", "unflow"])
def test_fb_pair_is_both_single_masks(mode):
    """fb_consistency_pair on [fwd; bwd] gives fb_consistency(fwd, bwd) and (bwd, fwd), bit for bit."""
    from flow.ops import fb_consistency_pair

    fwd, bwd = _noisy_pair(1, NOISE[mode])
    both = fb_consistency_pair(torch.cat([fwd, bwd]), mode, 0.02, 0.4, alpha2_size=(60, 88))
    assert torch.equal(both[:2], fb_consistency(fwd, bwd, mode, 0.02, 0.4, alpha2_size=(60, 88)))
    assert torch.equal(both[2:], fb_consistency(bwd, fwd, mode, 0.02, 0.4, alpha2_size=(60, 88)))
    assert 0.1 < both.float().mean() < 0.95
    with pytest.raises(ValueError, match="stack forward then backward"):
        fb_consistency_pair(fwd[:1])


@pytest.mark.parametrize("mode", ["seed", "unflow"])
def test_fb_at_points_is_the_grid_mask_at_pixels(mode):
    """fb_consistency_at, fed the flows read at pixel centres, is the grid mask there: exactly in
    pixels (unflow); in the seed's normalised units up to ties of the rounding (seed)."""
    from flow.ops import fb_consistency_at

    fwd, bwd = (t.double() for t in _noisy_pair(2, NOISE[mode]))
    b, _, h, w = fwd.shape
    pts = pixel_grid(h, w, dtype=torch.float64).flatten(1).T[None].expand(b, -1, -1)  # [B, h*w, 2]
    f = sample_at(fwd, pts)
    target = pts + f
    at = fb_consistency_at(f, sample_at(bwd, target), target, (h, w), mode).view(b, h, w)
    grid = fb_consistency(fwd, bwd, mode)
    if mode == "unflow":
        assert torch.equal(at, grid)
    else:
        assert (at != grid).float().mean() < 1e-3
    assert 0.1 < grid.float().mean() < 0.95


def test_shard_grid_units_map_like_shard_flow_to_full():
    """Chaining on the 1/8 grid in its own units: grid position x is frame position x·sx, and a
    value read there times sx is the full-resolution flow at that frame position."""
    from flow.ops import shard_flow_to_grid_units, shard_grid_scale

    H, W = 75, 130
    h8, w8 = math.ceil(H / 8), math.ceil(W / 8)
    flow8 = affine_flow([[1.02, 0.01], [-0.02, 0.97]], [0.5, -0.3], h8, w8).float()  # linear: bilinear is exact
    sx, sy = shard_grid_scale(h8, w8)
    assert (sx, sy) == ((8 * w8 - 1) / (w8 - 1), (8 * h8 - 1) / (h8 - 1))
    units = shard_flow_to_grid_units(flow8)
    full = shard_flow_to_full(flow8, (H, W))
    gx, gy = torch.meshgrid(torch.arange(h8), torch.arange(w8), indexing="ij")  # rows, columns
    frame_pts = torch.stack([gy.flatten() * sx, gx.flatten() * sy], -1)[None].double()
    inside = (frame_pts[0, :, 0] <= W - 1) & (frame_pts[0, :, 1] <= H - 1)
    at_full = sample_at(full.double(), frame_pts)[0][inside]
    at_grid = units[0][:, gx.flatten(), gy.flatten()].T.double()[inside] * torch.tensor([sx, sy], dtype=torch.float64)
    torch.testing.assert_close(at_grid, at_full, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2x2"):
        shard_grid_scale(1, 5)
