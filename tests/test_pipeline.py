"""Clip → sample: shapes, determinism, k = 1 and k > 1, JPEG input, errors, collate."""

import numpy as np
import pytest
import torch

from pixpro_of.data.pipeline import SampleBuilder, SampleConfig, batch_positives, collate, frame_tensor
from plumbing.errors import UserError

torch.set_num_threads(1)
H, W = 72, 128


def _clip(k=3, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    f1 = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    fwd = np.zeros((k - 1, 2, H // 8, W // 8), np.float32)
    fwd[:, 0] = shift / 8  # everything moves `shift` px right per step
    return {"frame1": f1, "frame2": f1.copy(), "fwd": fwd, "bwd": -fwd, "video": "vid7", "t": 4, "k": k}


def test_sample_shapes_types_and_determinism():
    b = SampleBuilder(SampleConfig(image_size=64), feature_size=2)
    s = b(_clip(), np.random.default_rng(3))
    assert s["view1"].shape == (3, 64, 64) and s["view1"].dtype == torch.float32
    assert s["pos12"].shape == (4, 4) and s["pos12"].dtype == torch.bool
    assert s["box1"].shape == (4,) and isinstance(s["flip1"], bool)
    assert 0.0 <= s["mask_ratio"] <= 1.0
    assert (s["video"], s["t"], s["k"]) == ("vid7", 4, 3)
    again = b(_clip(), np.random.default_rng(3))
    for key in ("view1", "view2", "pos12", "pos21", "box1", "box2"):
        assert torch.equal(s[key], again[key])
    other = b(_clip(), np.random.default_rng(4))
    assert not torch.equal(s["box1"], other["box1"])


def test_k1_pairs_same_frame_cells_and_k3_follows_the_flow():
    cfg = SampleConfig(image_size=64, crop_scale=(1.0, 1.0), crop_ratio=(16 / 9, 16 / 9))
    b = SampleBuilder(cfg, feature_size=7)
    clip = _clip(k=1)
    clip["fwd"] = clip["bwd"] = np.zeros((0, 2, H // 8, W // 8), np.float32)

    def unflipped(clip):  # the first generator seed whose sample has neither view flipped
        for seed in range(50):
            s = b(clip, np.random.default_rng(seed))
            if not s["flip1"] and not s["flip2"]:
                return s
        raise AssertionError("no unflipped sample in 50 seeds")

    s = unflipped(clip)
    assert torch.equal(s["box1"], torch.tensor([0.0, 0.0, 128.0, 72.0]))  # full-frame crop
    # bins are 18.1 x 10.1 px (diagonal 20.7, threshold 14.5 px): the same cell and its vertical neighbours
    want = torch.tensor([[abs(i // 7 - j // 7) <= 1 and i % 7 == j % 7 for j in range(49)] for i in range(49)])
    assert torch.equal(s["pos12"], want)
    assert s["mask_ratio"] == 0.0
    # flow of exactly one bin width per frame pair (2 steps => 2 bins): positives shift by 2 columns
    bin_w = (128 - 1) / 7
    s = unflipped(_clip(k=3, shift=bin_w))
    for v in range(7):
        for u in range(7):
            row = s["pos12"][v * 7 + u]
            if u + 2 < 7:
                assert row.nonzero().flatten().tolist() == [r * 7 + u + 2 for r in range(7) if abs(r - v) <= 1]
            else:
                assert not row.any()  # moved out of the frame: masked
    assert s["mask_ratio"] > 0.0


def test_jpeg_bytes_and_arrays_go_through_the_same_seam():
    import simplejpeg

    arr = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    data = simplejpeg.encode_jpeg(arr, quality=95, colorspace="RGB")
    t = frame_tensor(data)
    ref = torch.from_numpy(simplejpeg.decode_jpeg(data, colorspace="RGB")).permute(2, 0, 1)
    assert t.shape == (3, H, W) and t.dtype == torch.uint8
    assert (t.int() - ref.int()).abs().float().mean() < 1.0
    assert torch.equal(frame_tensor(arr), torch.from_numpy(arr).permute(2, 0, 1))
    clip = _clip(k=1)
    clip["fwd"] = clip["bwd"] = np.zeros((0, 2, H // 8, W // 8), np.float32)
    clip["frame1"] = clip["frame2"] = data
    s = SampleBuilder(SampleConfig(image_size=64), 2)(clip, np.random.default_rng(0))
    assert s["view1"].shape == (3, 64, 64)


def test_bad_clips_and_configs_are_user_errors():
    b = SampleBuilder(SampleConfig(image_size=64), 2)
    clip = _clip(k=3)
    clip["fwd"] = clip["fwd"][:1]
    with pytest.raises(
        UserError, match=r"clip \(video 'vid7', t=4, k=3\): needs fwd and bwd of shape \[2, 2, h8, w8\]"
    ):
        b(clip, np.random.default_rng(0))
    clip = _clip(k=2)
    clip["fwd"] = clip["bwd"] = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(UserError, match=r"vid7.*flow of size 5x5 matches neither the frame 72x128"):
        b(clip, np.random.default_rng(0))
    clip = _clip(k=2)
    clip["frame2"] = clip["frame2"][:10]
    with pytest.raises(UserError, match="differ in size"):
        b(clip, np.random.default_rng(0))
    with pytest.raises(UserError, match=r"config: data.mask must be one of seed, unflow, none \(got 'fb'\)"):
        SampleBuilder(SampleConfig(mask="fb"))
    with pytest.raises(UserError, match="data.crop_scale"):
        SampleBuilder(SampleConfig(crop_scale=(0.5, 0.2)))


def test_collate_stacks_a_batch():
    b = SampleBuilder(SampleConfig(image_size=64), 2)
    rng = np.random.default_rng(0)
    batch = collate([b(_clip(seed=i), rng) for i in range(3)])
    assert batch.view2.shape == (3, 3, 64, 64)
    assert batch.pos21.shape == (3, 4, 4) and batch.pos21.dtype == torch.bool
    assert batch.box1.shape == (3, 4)
    assert batch.flip1.dtype == torch.bool and batch.mask_ratio.shape == (3,)
    assert torch.allclose(batch.mask_ratio, (batch.mask_ratio_fwd + batch.mask_ratio_bwd) / 2)
    assert batch.video == ["vid7"] * 3 and batch.k.tolist() == [3, 3, 3]
    assert batch.fwd is None and batch.frames is None


def test_deferred_positives_on_the_batch_equal_per_sample_positives():
    cfg = SampleConfig(image_size=64)
    clips = [_clip(k=3, seed=i, shift=4.0 + i) for i in range(3)]
    now = [SampleBuilder(cfg, 7)(c, np.random.default_rng(i)) for i, c in enumerate(clips)]
    later = [SampleBuilder(cfg, 7, carry="flows")(c, np.random.default_rng(i)) for i, c in enumerate(clips)]
    assert "pos12" not in later[0]
    batch = collate(later)
    assert batch.pos12 is None and batch.frame_hw.tolist() == [[H, W]] * 3
    fwd = torch.stack([torch.from_numpy(c["fwd"]) for c in clips])
    bwd = torch.stack([torch.from_numpy(c["bwd"]) for c in clips])
    assert torch.equal(batch.fwd, fwd) and torch.equal(batch.bwd, bwd)
    pos = batch_positives(batch, batch.fwd, batch.bwd, cfg, 7)
    ref = collate(now)
    assert torch.equal(batch.view1, ref.view1)
    assert torch.equal(pos["pos12"], ref.pos12) and torch.equal(pos["pos21"], ref.pos21)
    assert torch.allclose(pos["mask_ratio"].float(), ref.mask_ratio)
    from pixpro_of.data.strategy import FromStoredFlows

    done = FromStoredFlows(cfg, 7).complete(batch)  # the device strategy: the same positives
    assert torch.equal(done.pos12, ref.pos12) and torch.equal(done.mask_ratio, pos["mask_ratio"].float())


def test_positives_strategies_are_chosen_by_mode():
    from pixpro_of.data.strategy import FromOnlineFlow, FromStoredFlows, InWorker, make_positives

    cfg = SampleConfig(image_size=64)
    worker = make_positives("worker", cfg, 7)
    assert isinstance(worker, InWorker) and worker.carry == "positives" and not worker.on_device
    stored = make_positives("stored", cfg, 7)
    assert isinstance(stored, FromStoredFlows) and stored.carry == "flows" and stored.on_device
    raft = make_positives("raft", cfg, 7, clip_flow=lambda: "estimator")
    assert isinstance(raft, FromOnlineFlow) and raft.reads_frames and raft.clip_flow == "estimator"
    with pytest.raises(ValueError, match="flow estimator"):
        make_positives("raft", cfg, 7)
    batch = collate([SampleBuilder(cfg, 7, carry="flows")(_clip(k=2), np.random.default_rng(0))])
    with pytest.raises(RuntimeError, match="has none"):
        worker.complete(batch)
    with pytest.raises(UserError, match="needs every frame"):
        SampleBuilder(cfg, 7, carry="frames")(_clip(k=2), np.random.default_rng(0))


def test_the_loader_pins_a_batch(monkeypatch):
    """DataLoader(pin_memory=True) pins every tensor of a Batch inside a LoadedBatch (as it did
    for the dicts before): torch calls their pin_memory methods."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from pixpro_of.train.data import LoadedBatch

    pinned = []

    def fake_pin(self, *args, **kwargs):  # no CUDA here: record the call, return a copy
        pinned.append(tuple(self.shape))
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = collate(
        [SampleBuilder(SampleConfig(image_size=64), 2)(_clip(seed=i), np.random.default_rng(i)) for i in range(2)]
    )
    out = pin_memory(LoadedBatch(batch, []))
    assert isinstance(out, LoadedBatch) and out.bad == [] and out.batch.video == batch.video
    assert torch.equal(out.batch.view1, batch.view1) and out.batch.view1 is not batch.view1
    assert (2, 3, 64, 64) in pinned and (2, 4, 4) in pinned  # views and positives
