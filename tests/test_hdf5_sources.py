"""Packing what synth.write_dataset writes (frames + .flo, and .mov videos); the fast
reader path (pread of the JPEG blob and flow chunks) and its corruption checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import simplejpeg
import torch
from shard_bytes import file_offset

from hdf5_tools import fake_sources, schema
from hdf5_tools.pack import PackConfig, pack
from hdf5_tools.reader import ShardReader
from pixpro_of.data import ShardClipDataset
from pixpro_of.data.shards import f16_to_f32
from plumbing.errors import UserError


@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory):
    from synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("synth") / "bdd"
    write_dataset(root, SynthConfig(videos=2, frames=5, size=(64, 48), fps=10, seed=2, format="bdd"))
    return root


def _block_mean8(flow):
    _, h, w = flow.shape
    return flow.reshape(2, h // 8, 8, w // 8, 8).mean(axis=(2, 4)) / 8


def test_write_dataset_frames_and_flo_flows_pack_exactly(synth_tree, tmp_path):
    from synth import render_video, video_seed

    m = pack(
        PackConfig(
            src=str(synth_tree), out=str(tmp_path / "out"), nodes=1, flows=str(synth_tree / "flow"), progress=False
        )
    )
    with schema.open_shard(m.path_of(m.shards[0])) as h5:
        infos = {v.name: v for v in schema.list_videos(h5)}
        assert sorted(infos) == ["synth-00000", "synth-00001"]
        v = infos["synth-00001"]
        assert (v.split, v.num_frames, v.width, v.height, v.flows_present) == ("val", 5, 64, 48, 4)
        assert schema.read_frame_jpeg(h5, v.name, 2) == (synth_tree / "images/val/synth-00001/00003.jpg").read_bytes()
        fwd, bwd = schema.read_flows(h5, v.name, 0, 4)
    truth = render_video(video_seed(2, 1), 5, size=(64, 48))
    np.testing.assert_allclose(fwd, np.stack([_block_mean8(f) for f in truth.fwd]), atol=2e-3)
    np.testing.assert_allclose(bwd, np.stack([_block_mean8(f) for f in truth.bwd]), atol=2e-3)
    assert np.abs(fwd).max() > 0.05  # the camera moves


def test_mov_videos_decode_at_fps_into_jpeg_frames(synth_tree, tmp_path):
    from synth import render_video, video_seed

    m = pack(
        PackConfig(src=str(synth_tree), out=str(tmp_path / "out"), nodes=1, src_kind="videos", fps=10, progress=False)
    )
    with schema.open_shard(m.path_of(m.shards[0])) as h5:
        v = {x.name: x for x in schema.list_videos(h5)}["synth-00000"]
        assert (v.num_frames, v.width, v.height, v.fps) == (5, 64, 48, 10.0)
        assert v.source.startswith("videos:") and v.source.endswith("synth-00000.mov")
        frames = [simplejpeg.decode_jpeg(schema.read_frame_jpeg(h5, v.name, i)) for i in range(5)]
    truth = render_video(video_seed(2, 0), 5, size=(64, 48)).rgb
    for i in range(5):  # H.264 then JPEG: close to the rendered frame with the same index
        errs = [np.abs(frames[i].astype(int) - truth[j]).mean() for j in range(5)]
        assert int(np.argmin(errs)) == i and errs[i] < 12
    # At 5 fps every other frame is kept.
    m5 = pack(
        PackConfig(src=str(synth_tree), out=str(tmp_path / "out5"), nodes=1, src_kind="videos", fps=5, progress=False)
    )
    assert {x["name"]: x["num_frames"] for s in m5.shards for x in s.videos}["synth-00000"] == 3


def test_f16_to_f32_is_exact_on_both_paths():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(0, 30, 5000), [0.0, -0.0, 6e-8, -6e-5, 65504.0, -65504.0]]).astype(np.float16)
    expect = a.astype(np.float32)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got = f16_to_f32(a.reshape(-1, 2))
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got.reshape(-1).view(np.uint32), expect.view(np.uint32))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def one_shard(tmp_path):
    rng = np.random.default_rng(3)
    rgb = (rng.random((6, 32, 48, 3)) * 255).astype(np.uint8)
    jpegs = fake_sources.write_frame_folder(tmp_path / "src", "train", "v", rgb)
    fwd, bwd = fake_sources.random_flows(rng, 5, 32, 48)
    fake_sources.write_seed_flows(tmp_path / "flow", "train", "v", fwd, bwd)
    m = pack(
        PackConfig(
            src=str(tmp_path / "src"), out=str(tmp_path / "out"), nodes=1, flows=str(tmp_path / "flow"), progress=False
        )
    )
    path = tmp_path / "shard.h5"
    shutil.copyfile(m.path_of(m.shards[0]), path)
    return path, jpegs, fwd, bwd


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))


def test_fast_reader_reads_through_pread_and_matches_h5py(one_shard):
    path, jpegs, fwd, bwd = one_shard
    r = ShardReader(path)
    try:
        h = r._handles("v")
        assert h.blob_at > 0 and (h.fwd_at > 0).all() and (h.bwd_at > 0).all()
        assert [r.jpeg("v", i) for i in range(6)] == jpegs
        f, b = r.flows("v", 1, 4)
        with schema.open_shard(path) as h5:
            f2, b2 = schema.read_flows(h5, "v", 1, 4)
        np.testing.assert_array_equal(f, f2)
        np.testing.assert_array_equal(b, b2)
        np.testing.assert_array_equal(b, bwd[1:5].astype(np.float16).astype(np.float32))
    finally:
        r.close()


def test_fast_reader_names_bit_flips_in_flow_chunks_and_frames(one_shard):
    path, jpegs, _, _ = one_shard
    _flip(path, file_offset(path, "v", schema.FLOW_FWD, 2) + 10)  # chunks are 96 bytes
    _flip(path, file_offset(path, "v", schema.JPEG) + sum(len(b) for b in jpegs[:3]) + 50)
    ds = ShardClipDataset([path], k=2)
    ds.get_clip(0, 0)  # frames 0, 1 and pair 0 are intact
    with pytest.raises(UserError, match=r"shard\.h5: video 'v' frame 3: JPEG bytes fail their CRC32"):
        ds.get_clip(0, 2)
    ds.get_clip(0, 4)
    ds3 = ShardClipDataset([path], k=3)
    with pytest.raises(UserError, match=r"shard\.h5: video 'v' flow_fwd pair 2 fails its CRC32"):
        ds3.get_clip(0, 2)
    # Without CRC checks the damaged bytes are returned as they are.
    assert ShardClipDataset([path], k=3, check_crc=False).get_clip(0, 2)["fwd"].shape == (2, 2, 4, 6)


def test_truncated_shard_is_named_by_the_reader(one_shard):
    path, _, _, _ = one_shard
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4096)
    with pytest.raises(UserError, match=r"shard\.h5: cannot open shard \(truncated or not HDF5"):
        ShardClipDataset([path], k=1)
    with pytest.raises(UserError, match=r"shard\.h5: cannot open shard"):
        ShardReader(path)


def test_full_resolution_flows_are_reduced_by_the_one_shard_rule():
    # hdf5_tools has no rule of its own: ceil(H/8) x ceil(W/8), flow.ops.full_flow_to_shard's edges
    import torch

    from flow.ops import full_flow_to_shard
    from hdf5_tools.sources import downsample_flow

    full = np.random.default_rng(0).normal(size=(3, 2, 21, 30)).astype(np.float32)
    low = downsample_flow(full)
    assert low.shape == (3, 2, 3, 4) and low.dtype == np.float32
    assert np.array_equal(low, full_flow_to_shard(torch.from_numpy(full)).numpy())
    assert np.array_equal(downsample_flow(full[0]), low[0])


def _pack_cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "hdf5_tools.cli", "pack", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _packed_videos(out):
    import json

    return sorted(
        (v["split"], v["name"]) for s in json.loads((out / "manifest.json").read_text())["shards"] for v in s["videos"]
    )


def test_pack_takes_the_folder_a_user_gives_and_packs_the_train_split_unless_told(synth_tree, tmp_path):
    # BDD100K's videos/ folder itself (as the README's line gives it): the train split only, named.
    r = _pack_cli(synth_tree / "videos", tmp_path / "v", "--nodes", "1")
    assert r.returncode == 0, r.stderr
    assert "packed 1 videos, 5 frames into 1 shards" in r.stdout and "from split(s) train:" in r.stdout
    assert "not packed: split(s) val (--split NAME or --split all packs them)" in r.stdout
    assert _packed_videos(tmp_path / "v") == [("train", "synth-00000")]
    with schema.open_shard(str(tmp_path / "v" / "shard-n000-00000.h5")) as h5:
        assert schema.list_videos(h5)[0].source.startswith("videos:")
    # The images/ folder itself with the train split's .flo flows: no val video asks for flows.
    r = _pack_cli(synth_tree / "images", tmp_path / "i", "--nodes", "1", "--flows", synth_tree / "flow" / "train")
    assert r.returncode == 0, r.stderr
    assert _packed_videos(tmp_path / "i") == [("train", "synth-00000")]
    with schema.open_shard(str(tmp_path / "i" / "shard-n000-00000.h5")) as h5:
        assert schema.list_videos(h5)[0].flows_present == 4
    # --split all / repeated --split: every split, named in the output.
    r = _pack_cli(synth_tree, tmp_path / "a", "--nodes", "1", "--split", "all")
    assert r.returncode == 0 and "from split(s) train, val:" in r.stdout and "not packed" not in r.stdout
    assert _packed_videos(tmp_path / "a") == [("train", "synth-00000"), ("val", "synth-00001")]
    r = _pack_cli(synth_tree / "images", tmp_path / "b", "--nodes", "1", "--split", "val", "--split", "train")
    assert r.returncode == 0 and _packed_videos(tmp_path / "b") == _packed_videos(tmp_path / "a")
    # A synth: spec names its videos: all of them, as before.
    r = _pack_cli("synth:videos=2,frames=3,size=32x24,seed=0", tmp_path / "s", "--nodes", "1")
    assert r.returncode == 0 and "from split(s) train, val:" in r.stdout
    # Mistakes: one line naming the option or SRC, exit 2.
    for args, message in [
        (
            (synth_tree, tmp_path / "x", "--nodes", "1", "--split", "test"),
            f"SRC {synth_tree}: no videos in split(s) test (splits here: train, val); choose with --split NAME "
            "or --split all",
        ),
        (
            (synth_tree, tmp_path / "x", "--nodes", "1", "--split", "all", "--split", "val"),
            "--split all packs every split; give it alone",
        ),
        (
            (synth_tree / "flow", tmp_path / "x", "--nodes", "1"),
            f"SRC {synth_tree / 'flow'}: expected images/{{split}}/<video>/*.jpg or videos/{{split}}/*.mov under it "
            f"(or SRC to be that images/ or videos/ folder)",
        ),
    ]:
        r = _pack_cli(*args)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"hdf5_tools pack: error: {message}"], r.stderr


def test_find_videos_filters_splits_before_opening_videos(synth_tree, tmp_path):
    from hdf5_tools import sources

    (tmp_path / "videos" / "val").mkdir(parents=True)
    (tmp_path / "videos" / "val" / "broken.mov").write_bytes(b"not a video")  # never opened for train
    shutil.copytree(synth_tree / "videos" / "train", tmp_path / "videos" / "train")
    kind, videos = sources.find_videos(str(tmp_path / "videos"), splits=["train"])
    assert kind == "videos" and [(v.split, v.name) for v in videos] == [("train", "synth-00000")]
    assert sources.splits_of(str(tmp_path)) == ["train", "val"]
    with pytest.raises(UserError, match="broken.mov: cannot open video"):
        sources.find_videos(str(tmp_path), splits=None)
    assert sources.splits_of("synth:videos=9,frames=2") == ["train", "val"]
    assert sources.splits_of("synth:videos=1,frames=2") == ["train"]
