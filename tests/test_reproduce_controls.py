"""The reproduction's controls: ``data.flow_source=none`` (k frames, positives from the crop geometry alone)."""

import numpy as np
import pytest
import torch

from pixpro_of.config import DataConfig
from pixpro_of.data.pipeline import SampleBuilder
from pixpro_of.positives import cell_centres, compute_positives
from plumbing.errors import UserError


def _clip(k, H=64, W=96, seed=0):
    rng = np.random.default_rng(seed)
    h8, w8 = -(-H // 8), -(-W // 8)
    flows = rng.normal(0.0, 2.0, size=(2, k - 1, 2, h8, w8)).astype(np.float32)  # large, nonzero motion
    return {
        "frame1": rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
        "frame2": rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
        "fwd": flows[0],
        "bwd": flows[1],
        "video": "v",
        "t": 0,
        "k": k,
    }


def _cfg(**kw):
    base = dict(shards=["unused.h5"], synthetic=False, k=6, image_size=64, mask="none")
    base.update(kw)
    cfg = DataConfig(**base)
    cfg.validate()
    return cfg


def test_flow_source_none_is_zero_flow_and_no_mask():
    """Same views (same RNG), positives equal to those of zero flows with no mask, and to a
    brute-force pairing of the cell centres; the stored flows are ignored; nothing is masked."""
    F = 2
    clip = _clip(6)
    cfg = _cfg(flow_source="none")
    assert cfg.positives_mode() == "worker"
    s = SampleBuilder(cfg, F)(clip, np.random.default_rng(7))
    ref = SampleBuilder(_cfg(), F)(clip, np.random.default_rng(7))  # stored flows, same draws
    assert torch.equal(s["box1"], ref["box1"]) and torch.equal(s["box2"], ref["box2"])
    assert s["mask_ratio"] == 0.0
    # zero flows through the flow kernels, no mask
    b1, b2 = s["box1"][None].double(), s["box2"][None].double()
    f1, f2 = torch.tensor([s["flip1"]]), torch.tensor([s["flip2"]])
    zeros = torch.zeros(1, 5, 2, 8, 12)
    pz = compute_positives(b1, f1, b2, f2, (64, 96), F, cfg, zeros, zeros.clone())
    assert torch.equal(s["pos12"], pz["pos12"][0]) and torch.equal(s["pos21"], pz["pos21"][0])
    assert bool(pz["valid1"].all()) and bool(pz["valid2"].all())
    # brute force: centre distance over the larger bin diagonal below pos_ratio, every cell valid
    c1, c2 = cell_centres(b1, f1, F)[0], cell_centres(b2, f2, F)[0]

    def diag(box):
        w, h = float(box[0, 2]), float(box[0, 3])
        return (((w - 1) / F) ** 2 + ((h - 1) / F) ** 2) ** 0.5

    d = max(diag(b1), diag(b2))
    brute = torch.tensor(
        [[float(torch.dist(c1[i], c2[j])) / d < cfg.pos_ratio for j in range(F * F)] for i in range(F * F)]
    )
    assert torch.equal(s["pos12"], brute) and torch.equal(s["pos21"], brute.T)
    # the flow rows do move the positives on this clip (so the control differs from them)
    moved = compute_positives(
        b1, f1, b2, f2, (64, 96), F, _cfg(), torch.full((1, 5, 2, 8, 12), 3.0), torch.full((1, 5, 2, 8, 12), -3.0)
    )
    assert not torch.equal(moved["pos12"][0], s["pos12"])


def test_flow_source_none_needs_no_flows_in_the_clip():
    clip = _clip(6)
    clip["fwd"] = clip["bwd"] = None
    s = SampleBuilder(_cfg(flow_source="none"), 2)(clip, np.random.default_rng(0))
    assert s["pos12"].shape == (4, 4)
    with pytest.raises(UserError, match="needs fwd and bwd"):
        SampleBuilder(_cfg(), 2)(clip, np.random.default_rng(0))


def test_flow_source_none_checks():
    with pytest.raises(UserError, match="data.mask.*must be none when data.flow_source=none"):
        _cfg(flow_source="none", mask="seed")
    with pytest.raises(UserError, match="data.flow_source"):
        _cfg(flow_source="zero")
    with pytest.raises(ValueError, match="flow_source=none computes the positives in the workers"):
        SampleBuilder(_cfg(flow_source="none"), 2, carry="flows")
    # device views work without flow
    assert _cfg(flow_source="none", decode_on="device").positives_mode() == "worker"


def test_positive_precision_bench_scores_each_rows_positives_against_the_world(tmp_path):
    """bench/positive_precision.py on a few samples: following the exact flow gives more precise
    positives than zero flow (the k6-noflow control), and every row of its table is filled."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "positive_precision.py"),
            "--videos",
            "1",
            "--samples",
            "12",
            "--flows",
            "none,gt",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = {
        ln.split(" | ")[0][2:]: ln.strip(" |").split(" | ")
        for ln in out.stdout.splitlines()
        if ln.startswith("| ") and not ln.startswith("| positives")
    }
    assert set(rows) == {"none", "gt", "(the right pairs)"}
    prec = {name: float(cells[1]) for name, cells in rows.items() if name != "(the right pairs)"}
    assert 0 < prec["none"] < prec["gt"] <= 1
    assert all(0 <= float(cells[4]) <= 1 for cells in rows.values())  # label agreement is a fraction
    assert "views 128 px (4x4 C5 grid), k = 6" in out.stdout
