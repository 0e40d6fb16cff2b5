"""flow.io round trips, ``python -m flow viz`` / ``hdf5_tools viz`` pictures and ``python -m pixpro_of eval flow``
on the synthetic world."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_flow_compute import make_shards

from flow.__main__ import main as flow_main
from flow.io import read_flo, read_seed_pth, write_flo, write_seed_pth
from flow.ops import fb_consistency, in_frame
from hdf5_tools.cli import main as shard_main
from pixpro_of.evaluation.cli import main as eval_main
from plumbing.errors import UserError


def test_flo_round_trip_and_damaged_files(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(2, 7, 11)).astype(np.float32) * 10
    write_flo(tmp_path / "a.flo", flow)
    back = read_flo(tmp_path / "a.flo")
    assert back.dtype == np.float32 and back.shape == (2, 7, 11)
    assert np.array_equal(back, flow)
    raw = (tmp_path / "a.flo").read_bytes()
    assert raw[:4] == b"PIEH" and len(raw) == 12 + 2 * 7 * 11 * 4
    (tmp_path / "t.flo").write_bytes(raw[:-4])
    with pytest.raises(UserError, match=r"t.flo: truncated .flo data \(153 of 154 values\)"):
        read_flo(tmp_path / "t.flo")
    (tmp_path / "m.flo").write_bytes(b"XXXX" + raw[4:])
    with pytest.raises(UserError, match="m.flo: not a .flo file"):
        read_flo(tmp_path / "m.flo")


def test_seed_pth_round_trip_reorders_backward(tmp_path):
    fwd = np.arange(3 * 2 * 2 * 3, dtype=np.float32).reshape(3, 2, 2, 3)
    bwd = -fwd - 0.5
    fp, bp = tmp_path / "forward" / "v.pth", tmp_path / "backward" / "v.pth"
    write_seed_pth(fp, bp, fwd, bwd)
    stored_b = torch.load(bp).numpy()
    assert np.array_equal(stored_b[0], bwd[-1])  # the seed stored backward flows in reverse time
    f2, b2 = read_seed_pth(fp, bp)
    assert np.array_equal(f2, fwd) and np.array_equal(b2, bwd)


def test_fb_masks_on_synthetic_ground_truth_flow():
    """On exact flows: every out-of-frame target masked; (almost) no visible pixel flagged."""
    from synth import render_video

    v = render_video(11, 3, size=(128, 80))
    f, b = torch.from_numpy(v.fwd), torch.from_numpy(v.bwd)
    valid = torch.from_numpy(v.valid_fwd)
    outside = ~in_frame(f)
    assert outside.any()
    for mode in ("seed", "unflow"):
        m = fb_consistency(f, b, mode)
        assert not m[outside].any(), mode
        false_occ = (~m & valid).sum().item() / valid.sum().item()
        # Only pixels whose bilinear lookup straddles a motion boundary can be flagged wrongly.
        assert false_occ < 0.01, (mode, false_occ)


def _shard_with_flows(tmp_path):
    src = make_shards(tmp_path / "s", {"a.h5": [("v0", 4, 1)]}, size=(64, 48), manifest=False)
    assert shard_main(["flow", str(src), "--model", "dis", "--no-progress", "--threads", "1"]) == 0
    return src / "a.h5"


def test_viz_writes_flow_mask_and_composite_pictures(tmp_path, capsys):
    shard = _shard_with_flows(tmp_path)
    out = tmp_path / "pics"
    assert shard_main(["viz", str(shard), "--video", "v0", "--t", "1", "--frames", "3", "--out", str(out)]) == 0
    names = {
        "frame_first",
        "frame_last",
        "flow_fwd",
        "flow_bwd",
        "mask_fwd_seed",
        "mask_bwd_seed",
        "mask_fwd_unflow",
        "mask_bwd_unflow",
        "overlay_fwd",
        "panel",
    }
    assert {p.stem for p in out.glob("*.png")} == names
    for n in names - {"panel"}:
        im = np.asarray(Image.open(out / f"{n}.png"))
        assert im.shape == (48, 64, 3), n
    flow_img = np.asarray(Image.open(out / "flow_fwd.png")).astype(int)
    assert flow_img.std() > 5  # real colour variation, not a blank picture
    mask = np.asarray(Image.open(out / "mask_fwd_unflow.png"))
    assert set(np.unique(mask)) <= {0, 255}
    panel = np.asarray(Image.open(out / "panel.png"))
    assert panel.shape[0] > 2 * 48 and panel.shape[1] > 4 * 64
    capsys.readouterr()
    # k larger than the video -> one line, exit 2.
    assert shard_main(["viz", str(shard), "--video", "v0", "--t", "1", "--frames", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "video 'v0' has 4 frames; --t 1 --frames 4 needs frames 1..4" in err
    assert shard_main(["viz", str(shard), "--video", "nope", "--out", str(out)]) == 2
    assert "no video 'nope'" in capsys.readouterr().err


def test_viz_of_a_flo_file(tmp_path):
    flow = np.zeros((2, 20, 30), np.float32)
    flow[0] = np.linspace(-3, 3, 30)[None, :]
    write_flo(tmp_path / "f.flo", flow)
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "frame.png")
    assert (
        flow_main(
            [
                "viz",
                "--flo",
                str(tmp_path / "f.flo"),
                "--frame",
                str(tmp_path / "frame.png"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    img = np.asarray(Image.open(tmp_path / "o" / "flow.png")).astype(int)
    assert img.shape == (20, 30, 3)
    assert np.abs(img[:, 0] - img[:, -1]).sum() > 100  # left and right flow point opposite ways
    assert (tmp_path / "o" / "overlay.png").exists()


def test_evaluate_reports_epe_and_mask_figures(tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert (
        eval_main(
            ["flow", "--videos", "1", "--video-frames", "4", "--size", "96x64", "--kmax", "3", "--json", str(out)]
        )
        == 0
    )
    r = json.loads(out.read_text())
    epe = {(e["k"], e["flow"]): e["epe_px"] for e in r["epe"]}
    assert set(epe) == {(2, "full"), (2, "stored"), (3, "stored")}
    assert 0 < epe[(2, "full")] < 8 and epe[(3, "stored")] > epe[(2, "stored")] * 0.8
    masks = {(m["k"], m["mode"], m["flow"], m["pixels"]): m for m in r["masks"]}
    # On the exact flows the masks find the invalid pixels (mostly leaving the frame) precisely.
    for mode in ("seed", "unflow"):
        m = masks[(2, mode, "gt", "all")]
        assert m["precision"] > 0.95 and m["recall"] > 0.9, m
    assert "end-point error" in capsys.readouterr().out
    assert eval_main(["flow", "--video-frames", "3", "--kmax", "6"]) == 2
    assert "--kmax 6 is larger than the video (--video-frames 3)" in capsys.readouterr().err
