"""hdf5_tools pack: round trips (frames, seed .pth flows, .flo flows, synth), planning, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hdf5_tools import fake_sources, schema
from hdf5_tools import pack as pack_mod
from hdf5_tools.manifest import load_manifest
from hdf5_tools.pack import PackConfig, pack
from plumbing.cli import call
from plumbing.errors import UserError

SIZE = (64, 48)  # W, H -> flows 6 x 8


def _fp16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def rendered():
    """Two rendered synthetic videos (rgb, fwd, bwd at full resolution)."""
    return {f"vid{i}": fake_sources.render_frames(i, 5 + i, SIZE) for i in range(2)}


def _make_src(root, rendered, splits=("train", "val")):
    jpegs = {}
    for (name, (rgb, _, _)), split in zip(rendered.items(), splits):
        jpegs[name] = fake_sources.write_frame_folder(root, split, name, rgb)
    return jpegs


def _cfg(src, out, **kw):
    return PackConfig(src=str(src), out=str(out), progress=False, **kw)


def test_round_trip_jpeg_bytes_identical_and_seed_pth_flows(tmp_path, rendered):
    src = tmp_path / "src"
    jpegs = _make_src(src, rendered)
    rng = np.random.default_rng(0)
    flows = {}
    for (name, (rgb, _, _)), split in zip(rendered.items(), ("train", "val")):
        fwd, bwd = fake_sources.random_flows(rng, rgb.shape[0] - 1, rgb.shape[1], rgb.shape[2])
        fake_sources.write_seed_flows(tmp_path / "flow", split, name, fwd, bwd)
        flows[name] = (fwd, bwd)
    m = pack(_cfg(src, tmp_path / "out", nodes=1, flows=str(tmp_path / "flow")))
    assert len(m.shards) == 1 and m.shards[0].num_videos == 2
    with schema.open_shard(m.path_of(m.shards[0])) as h5:
        infos = {v.name: v for v in schema.list_videos(h5)}
        assert infos["vid0"].split == "train" and infos["vid1"].split == "val"
        assert (infos["vid1"].num_frames, infos["vid1"].height, infos["vid1"].width) == (6, 48, 64)
        assert (infos["vid1"].flow_height, infos["vid1"].flow_width) == (6, 8)
        for name, bs in jpegs.items():
            assert [schema.read_frame_jpeg(h5, name, i) for i in range(len(bs))] == bs
            fwd, bwd = schema.read_flows(h5, name, 0, len(bs) - 1)
            np.testing.assert_array_equal(fwd, _fp16(flows[name][0]))
            np.testing.assert_array_equal(bwd, _fp16(flows[name][1]))
            assert infos[name].flows_present == len(bs) - 1


def test_seed_pth_backward_is_reversed_into_time_order(tmp_path, rendered):
    """The seed stored backward flows in reverse time; the shard must hold bwd[i]: frame i+1 -> i."""
    import torch

    src = tmp_path / "src"
    _make_src(src, {"vid0": rendered["vid0"]}, splits=("train",))
    pairs = rendered["vid0"][0].shape[0] - 1
    # Pair i's flows are filled with constants that identify the pair and the direction.
    fwd = np.stack([np.full((2, 6, 8), i, np.float32) for i in range(pairs)])
    bwd = np.stack([np.full((2, 6, 8), 100 + i, np.float32) for i in range(pairs)])
    (tmp_path / "flow/forward").mkdir(parents=True)
    (tmp_path / "flow/backward").mkdir(parents=True)
    # Written by hand the way the seed did: b_j = RAFT(I_{N-1-j}, I_{N-2-j}), i.e. bwd reversed.
    torch.save(torch.from_numpy(fwd), tmp_path / "flow/forward/vid0.pth")
    torch.save(torch.from_numpy(bwd[::-1].copy()), tmp_path / "flow/backward/vid0.pth")
    m = pack(_cfg(src, tmp_path / "out", nodes=1, flows=str(tmp_path / "flow")))
    with schema.open_shard(m.path_of(m.shards[0])) as h5:
        f, b = schema.read_flows(h5, "vid0", 1, 2)
    assert f[:, 0, 0, 0].tolist() == [1.0, 2.0]
    assert b[:, 0, 0, 0].tolist() == [101.0, 102.0]


def _write_flo_flows(flow_root, split: str, video: str, fwd: np.ndarray, bwd: np.ndarray) -> None:
    """Full-resolution ``flow_root/<split>/<video>/{forward,backward}/%05d.flo`` (pair 1 = frames 1, 2)."""
    from flow.io import write_flo

    for direction, arr in (("forward", fwd), ("backward", bwd)):
        d = flow_root / split / video / direction
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(arr):
            write_flo(d / f"{i + 1:05d}.flo", f)


def test_flo_flows_are_area_downsampled_to_one_eighth_units(tmp_path, rendered):
    src = tmp_path / "src"
    _make_src(src, {"vid1": rendered["vid1"]}, splits=("train",))
    rgb, fwd, bwd = rendered["vid1"]
    _write_flo_flows(tmp_path / "flow", "train", "vid1", fwd, bwd)
    m = pack(_cfg(src, tmp_path / "out", nodes=1, flows=str(tmp_path / "flow")))
    with schema.open_shard(m.path_of(m.shards[0])) as h5:
        f, b = schema.read_flows(h5, "vid1", 0, rgb.shape[0] - 1)
    assert f.shape == (5, 2, 6, 8)
    # Block mean over each 8x8 cell divided by 8, checked directly for one cell.
    expect = fwd[2, :, 8:16, 16:24].mean(axis=(1, 2)) / 8
    np.testing.assert_allclose(f[2, :, 1, 2], expect, rtol=2e-3, atol=2e-3)
    bwd8 = np.stack([_block_mean8(x) for x in bwd])
    np.testing.assert_allclose(b, _fp16(bwd8), atol=1e-6)
    assert np.abs(bwd8).max() > 0.1  # the fixture really moves


def _block_mean8(flow):
    return flow.reshape(2, 6, 8, 8, 8).mean(axis=(2, 4)) / 8


def test_synth_source_packs_exact_flows(tmp_path):
    from synth import video_seed

    m = pack(_cfg("synth:videos=2,frames=4,size=64x48,seed=3", tmp_path / "out", nodes=1))
    rgb, fwd, _ = fake_sources.render_frames(video_seed(3, 1), 4, SIZE)
    with schema.open_shard(m.path_of(m.shards[0])) as h5:
        infos = schema.list_videos(h5)
        assert [(v.name, v.split) for v in infos] == [("synth-00000", "train"), ("synth-00001", "val")]
        f, _ = schema.read_flows(h5, "synth-00001", 0, 3)
        img = __import__("simplejpeg").decode_jpeg(schema.read_frame_jpeg(h5, "synth-00001", 0))
    np.testing.assert_allclose(f, _fp16(np.stack([_block_mean8(x) for x in fwd])), atol=1e-6)
    assert np.abs(img.astype(int) - rgb[0]).mean() < 8  # JPEG of the same rendered frame


def test_nodes_balance_frames_and_shard_size_splits(tmp_path):
    src = tmp_path / "src"
    lengths = [9, 7, 6, 5, 4, 3]
    frame = fake_sources.encode(np.full((16, 16, 3), 99, np.uint8))
    for i, n in enumerate(lengths):
        fake_sources.write_frame_folder(src, "train", f"v{i}", jpegs=[frame] * n)
    m = pack(_cfg(src, tmp_path / "out", nodes=2, shard_size=len(frame) * 10))
    per_node = [sum(s.num_frames for s in m.shards if s.node == n) for n in range(2)]
    assert sorted(per_node) == [17, 17]
    assert all(s.bytes > 0 and s.num_frames <= 10 or s.num_videos == 1 for s in m.shards)
    assert len(m.shards) >= 4
    listed = sorted(v["name"] for s in m.shards for v in s.videos)
    assert listed == [f"v{i}" for i in range(6)]
    m2 = load_manifest(tmp_path / "out" / "manifest.json")
    assert [s.crc32 for s in m2.shards] == [s.crc32 for s in m.shards]


def test_shard_size_is_a_byte_count(tmp_path):
    # pack.parse_size became plumbing.parse.parse_bytes (its table is in tests/test_parse.py)
    with pytest.raises(UserError, match="^--shard-size: 'eight' is not a size in bytes"):
        call(pack_mod.command, ["synth:videos=1", str(tmp_path / "out"), "--nodes", "1", "--shard-size", "eight"])
    assert not (tmp_path / "out").exists()


def test_interrupted_pack_resumes_without_redoing_finished_shards(tmp_path, rendered, monkeypatch):
    src = tmp_path / "src"
    frame = fake_sources.encode(np.full((16, 16, 3), 7, np.uint8))
    for i in range(4):
        fake_sources.write_frame_folder(src, "train", f"v{i}", jpegs=[frame] * 3)
    out = tmp_path / "out"
    real = pack_mod.write_shard
    calls = []

    def dying(plan, *a, **kw):
        calls.append(plan.file)
        if len(calls) == 3:
            # Leave a partial file behind, as a killed writer would, then die.
            (out / f".{plan.file}{pack_mod.PARTIAL_SUFFIX}").write_bytes(b"half")
            raise KeyboardInterrupt
        return real(plan, *a, **kw)

    monkeypatch.setattr(pack_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        pack(_cfg(src, out, nodes=1, shard_size=len(frame) * 3))
    done = sorted(p.name for p in out.glob("shard-*.h5"))
    assert len(done) == 2 and not (out / "manifest.json").exists()
    mtimes = {p: os.stat(out / p).st_mtime_ns for p in done}
    calls.clear()
    monkeypatch.setattr(
        pack_mod, "write_shard", lambda plan, *a, **kw: (calls.append(plan.file), real(plan, *a, **kw))[1]
    )
    m = pack(_cfg(src, out, nodes=1, shard_size=len(frame) * 3))
    assert len(m.shards) == 4 and sorted(calls) == sorted(set(s.file for s in m.shards) - set(done))
    assert {p: os.stat(out / p).st_mtime_ns for p in done} == mtimes
    assert not list(out.glob(".*.partial"))
    # A different plan into the same OUT is refused, naming the folder.
    with pytest.raises(UserError, match="different pack plan"):
        pack(_cfg(src, out, nodes=2, shard_size=len(frame) * 3))


def test_parallel_pack_equals_serial(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    for i in range(4):
        fake_sources.write_frame_folder(src, "train", f"v{i}", rgb=rng.integers(0, 255, (3, 16, 16, 3), np.uint8))
    a = pack(_cfg(src, tmp_path / "a", nodes=2, shard_size=1, jobs=1))
    b = pack(_cfg(src, tmp_path / "b", nodes=2, shard_size=1, jobs=2))
    assert [(s.file, s.node, s.num_frames, s.videos) for s in a.shards] == [
        (s.file, s.node, s.num_frames, s.videos) for s in b.shards
    ]
    for s in a.shards:
        with schema.open_shard(a.path_of(s)) as h5a, schema.open_shard(b.path_of(s)) as h5b:
            v = s.videos[0]["name"]
            assert [schema.read_frame_jpeg(h5a, v, i) for i in range(3)] == [
                schema.read_frame_jpeg(h5b, v, i) for i in range(3)
            ]
    # A bad frame found by a worker is the same one-line error, and leaves no partial shard.
    (src / "images/train/v2/00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"v2/00002\.jpg: not a JPEG file"):
        pack(_cfg(src, tmp_path / "c", nodes=2, shard_size=1, jobs=2))
    assert not list((tmp_path / "c").glob(".*.partial"))
    assert "shard-n000-00001.h5" not in [p.name for p in (tmp_path / "c").glob("*.h5")]


def test_corrupt_jpeg_and_mixed_sizes_are_one_line_user_errors(tmp_path):
    src = tmp_path / "src"
    ok = fake_sources.encode(np.zeros((16, 16, 3), np.uint8))
    fake_sources.write_frame_folder(src, "train", "bad", jpegs=[ok, b"\xff\xd8garbage", ok])
    with pytest.raises(UserError, match=r"bad/00002\.jpg: corrupt JPEG header"):
        pack(_cfg(src, tmp_path / "out", nodes=1))
    assert not list((tmp_path / "out").glob("*.h5")) and not list((tmp_path / "out").glob(".*.partial"))
    src2 = tmp_path / "src2"
    other = fake_sources.encode(np.zeros((16, 24, 3), np.uint8))
    fake_sources.write_frame_folder(src2, "train", "mixed", jpegs=[ok, ok, other])
    with pytest.raises(UserError, match=r"mixed/00003\.jpg: frame size 24x16 differs .*mixed frame sizes"):
        pack(_cfg(src2, tmp_path / "out2", nodes=1))


def test_flow_shape_mismatch_names_the_file(tmp_path, rendered):
    src = tmp_path / "src"
    _make_src(src, {"vid0": rendered["vid0"]}, splits=("train",))
    f = np.zeros((2, 2, 6, 8), np.float32)  # 2 pairs, but vid0 has 5 frames
    fake_sources.write_seed_flows(tmp_path / "flow", "train", "vid0", f, f)
    with pytest.raises(UserError, match=r"vid0\.pth: flow shape \(2, 2, 6, 8\) does not match"):
        pack(_cfg(src, tmp_path / "out", nodes=1, flows=str(tmp_path / "flow")))


def test_cli_pack_then_bad_src_exit_codes(tmp_path):
    src = tmp_path / "src"
    black = fake_sources.encode(np.zeros((16, 16, 3), np.uint8))
    fake_sources.write_frame_folder(src, "train", "v0", jpegs=[black] * 2)

    def run(*a):
        return subprocess.run([sys.executable, "-m", "hdf5_tools.cli", *a], capture_output=True, text=True)

    r = run("pack", str(src), str(tmp_path / "out"), "--nodes", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "packed 1 videos, 2 frames into 1 shards" in r.stdout
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert data["nodes"] == 1 and data["shards"][0]["file"] == "shard-n000-00000.h5"
    r = run("pack", str(tmp_path / "nope"), str(tmp_path / "out2"), "--nodes", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"hdf5_tools pack: error: SRC {tmp_path / 'nope'}: not a folder (nor a synth:... spec)"
    ]


def test_one_rule_resolves_shard_paths(tmp_path):
    """hdf5_tools.manifest.resolve_shards: what `hdf5_tools flow SHARDS...` and the trainer's data.shards accept."""
    from hdf5_tools.manifest import resolve_shards

    m = pack(_cfg(f"synth:videos=4,frames=3,size={SIZE[0]}x{SIZE[1]},seed=1", tmp_path / "p", nodes=2, shard_size=1))
    every = [m.path_of(s) for s in m.shards]
    node1 = [m.path_of(s) for s in m.shards if s.node == 1]
    manifest = str(tmp_path / "p" / "manifest.json")
    assert resolve_shards([str(tmp_path / "p")]) == every  # a folder with a manifest: all of it
    assert resolve_shards([manifest], node_index=1, num_nodes=2) == node1  # or one node's
    assert resolve_shards([str(tmp_path / "p" / "*.h5")]) == sorted(every)
    (tmp_path / "list.txt").write_text("# two shards\np/" + os.path.basename(every[0]) + "\n" + every[1] + "\n")
    assert resolve_shards([str(tmp_path / "list.txt")]) == [str(tmp_path / "p" / os.path.basename(every[0])), every[1]]
    for entries, message in [
        ([str(tmp_path / "nope.h5")], "data.shards: " + str(tmp_path / "nope.h5") + ": no such shard file or folder"),
        ([every[0], every[0]], "shard given twice"),
        ([str(tmp_path / "*.h5")], "matches no file"),
        ([str(tmp_path)], "no manifest.json and no .h5 shards in this folder"),
        ([manifest], "data.shards: the job has 3 nodes but the shards were packed for 2"),
    ]:
        with pytest.raises(UserError) as info:
            resolve_shards(
                entries,
                node_index=0 if "3 nodes" in message else None,
                num_nodes=3 if "3 nodes" in message else None,
                label="data.shards",
            )
        assert message in str(info.value)


