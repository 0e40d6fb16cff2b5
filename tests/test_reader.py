"""The clip reader (ShardClipDataset) and its deterministic sampler (ClipSampler)."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
import torch

from hdf5_tools import fake_sources, schema
from hdf5_tools.pack import PackConfig, pack
from pixpro_of.data import ClipSampler, ShardClipDataset, node_shard_paths
from plumbing.errors import UserError

H, W = 24, 40  # flows 3 x 5
LENGTHS = {"a": 7, "b": 9, "c": 6, "d": 8, "e": 10}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """5 videos packed for 2 node sets, one video per shard, with seed-layout flows."""
    root = tmp_path_factory.mktemp("reader")
    rng = np.random.default_rng(11)
    truth = {}
    for name, n in LENGTHS.items():
        rgb = (rng.random((n, H, W, 3)) * 255).astype(np.uint8)
        jpegs = fake_sources.write_frame_folder(root / "src", "train", name, rgb)
        fwd, bwd = fake_sources.random_flows(rng, n - 1, H, W)
        fake_sources.write_seed_flows(root / "flow", "train", name, fwd, bwd)
        truth[name] = (jpegs, fwd, bwd)
    m = pack(
        PackConfig(
            src=str(root / "src"),
            out=str(root / "out"),
            nodes=2,
            shard_size=1,
            flows=str(root / "flow"),
            progress=False,
        )
    )
    return m, truth


def _all_paths(m):
    return [m.path_of(s) for s in m.shards]


def test_clip_contents_match_the_sources(shards):
    m, truth = shards
    ds = ShardClipDataset(_all_paths(m), k=3)
    assert ds.num_videos == 5 and len(ds) == 5
    names = [ds.video_name(i) for i in range(5)]
    assert sorted(names) == sorted(LENGTHS)
    i = names.index("b")
    assert ds.num_frames(i) == 9 and ds.frame_size(i) == (H, W)
    clip = ds[(i, 4)]
    jpegs, fwd, bwd = truth["b"]
    assert (clip["video"], clip["t"], clip["k"]) == ("b", 4, 3)
    assert clip["frame1"].dtype == np.uint8 and clip["frame1"].shape == (H, W, 3)
    np.testing.assert_array_equal(clip["frame1"], simplejpeg.decode_jpeg(jpegs[4]))
    np.testing.assert_array_equal(clip["frame2"], simplejpeg.decode_jpeg(jpegs[6]))
    assert clip["fwd"].shape == (2, 2, 3, 5) and clip["fwd"].dtype == np.float32
    np.testing.assert_array_equal(clip["fwd"], fwd[4:6].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(clip["bwd"], bwd[4:6].astype(np.float16).astype(np.float32))


def test_k1_gives_the_same_frame_twice_and_no_flow(shards):
    m, truth = shards
    ds = ShardClipDataset(_all_paths(m), k=1)
    i = [ds.video_name(j) for j in range(5)].index("c")
    clip = ds.get_clip(i, 5)
    np.testing.assert_array_equal(clip["frame1"], clip["frame2"])
    np.testing.assert_array_equal(clip["frame1"], simplejpeg.decode_jpeg(truth["c"][0][5]))
    assert clip["fwd"].shape == (0, 2, 3, 5) and clip["bwd"].shape == (0, 2, 3, 5)


def test_dataloader_with_two_workers_reads_clips_correctly(shards):
    m, truth = shards
    ds = ShardClipDataset(_all_paths(m), k=2)
    ds.get_clip(0, 0)  # open handles in the parent first: workers must not reuse them
    sampler = ClipSampler(ds, seed=3, epoch=1)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, sampler=sampler, num_workers=2, multiprocessing_context="fork"
    )
    seen = []
    for clip, (vi, t) in zip(loader, list(sampler)):
        name = ds.video_name(vi)
        jpegs, fwd, _ = truth[name]
        assert clip["video"] == name and int(clip["t"]) == t
        np.testing.assert_array_equal(clip["frame2"].numpy(), simplejpeg.decode_jpeg(jpegs[t + 1]))
        np.testing.assert_array_equal(clip["fwd"].numpy(), fwd[t : t + 1].astype(np.float16).astype(np.float32))
        seen.append(name)
    assert sorted(seen) == sorted(LENGTHS)
    # Batched collation works too (same frame size everywhere).
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2, drop_last=True)
    batch = next(iter(loader))
    assert batch["frame1"].shape == (2, H, W, 3) and batch["fwd"].shape == (2, 1, 2, 3, 5)


def test_sampler_is_deterministic_per_seed_and_epoch(shards):
    m, _ = shards
    ds = ShardClipDataset(_all_paths(m), k=6)
    a = list(ClipSampler(ds, seed=7, epoch=3))
    assert a == list(ClipSampler(ds, seed=7, epoch=3))
    assert sorted(v for v, _ in a) == list(range(5))  # one clip per video per epoch
    for v, t in a:
        assert 0 <= t <= ds.num_frames(v) - 6
    orders = {tuple(v for v, _ in ClipSampler(ds, seed=7, epoch=e)) for e in range(8)}
    assert len(orders) > 1
    # t is drawn from (seed, epoch, video) only: the same per rank split or not.
    starts = dict(a)
    for r in range(2):
        for v, t in ClipSampler(ds, seed=7, epoch=3, rank=r, world_size=2):
            assert starts[v] == t


def test_sampler_ranks_are_disjoint_equal_and_resume_mid_epoch(shards):
    m, _ = shards
    ds = ShardClipDataset(_all_paths(m), k=2)
    parts = [list(ClipSampler(ds, seed=1, epoch=0, rank=r, world_size=2)) for r in range(2)]
    assert [len(p) for p in parts] == [2, 2]  # 5 // 2: equal steps per rank
    assert not set(parts[0]) & set(parts[1])
    resumed = ClipSampler(ds, seed=1, epoch=0, rank=1, world_size=2, start=1)
    assert len(resumed) == 1 and list(resumed) == parts[1][1:]
    fixed = list(ClipSampler(ds, seed=1, epoch=0, num_samples=12))
    assert len(fixed) == 12 and fixed[:5] == list(ClipSampler(ds, seed=1, epoch=0))
    with pytest.raises(UserError, match="sampler start 3 outside"):
        ClipSampler(ds, seed=1, epoch=0, rank=0, world_size=2, start=3)


def test_node_shards_from_the_manifest(shards):
    m, _ = shards
    manifest = m.root + "/manifest.json"
    node0, node1 = node_shard_paths(manifest, 0), node_shard_paths(manifest, 1)
    assert sorted(node0 + node1) == sorted(_all_paths(m)) and not set(node0) & set(node1)
    frames = [ShardClipDataset(p, k=1) for p in (node0, node1)]
    totals = [sum(d.num_frames(i) for i in range(d.num_videos)) for d in frames]
    assert abs(totals[0] - totals[1]) <= max(LENGTHS.values())
    assert node_shard_paths(manifest, 0, num_nodes=1) == _all_paths(m)
    with pytest.raises(UserError, match="the job has 3 nodes but the shards were packed for 2"):
        node_shard_paths(manifest, 0, num_nodes=3)


def test_bad_input_names_shard_video_and_index(shards, tmp_path):
    m, _ = shards
    with pytest.raises(UserError, match=r"shard-n\d{3}-\d{5}\.h5: video 'c' has 6 frames, fewer than k=7"):
        ShardClipDataset(_all_paths(m), k=7)
    ds = ShardClipDataset(_all_paths(m), k=7, drop_short=True)
    assert sorted(ds.video_name(i) for i in range(ds.num_videos)) == ["a", "b", "d", "e"]
    with pytest.raises(IndexError, match=r"video 'b': clip start 3 out of range \[0, 2\] for k=7"):
        ds.get_clip([ds.video_name(i) for i in range(4)].index("b"), 3)
    # A shard without flows: k = 1 works, k > 1 names the missing pair.
    rgb = (np.random.default_rng(0).random((4, H, W, 3)) * 255).astype(np.uint8)
    fake_sources.write_frame_folder(tmp_path / "src", "train", "noflow", rgb)
    m2 = pack(PackConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), nodes=1, progress=False))
    path = m2.path_of(m2.shards[0])
    ShardClipDataset([path], k=1).get_clip(0, 2)
    with pytest.raises(UserError, match=r"shard-n000-00000\.h5: video 'noflow' flow pair 1 is missing"):
        ShardClipDataset([path], k=3).get_clip(0, 1)
    with schema.open_shard(path, "r+") as h5:
        z = np.zeros((2, 3, 5), np.float32)
        for i in range(3):
            schema.write_flow_pair(h5, "noflow", i, z, z)
    assert ShardClipDataset([path], k=3).get_clip(0, 1)["fwd"].shape == (2, 2, 3, 5)
    with pytest.raises(UserError, match=r"nope\.h5: shard not found"):
        ShardClipDataset([str(tmp_path / "nope.h5")], k=1)


def test_corrupt_jpeg_body_is_named_at_read_time(tmp_path):
    ok = fake_sources.encode((np.random.default_rng(1).random((H, W, 3)) * 255).astype(np.uint8))
    broken = ok[: ok.index(b"\xff\xda") + 30]
    fake_sources.write_frame_folder(tmp_path / "src", "train", "v", jpegs=[ok, broken])
    m = pack(PackConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), nodes=1, progress=False))
    ds = ShardClipDataset([m.path_of(m.shards[0])], k=1)
    ds.get_clip(0, 0)
    with pytest.raises(UserError, match=r"shard-n000-00000\.h5: video 'v' frame 1: cannot decode JPEG"):
        ds.get_clip(0, 1)
