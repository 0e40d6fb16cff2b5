"""Positives equal a brute-force reference for random crops, flips and known affine flows."""

import math

import numpy as np
import pytest
import torch

from pixpro_of.data.augment import sample_crop
from pixpro_of.positives import PositiveConfig, bin_size, cell_centres, compute_positives


# ---------------------------------------------------------------- brute-force reference (plain loops)
def ref_centres(box, flip, W, H, F):
    """The seed's formula, literally: coordinate vector, x0<->x1 swap on flip, times (W-1)."""
    left, top, w, h = box
    x0, y0, x1, y1 = left / (W - 1), top / (H - 1), (left + w - 1) / (W - 1), (top + h - 1) / (H - 1)
    if flip:
        x0, x1 = x1, x0
    out = []
    for v in range(F):
        for u in range(F):
            out.append(((x0 + (u + 0.5) * (x1 - x0) / F) * (W - 1), (y0 + (v + 0.5) * (y1 - y0) / F) * (H - 1)))
    diag = math.hypot((x1 - x0) / F * (W - 1), (y1 - y0) / F * (H - 1))
    return out, diag


class Affine:
    """p -> M p + c."""

    def __init__(self, M, c):
        self.M, self.c = np.asarray(M, float), np.asarray(c, float)

    def __call__(self, p):
        return self.M @ np.asarray(p, float) + self.c

    def inverse(self):
        Mi = np.linalg.inv(self.M)
        return Affine(Mi, -Mi @ self.c)


def random_zoom(rng, W, H, shift=0.1):
    """A mild zoom/rotation about a point inside the frame (trajectories are monotone)."""
    s = rng.uniform(0.93, 1.07)
    th = rng.uniform(-0.02, 0.02)
    R = s * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    centre = np.array([rng.uniform(0.3, 0.7) * (W - 1), rng.uniform(0.3, 0.7) * (H - 1)])
    return Affine(R, centre - R @ centre + rng.uniform(-shift, shift, 2) * (W, H))


def shard_field(A, W, H):
    """1/8-resolution flow of the map A in shard units: grid x_c <-> frame x_c*(8w-1)/(w-1), values /8."""
    h8, w8 = math.ceil(H / 8), math.ceil(W / 8)
    sx, sy = (8 * w8 - 1) / (w8 - 1), (8 * h8 - 1) / (h8 - 1)
    out = np.zeros((2, h8, w8), np.float32)
    for yc in range(h8):
        for xc in range(w8):
            p = np.array([xc * sx, yc * sy])
            out[:, yc, xc] = (A(p) - p) / 8.0
    return out, (sx, sy, w8, h8)


def ref_positives(q_box, q_flip, k_box, k_flip, W, H, F, maps, grid, ratio=0.7):
    """Brute force with analytic maps: each query centre q moves to maps(q); with flow it is valid
    when maps(round(q)) lands strictly inside the frame (the seed mask at q's nearest pixel; exact
    inverse flows are always forward-backward consistent).

    Returns (pos [N, N] bool, ambiguous [N] bool): a row is ambiguous when a flow-grid neighbour used
    by a bilinear look-up has a trajectory that leaves the grid (zero padding, not the analytic map)."""
    qc, qd = ref_centres(q_box, q_flip, W, H, F)
    kc, kd = ref_centres(k_box, k_flip, W, H, F)
    md = max(qd, kd)
    n = F * F
    pos = np.zeros((n, n), bool)
    amb = np.zeros(n, bool)
    sx, sy, gw, gh = grid if grid is not None else (1.0, 1.0, W, H)
    inverse = [A.inverse() for A in reversed(maps)]

    def stays_inside(p_grid, chain):
        p = np.array([p_grid[0] * sx, p_grid[1] * sy])
        for A in chain:
            p = A(p)
            if not (0 <= p[0] / sx <= gw - 1 and 0 <= p[1] / sy <= gh - 1):
                return False
        return True

    def neighbours_inside(p, chain):
        x0, y0 = math.floor(p[0] / sx), math.floor(p[1] / sy)
        return all(stays_inside((x0 + a, y0 + b), chain) for a in (0, 1) for b in (0, 1))

    for i, q in enumerate(qc):
        p = np.array(q)
        for A in maps:
            p = A(p)
        valid = True
        if maps:
            qr = np.floor(np.array(q) + 0.5)
            c = qr
            for A in maps:
                c = A(c)
            valid = 0 < c[0] < W - 1 and 0 < c[1] < H - 1
            amb[i] = valid and not (
                neighbours_inside(q, maps) and neighbours_inside(qr, maps) and neighbours_inside(c, inverse)
            )
        for j, kk in enumerate(kc):
            pos[i, j] = valid and math.hypot(p[0] - kk[0], p[1] - kk[1]) / md < ratio
    return pos, amb


# ---------------------------------------------------------------- tests
def _case(rng):
    W = int(rng.integers(100, 200))
    H = int(rng.integers(60, 120))
    F = int(rng.choice([2, 3, 7]))
    b1, b2 = sample_crop(rng, H, W), sample_crop(rng, H, W)
    f1, f2 = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    return W, H, F, b1, b2, f1, f2