def test_flow_coverage_counts_missing_pairs_from_the_manifest(tmp_path, rendered):
    from hdf5_tools import manifest as mf

    src = tmp_path / "src"
    _make_src(src, rendered)  # vid0: 5 frames (train), vid1: 6 frames (val), no flows
    m = pack(_cfg(src, tmp_path / "out", nodes=2, shard_size=1))
    cov = mf.flow_coverage(tmp_path / "out")  # the folder finds its manifest.json
    assert (cov.pairs, cov.present, cov.missing, cov.shards, cov.shards_incomplete, cov.complete) == (
        9,
        0,
        9,
        2,
        2,
        False,
    )
    full = pack(_cfg(f"synth:videos=3,frames=4,size={SIZE[0]}x{SIZE[1]},seed=0", tmp_path / "synth", nodes=1))
    cov = mf.flow_coverage(full)  # a Manifest object too; synth: carries its exact flows
    assert (cov.pairs, cov.present, cov.missing, cov.complete) == (9, 9, 0, True)
    # One shard filled, the manifest refreshed: only the other's pairs are missing.
    entry = next(s for s in m.shards if s.num_pairs == 4)
    with schema.open_shard(m.path_of(entry), "r+") as h5:
        schema.write_flows(h5, "vid0", np.zeros((4, 2, 6, 8), np.float32), np.zeros((4, 2, 6, 8), np.float32))
    mf.refresh_manifest(tmp_path / "out" / "manifest.json")
    cov = mf.flow_coverage(str(tmp_path / "out" / "manifest.json"))
    assert (cov.pairs, cov.present, cov.missing, cov.shards_incomplete) == (9, 4, 5, 1)


