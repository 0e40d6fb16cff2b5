"""flow.estimators and flow.raft_weights: official checkpoints load strictly, RAFT and DIS outputs."""

import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_large, raft_small

from flow.estimators import make_estimator
from flow.ops import full_flow_to_shard, shard_flow_to_full
from flow.raft_weights import load_raft_state, official_to_torchvision, torchvision_to_official
from plumbing.errors import UserError

torch.set_num_threads(1)


def textured_pair(h, w, dx, dy, seed=0):
    """A smooth random RGB image and a copy shifted by (dx, dy) integer pixels (wrapping)."""
    rs = np.random.RandomState(seed)
    base = torch.from_numpy(rs.rand(1, 3, h // 6 + 2, w // 6 + 2).astype(np.float32) * 255)
    img = F.interpolate(base, size=(h, w), mode="bicubic", align_corners=True).clamp(0, 255)
    a = img[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    b = np.roll(a, shift=(dy, dx), axis=(0, 1))  # frame 2 content at x is frame 1 content at x - d
    return a[None], b[None]


@pytest.fixture(scope="module")
def random_raft():
    torch.manual_seed(0)
    return {True: raft_small().eval(), False: raft_large().eval()}


@pytest.mark.parametrize("small", [True, False])
def test_official_layout_has_official_names_and_loads_strictly(small, random_raft, tmp_path):
    model = random_raft[small]
    off = torchvision_to_official(model.state_dict(), small)
    # The official checkpoints hold 106 (raft-small) and 179 (raft-large) entries, all under module.
    assert len(off) == (106 if small else 179)
    assert all(k.startswith("module.") for k in off)
    for key in (
        "module.fnet.conv1.weight",
        "module.cnet.layer3.1.conv2.bias",
        "module.update_block.encoder.convf1.weight",
        "module.update_block.flow_head.conv2.bias",
    ):
        assert key in off
    if small:
        assert "module.update_block.gru.convz.weight" in off and "module.fnet.layer2.0.conv3.weight" in off
    else:
        assert "module.update_block.gru.convq2.weight" in off and "module.update_block.mask.2.bias" in off
        assert "module.cnet.norm1.running_var" in off and "module.cnet.layer2.0.norm3.weight" in off
    path = tmp_path / "official.pth"
    torch.save(off, path)
    est = make_estimator("raft-small" if small else "raft-large", weights=path, iters=2)
    assert est.layout == "official"
    for k, v in model.state_dict().items():
        assert torch.equal(est.model.state_dict()[k], v), k
    # Same weights in torchvision layout give the same flow.
    tv_path = tmp_path / "tv.pth"
    torch.save(model.state_dict(), tv_path)
    est_tv = make_estimator("raft-small" if small else "raft-large", weights=tv_path, iters=2)
    assert est_tv.layout == "torchvision"
    a, b = textured_pair(128, 128, 2, 1)
    assert torch.equal(est(a, b).low, est_tv(a, b).low)


def test_strict_mapping_rejects_foreign_missing_and_edited_keys(random_raft):
    small = raft_small()
    off = torchvision_to_official(random_raft[True].state_dict(), True)
    extra = dict(off)
    extra["module.fnet.layer9.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(
        UserError,
        match=r"ckpt: 1 key\(s\) are not part of raft-small, first 'module.fnet.layer9.0.conv1.weight' "
        r"\(official layout\)",
    ):
        load_raft_state(small, extra, True, source="ckpt")
    missing = dict(off)
    del missing["module.update_block.flow_head.conv1.bias"]
    with pytest.raises(UserError, match=r"1 raft-small weight\(s\) missing, first 'update_block.flow_head.conv1.bias'"):
        load_raft_state(small, missing, True, source="ckpt")
    big_off = torchvision_to_official(random_raft[False].state_dict(), False)
    edited = dict(big_off)
    edited["module.cnet.layer2.0.norm3.weight"] = edited["module.cnet.layer2.0.norm3.weight"] + 1
    with pytest.raises(UserError, match="should equal its downsample norm"):
        official_to_torchvision(edited, False, source="ckpt")
    # A large checkpoint given for the small model.
    with pytest.raises(UserError, match="ckpt: official-layout weights for raft-large, but the model is raft-small"):
        load_raft_state(small, big_off, True, source="ckpt")


def test_bad_weight_files_give_one_line_errors(random_raft, tmp_path):
    with pytest.raises(UserError, match=r"nope.pth: weights file not found"):
        make_estimator("raft-small", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match=r"junk.pth: cannot load weights") as exc:
        make_estimator("raft-small", weights=junk)
    assert "\n" not in str(exc.value)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(UserError, match="list.pth: not a RAFT state dict"):
        make_estimator("raft-small", weights=notdict)
    wrong = tmp_path / "large.pth"
    torch.save(torchvision_to_official(random_raft[False].state_dict(), False), wrong)
    with pytest.raises(
        UserError, match=r"large.pth: official-layout weights for raft-large, but the model is raft-small"
    ):
        make_estimator("raft-small", weights=wrong)
    with pytest.raises(UserError, match="model should be one of raft-small, raft-large, dis"):
        make_estimator("flownet")
    with pytest.raises(UserError, match="DIS preset should be one of ultrafast, fast, medium"):
        make_estimator("dis", dis_preset="slow")


@pytest.mark.parametrize("small", [True, False])
def test_raft_pads_to_multiples_of_8_and_matches_torchvision_forward(small, random_raft, tmp_path):
    model = random_raft[small]
    path = tmp_path / "w.pth"
    torch.save(torchvision_to_official(model.state_dict(), small), path)
    est = make_estimator("raft-small" if small else "raft-large", weights=path, iters=3)
    a, b = textured_pair(130, 131, 3, -2)
    res = est(a, b)
    assert res.full.shape == (1, 2, 130, 131) and res.low.shape == (1, 2, 17, 17)
    assert res.full.dtype == torch.float32 and res.low.dtype == torch.float32
    # torchvision's own forward on the same bottom/right replicate-padded frames.
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() * (2 / 255) - 1
    y = torch.from_numpy(b).permute(0, 3, 1, 2).float() * (2 / 255) - 1
    x, y = (F.pad(t, (0, 5, 0, 6), mode="replicate") for t in (x, y))
    with torch.no_grad():
        ref = model(x, y, num_flow_updates=3)[-1][:, :, :130, :131]
    assert (ref - res.full).abs().max() < 1e-3
    if small:  # raft-small up-samples bilinearly: full = x8 upsample of low, cropped
        assert torch.allclose(shard_flow_to_full(res.low, (130, 131)), res.full, atol=1e-4)
    # Float [B, 3, H, W] input in 0..255 gives the same flow as uint8 [B, H, W, 3].
    fa = torch.from_numpy(a).permute(0, 3, 1, 2).float()
    fb = torch.from_numpy(b).permute(0, 3, 1, 2).float()
    assert torch.allclose(est(fa, fb).low, res.low, atol=1e-4)
    with pytest.raises(ValueError, match="img1 and img2 should have the same shape"):
        est(a, b[:, :, :-8])
    with pytest.raises(UserError, match="RAFT needs frames of at least 128x128 pixels .* got 131x120"):
        est(a[:, :120], b[:, :120])


def test_dis_recovers_a_translation_and_stores_area_average():
    a, b = textured_pair(96, 128, 3, -2)
    for preset in ("ultrafast", "fast", "medium"):
        est = make_estimator("dis", dis_preset=preset)
        res = est(np.concatenate([a, b]), np.concatenate([b, a]))
        assert res.full.shape == (2, 2, 96, 128) and res.low.shape == (2, 2, 12, 16)
        inner = res.full[:, :, 16:-16, 16:-16]
        tol = 0.05 if preset == "medium" else 0.25  # the coarse presets stop early on smooth texture
        assert abs(inner[0, 0].median() - 3.0) < tol, preset
        assert abs(inner[0, 1].median() + 2.0) < tol, preset
        assert abs(inner[1, 0].median() + 3.0) < tol, preset
        assert abs(inner[1, 1].median() - 2.0) < tol, preset
        assert torch.allclose(res.low, full_flow_to_shard(res.full))


def test_raft_with_official_code_when_available(random_raft, tmp_path):
    """Numerical check against princeton-vl/RAFT: set RAFT_OFFICIAL_CORE to a checkout's core/ folder."""
    core = os.environ.get("RAFT_OFFICIAL_CORE")
    if not core:
        pytest.skip("RAFT_OFFICIAL_CORE not set (path to a princeton-vl/RAFT checkout's core/ folder)")
    import argparse

    sys.path.insert(0, core)
    try:
        import scipy  # noqa: F401  (only used by the official utils for warm starts)
    except ImportError:
        sys.modules["scipy"] = types.SimpleNamespace(interpolate=None)
    from raft import RAFT  # the official model

    a, b = textured_pair(192, 256, 4, -3)
    for small in (True, False):
        off = torchvision_to_official(random_raft[small].state_dict(), small)
        path = tmp_path / "w.pth"
        torch.save(off, path)
        ref = torch.nn.DataParallel(
            RAFT(argparse.Namespace(small=small, mixed_precision=False, alternate_corr=False, dropout=0))
        )
        ref.load_state_dict(torch.load(path), strict=True)
        ref = ref.module.eval()
        x1 = torch.from_numpy(a).permute(0, 3, 1, 2).float()
        x2 = torch.from_numpy(b).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            low, up = ref(x1, x2, iters=12, test_mode=True)
        res = make_estimator("raft-small" if small else "raft-large", weights=path)(a, b)
        assert (res.low - low).abs().max() < 1e-3
        assert (res.full - up).abs().max() < 1e-3


def test_raft_bf16_autocast_returns_float32_close_to_fp32(random_raft, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(random_raft[True].state_dict(), path)
    a, b = textured_pair(128, 128, 3, -2)
    r32 = make_estimator("raft-small", weights=path, iters=4)(a, b)
    r16 = make_estimator("raft-small", weights=path, iters=4, amp="bf16")(a, b)
    assert r16.low.dtype == torch.float32 and r16.full.shape == r32.full.shape
    diff = (r16.low - r32.low).abs().max()
    assert 0 < diff < 0.1 * r32.low.abs().max() + 0.02  # bf16 really ran, and stays close
    with pytest.raises(UserError, match="amp should be one of bf16, fp16, fp32"):
        make_estimator("raft-small", amp="int8")