def _run(b1, f1, b2, f2, W, H, F, cfg, fwd=None, bwd=None):
    def t(b):
        return torch.tensor([b], dtype=torch.float64)

    return compute_positives(t(b1), torch.tensor([f1]), t(b2), torch.tensor([f2]), (H, W), F, cfg, fwd, bwd)


def test_cell_centres_and_bins_follow_the_seed_formula():
    rng = np.random.default_rng(1)
    for _ in range(20):
        W, H, F, b1, _, f1, _ = _case(rng)
        got = cell_centres(torch.tensor([b1], dtype=torch.float64), torch.tensor([f1]), F)[0].numpy()
        want, diag = ref_centres(b1, f1, W, H, F)
        np.testing.assert_allclose(got, np.array(want), atol=1e-9)
        assert float(torch.linalg.vector_norm(bin_size(torch.tensor([b1], dtype=torch.float64), F))) == pytest.approx(
            diag
        )
    # a flipped view numbers cells from the right: cell 0 sits at the box's right end
    c = cell_centres(torch.tensor([[10.0, 0.0, 71.0, 71.0]]), torch.tensor([True]), 7)[0]
    assert c[0, 0].item() == pytest.approx(10 + 70 - 0.5 * 70 / 7)


@pytest.mark.parametrize("rule", ["pixel", "normalized"])
def test_same_frame_positives_equal_brute_force(rule):
    rng = np.random.default_rng(2)
    total = 0
    for _ in range(30):
        W, H, F, b1, b2, f1, f2 = _case(rng)
        out = _run(b1, f1, b2, f2, W, H, F, PositiveConfig(positive_rule=rule))
        qc, qd = ref_centres(b1, f1, W, H, F)
        kc, kd = ref_centres(b2, f2, W, H, F)
        sx, sy = (1.0, 1.0) if rule == "pixel" else (1.0 / (W - 1), 1.0 / (H - 1))
        dq = math.hypot((b1[2] - 1) / F * sx, (b1[3] - 1) / F * sy)
        dk = math.hypot((b2[2] - 1) / F * sx, (b2[3] - 1) / F * sy)
        want = np.array(
            [[math.hypot((q[0] - k[0]) * sx, (q[1] - k[1]) * sy) / max(dq, dk) < 0.7 for k in kc] for q in qc]
        )
        want21 = want.T.copy()  # no flow: the relation is symmetric
        np.testing.assert_array_equal(out["pos12"][0].numpy(), want)
        np.testing.assert_array_equal(out["pos21"][0].numpy(), want21)
        total += want.sum()
    assert total > 50  # the cases exercise positives, not only empty matrices


def test_identical_views_pair_each_cell_with_itself_and_flip_mirrors():
    box = (5, 7, 64, 48)
    out = _run(box, False, box, False, 100, 80, 7, PositiveConfig())
    assert torch.equal(out["pos12"][0].diagonal(), torch.ones(49, dtype=torch.bool))
    out = _run(box, False, box, True, 100, 80, 7, PositiveConfig())
    # cell (v, u) of the unflipped view is the same place as cell (v, 6-u) of the flipped one
    mirror = torch.tensor([v * 7 + (6 - u) for v in range(7) for u in range(7)])
    assert out["pos12"][0][torch.arange(49), mirror].all()


@pytest.mark.parametrize("k", [2, 4])
def test_affine_flow_positives_equal_brute_force(k):
    rng = np.random.default_rng(10 + k)
    compared = positives = masked = 0
    for case in range(12):
        W, H, F, b1, b2, f1, f2 = _case(rng)
        maps = [random_zoom(rng, W, H) for _ in range(k - 1)]
        fwd, bwd = [], []
        for A in maps:
            f8, grid = shard_field(A, W, H)
            b8, _ = shard_field(A.inverse(), W, H)
            fwd.append(f8)
            bwd.append(b8)
        fwd = torch.from_numpy(np.stack(fwd))[None]
        bwd = torch.from_numpy(np.stack(bwd))[None]
        out = _run(b1, f1, b2, f2, W, H, F, PositiveConfig(), fwd, bwd)
        want12, amb12 = ref_positives(b1, f1, b2, f2, W, H, F, maps, grid)
        inv = [A.inverse() for A in reversed(maps)]
        want21, amb21 = ref_positives(b2, f2, b1, f1, W, H, F, inv, grid)
        for got, want, amb in ((out["pos12"][0].numpy(), want12, amb12), (out["pos21"][0].numpy(), want21, amb21)):
            keep = ~amb
            np.testing.assert_array_equal(got[keep], want[keep], err_msg=f"case {case}")
            compared += keep.sum()
            positives += want[keep].sum()
        masked += int((~out["valid1"][0]).sum() + (~out["valid2"][0]).sum())
    assert compared > 0.8 * 2 * 12 * 4  # most rows are unambiguous
    assert positives > 100
    assert masked > 0  # some queries leave the frame: the mask is exercised