def test_a_file_that_is_not_a_manifest_says_so_in_one_line(tmp_path):
    from hdf5_tools.manifest import load_manifest

    m = pack(_cfg(f"synth:videos=1,frames=2,size={SIZE[0]}x{SIZE[1]},seed=0", tmp_path / "p", nodes=1))
    shard = m.path_of(m.shards[0])
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "other.json").write_text('{"format": "something.else"}')
    for path, message in [
        (
            shard,
            f"{shard}: cannot read manifest: this is an HDF5 shard; give the manifest.json that "
            "'hdf5_tools pack' wrote beside the shards (or its folder)",
        ),
        (
            tmp_path / "bin.json",
            f"{tmp_path / 'bin.json'}: cannot read manifest: this is not JSON text; give the "
            "manifest.json that 'hdf5_tools pack' wrote beside the shards (or its folder)",
        ),
        (tmp_path / "other.json", f"{tmp_path / 'other.json'}: not a shard manifest (format 'something.else')"),
        (tmp_path / "nope.json", f"{tmp_path / 'nope.json'}: manifest not found"),
    ]:
        with pytest.raises(UserError) as exc:
            load_manifest(path)
        assert str(exc.value) == message
    assert load_manifest(tmp_path / "p").nodes == 1  # a folder: its manifest.json
