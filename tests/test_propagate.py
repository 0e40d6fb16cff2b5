"""Video label propagation (``pixpro_of eval propagate``): a brute-force reference, exact cases, the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pixpro_of.evaluation.cli import main as eval_main
from pixpro_of.evaluation.propagate import cell_labels, miou_per_distance, predict, propagate_labels


def reference(feats, first, topk, temperature, radius, context):
    """One target cell at a time, with Python loops: the protocol as the module docstring states it."""
    T, C, h, w = feats.shape
    f = feats / feats.norm(dim=1, keepdim=True)
    out = [first.clone()]
    for t in range(1, T):
        ctx = [0] + list(range(max(1, t - context), t))
        pred = torch.zeros_like(first)
        for qy in range(h):
            for qx in range(w):
                cand = []
                for j in ctx:
                    for py in range(h):
                        for px in range(w):
                            if radius is not None and (abs(py - qy) > radius or abs(px - qx) > radius):
                                continue
                            a = float((f[t, :, qy, qx] * f[j, :, py, px]).sum()) / temperature
                            cand.append((a, out[j][:, py, px]))
                cand.sort(key=lambda c: -c[0])
                kept = cand[:topk]
                m = max(a for a, _ in kept)
                ws = [math.exp(a - m) for a, _ in kept]
                pred[:, qy, qx] = sum(wi * v for wi, (_, v) in zip(ws, kept)) / sum(ws)
        out.append(pred)
    return torch.stack(out)


@pytest.mark.parametrize("radius,context,topk", [(None, 20, 5), (1, 2, 3), (0, 1, 1), (2, 3, 50)])
def test_propagation_equals_the_brute_force_reference(radius, context, topk):
    g = torch.Generator().manual_seed(radius or 7)
    feats = torch.randn(5, 6, 4, 5, generator=g, dtype=torch.float64)
    first = torch.softmax(torch.randn(3, 4, 5, generator=g, dtype=torch.float64), 0)
    got = propagate_labels(feats, first.float(), topk=topk, temperature=0.1, radius=radius, context=context)
    want = reference(feats, first, topk, 0.1, radius, context)
    assert got.shape == (5, 3, 4, 5)
    torch.testing.assert_close(got, want.float(), atol=2e-5, rtol=1e-4)


def test_features_that_name_their_position_carry_the_labels_unchanged():
    h, w = 3, 4
    code = torch.eye(h * w).reshape(h * w, h, w)  # cell (y, x) has its own one-hot feature
    feats = code[None].repeat(6, 1, 1, 1)
    labels = np.array([[0, 0, 1, 1], [2, 2, 1, 255], [2, 0, 0, 1]])
    first = cell_labels(labels, 3, (h, w))
    probs = propagate_labels(feats, first, topk=1, temperature=0.07, radius=1, context=2)
    for t in range(6):
        torch.testing.assert_close(probs[t], first)
    assert (predict(probs[5], (h, w))[labels != 255] == labels[labels != 255]).all()


def test_cell_labels_average_one_hot_pixels_and_skip_ignored_ones():
    lab = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    cells = cell_labels(lab, 3, (1, 2))  # two cells of 2x2 pixels
    torch.testing.assert_close(cells[:, 0, 0], torch.tensor([0.75, 0.0, 0.0]))
    torch.testing.assert_close(cells[:, 0, 1], torch.tensor([0.0, 0.75, 0.25]))
    with pytest.raises(ValueError, match="outside 0..2"):
        cell_labels(np.array([[3]]), 3, (1, 1))


def test_miou_per_distance_pools_each_distance_and_skips_empty_ones():
    perfect = np.diag([10, 5, 0]).astype(np.int64)
    half = np.array([[5, 5, 0], [0, 0, 0], [0, 0, 0]], np.int64)  # class 0: IoU 0.5, class 1: 0
    per, mean = miou_per_distance([perfect, half, np.zeros((3, 3), np.int64)])
    assert per[0] == 100.0 and per[1] == 25.0 and per[2] is None
    assert mean == 62.5


def test_the_command_scores_held_out_synthetic_videos(tmp_path, capsys):
    out = tmp_path / "prop"
    rc = eval_main(
        [
            "propagate",
            "--backbone",
            "random",
            "--arch",
            "resnet18",
            "--videos",
            "1",
            "--video-frames",
            "4",
            "--size",
            "96x64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["distances"] == [1, 2, 3] and len(scores["mIoU_per_distance"]) == 3
    assert all(m is None or 0.0 <= m <= 100.0 for m in scores["mIoU_per_distance"])
    assert scores["mIoU_mean"] is not None and scores["config"]["seed"] == 1
    assert "mIoU by frame distance 1..3" in capsys.readouterr().out


def test_bad_options_are_one_line(tmp_path, capsys):
    assert eval_main(["propagate", "--backbone", "random", "--video-frames", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--video-frames should be >= 2" in err
    (tmp_path / "f").write_text("")
    assert (
        eval_main(
            [
                "propagate",
                "--backbone",
                "random",
                "--out",
                str(tmp_path / "f"),
                "--videos",
                "1",
                "--video-frames",
                "2",
                "--size",
                "32x32",
                "--arch",
                "resnet18",
            ]
        )
        == 2
    )
    assert "exists and is not a folder" in capsys.readouterr().err