def test_full_resolution_chaining_agrees_with_coarse_for_affine_flow():
    rng = np.random.default_rng(5)
    W, H = 128, 96
    for _ in range(5):
        _, _, _, _, _, f1, f2 = _case(rng)
        b1, b2 = sample_crop(rng, H, W), sample_crop(rng, H, W)
        maps = [random_zoom(rng, W, H, shift=0.02) for _ in range(3)]
        fwd = torch.from_numpy(np.stack([shard_field(A, W, H)[0] for A in maps]))[None]
        bwd = torch.from_numpy(np.stack([shard_field(A.inverse(), W, H)[0] for A in maps]))[None]
        coarse = _run(b1, f1, b2, f2, W, H, 7, PositiveConfig(flow_resolution="coarse"), fwd, bwd)
        full = _run(b1, f1, b2, f2, W, H, 7, PositiveConfig(flow_resolution="full"), fwd, bwd)
        w = full["warped1"][0]
        margin = 9.0  # one coarse pixel: zero-padded look-ups fade over 1 px of their own grid
        away = (w[:, 0] > margin) & (w[:, 0] < W - 1 - margin) & (w[:, 1] > margin) & (w[:, 1] < H - 1 - margin)
        v = coarse["valid1"][0] & full["valid1"][0] & away
        assert v.sum() > 10
        # the two orders (chain then upsample / upsample then chain) agree to a fraction of a pixel
        assert (coarse["warped1"][0][v] - full["warped1"][0][v]).abs().max() < 0.25


def test_mask_none_keeps_out_of_frame_queries_and_seed_mask_drops_them():
    W, H = 96, 64
    shift = Affine(np.eye(2), [40.0, 0.0])  # everything moves 40 px right: the right part leaves
    f8, _ = shard_field(shift, W, H)
    b8, _ = shard_field(shift.inverse(), W, H)
    fwd, bwd = torch.from_numpy(f8)[None, None], torch.from_numpy(b8)[None, None]
    box = (0, 0, W, H)
    seed = _run(box, False, box, False, W, H, 7, PositiveConfig(mask="seed"), fwd, bwd)
    none = _run(box, False, box, False, W, H, 7, PositiveConfig(mask="none"), fwd, bwd)
    cols = seed["centres1"][0][:, 0]
    assert not seed["valid1"][0][cols > W - 1 - 40 + 4].any()
    assert seed["valid1"][0][cols < W - 1 - 40 - 4].all()
    assert none["valid1"][0].all()
    assert 0.3 < float(seed["mask_ratio_fwd"][0]) < 0.6


def test_flow_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="matches neither the frame"):
        _run(
            (0, 0, 50, 50),
            False,
            (0, 0, 50, 50),
            False,
            96,
            64,
            7,
            PositiveConfig(),
            torch.zeros(1, 1, 2, 9, 9),
            torch.zeros(1, 1, 2, 9, 9),
        )


# ---------------------------------------------------------------- the fast paths equal the plain ones
def _random_flows(rng, b, n, h8, w8, scale):
    """Smooth random 1/8-resolution flows (bilinear blow-up of a 4x4 field) and noisy inverses, so
    that the FB masks reject a part of the grid and trajectories leave the frame."""
    coarse = torch.from_numpy(rng.normal(0, scale, (b * n, 2, 4, 4)).astype(np.float32))
    fwd = torch.nn.functional.interpolate(coarse, size=(h8, w8), mode="bilinear", align_corners=True)
    bwd = -fwd + torch.from_numpy(rng.normal(0, 0.15 * scale, fwd.shape).astype(np.float32))
    return fwd.reshape(b, n, 2, h8, w8), bwd.reshape(b, n, 2, h8, w8)


def test_flow_grid_composites_and_masks_equal_flow_ops():
    """FlowGrid chains both directions as one batch: the same bits as flow.ops per direction."""
    from flow import ops
    from pixpro_of.positives import FlowGrid

    rng = np.random.default_rng(21)
    W, H = 200, 120
    for n, mask in ((1, "seed"), (3, "seed"), (4, "unflow")):
        fwd, bwd = _random_flows(rng, 2, n, 15, 25, 1.5)
        cfg = PositiveConfig(mask=mask)
        grid = FlowGrid(fwd, bwd, (H, W), cfg)
        sx, sy = (8 * 25 - 1) / 24, (8 * 15 - 1) / 14
        unit = torch.tensor([8.0 / sx, 8.0 / sy]).view(1, 1, 2, 1, 1)
        f_ref = ops.chain_flows(fwd * unit)
        b_ref = ops.chain_backward(bwd * unit)
        assert torch.equal(grid.fwd, f_ref) and torch.equal(grid.bwd, b_ref)
        if mask == "seed":
            a2 = cfg.alpha2 * math.sqrt(15**2 + 25**2) / math.sqrt(H * H + W * W)
            want = ops.fb_consistency(f_ref, b_ref, "seed", cfg.alpha1, a2)
        else:
            want = ops.fb_consistency(f_ref, b_ref, "unflow", cfg.alpha1, cfg.alpha2, alpha2_size=(H, W))
        assert torch.equal(grid.valid_fwd, want)
        assert 0 < int((~want).sum()) < want.numel()  # the masks are exercised
