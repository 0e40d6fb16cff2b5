"""hdf5_tools verify/info and the shard schema: injected corruption is caught and named; h5ls reads shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from shard_bytes import file_offset

from hdf5_tools import fake_sources, schema
from hdf5_tools.pack import PackConfig, pack
from hdf5_tools.verify import verify_shard
from plumbing.errors import UserError


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """One shard with two 5-frame videos, flows for every pair; returns (shard path, jpegs, flows)."""
    root = tmp_path_factory.mktemp("packed")
    rng = np.random.default_rng(5)
    jpegs, flows = {}, {}
    for name in ("alpha", "beta"):
        rgb = (rng.random((5, 32, 48, 3)) * 255).astype(np.uint8)
        jpegs[name] = fake_sources.write_frame_folder(root / "src", "train", name, rgb)
        flows[name] = fake_sources.random_flows(rng, 4, 32, 48)
        fake_sources.write_seed_flows(root / "flow", "train", name, *flows[name])
    m = pack(
        PackConfig(src=str(root / "src"), out=str(root / "out"), nodes=1, flows=str(root / "flow"), progress=False)
    )
    return m.path_of(m.shards[0]), jpegs, flows


def _copy(packed, tmp_path):
    """A copy of the packed shard without the manifest beside it (so only the content checks run)."""
    dst = tmp_path / "copy.h5"
    shutil.copyfile(packed[0], dst)
    return dst


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hdf5_tools.cli", *args], capture_output=True, text=True)


def test_clean_shard_verifies_deep(packed):
    rep = verify_shard(packed[0], deep=True)
    assert rep.ok, rep.problems
    r = _cli("verify", "--deep", packed[0])
    assert r.returncode == 0 and r.stdout.strip() == f"{packed[0]}: ok"


def test_bit_flip_in_frame_bytes_names_video_and_frame(packed, tmp_path):
    path = _copy(packed, tmp_path)
    jpegs = packed[1]["beta"]
    off = file_offset(path, "beta", schema.JPEG) + len(jpegs[0]) + len(jpegs[1]) + len(jpegs[2]) // 2
    _flip(path, off)
    rep = verify_shard(str(path))
    assert rep.problems == ["video 'beta' frame 2: JPEG bytes fail their CRC32"]
    r = _cli("verify", str(path))
    assert r.returncode == 1
    assert f"{path}: video 'beta' frame 2: JPEG bytes fail their CRC32" in r.stderr.splitlines()
    with schema.open_shard(path) as h5, pytest.raises(UserError, match=r"copy\.h5: video 'beta' frame 2: JPEG"):
        schema.read_frame_jpeg(h5, "beta", 2)


def test_bit_flip_in_flow_chunk_names_pair(packed, tmp_path):
    path = _copy(packed, tmp_path)
    _flip(path, file_offset(path, "alpha", schema.FLOW_BWD, 3) + 17)
    rep = verify_shard(str(path))
    assert rep.problems == ["video 'alpha' flow_bwd pair 3: flow chunk fails its CRC32"]
    with schema.open_shard(path) as h5:
        schema.read_flows(h5, "alpha", 0, 3)  # pairs 0..2 are intact
        with pytest.raises(UserError, match=r"copy\.h5: video 'alpha' flow_bwd pair 3 fails its CRC32"):
            schema.read_flows(h5, "alpha", 2, 2)


def test_truncated_shard_is_named(packed, tmp_path):
    path = _copy(packed, tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    rep = verify_shard(str(path))
    assert not rep.ok
    r = _cli("verify", str(path))
    assert r.returncode == 1 and str(path) in r.stderr
    # With the manifest beside it, the size check names the truncation itself.
    out = tmp_path / "withmanifest"
    shutil.copytree(packed[0].rsplit("/", 1)[0], out)
    shard = out / packed[0].rsplit("/", 1)[1]
    with open(shard, "r+b") as f:
        f.truncate(size - 100)
    rep = verify_shard(str(shard))
    assert rep.problems[0] == f"file has {size - 100} bytes, the manifest says {size} (truncated or changed)"


def test_deleted_dataset_and_unknown_schema_version(packed, tmp_path):
    path = _copy(packed, tmp_path)
    with h5py.File(path, "r+") as h5:
        del h5["videos/beta/flow_fwd"]
    assert verify_shard(str(path)).problems == ["video 'beta': missing datasets ['flow_fwd']"]
    with h5py.File(path, "r+") as h5:
        h5.attrs["schema_version"] = 99
    assert verify_shard(str(path)).problems == ["unknown schema_version 99 (this code reads version 1)"]
    with pytest.raises(UserError, match=r"copy\.h5: unknown schema_version 99"):
        schema.open_shard(path)


def test_deep_catches_a_jpeg_that_does_not_decode(tmp_path):
    """A frame whose header parses but whose body is garbage passes pack and CRCs; --deep catches it."""
    ok = fake_sources.encode((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    sos = ok.index(b"\xff\xda")  # start of scan: the header before it stays intact
    broken = ok[: sos + 40]
    fake_sources.write_frame_folder(tmp_path / "src", "train", "v", jpegs=[ok, broken, ok])
    m = pack(PackConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), nodes=1, progress=False))
    shard = m.path_of(m.shards[0])
    assert verify_shard(shard).ok
    probs = verify_shard(shard, deep=True).problems
    assert len(probs) == 1 and probs[0].startswith("video 'v' frame 1: JPEG does not decode")


def test_h5ls_reads_a_shard_without_plugins(packed):
    h5ls = shutil.which("h5ls")
    if h5ls is None:
        pytest.skip("h5ls not installed")
    r = subprocess.run([h5ls, "-r", packed[0]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "/videos/alpha/jpeg" in r.stdout
    assert "/videos/alpha/flow_fwd Dataset {4/Inf, 2, 4, 6}" in " ".join(r.stdout.split())
    r = subprocess.run(
        [shutil.which("h5dump"), "-d", "/videos/beta/jpeg_length", packed[0]], capture_output=True, text=True
    )
    assert r.returncode == 0
    lengths = [len(b) for b in (packed[1]["beta"])]
    assert ", ".join(map(str, lengths)) in " ".join(r.stdout.split())


def test_info_reports_counts_bytes_and_nodes(packed):
    r = _cli("info", "--json", packed[0].rsplit("/", 1)[0] + "/manifest.json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    (s,) = data["shards"]
    assert (s["videos"], s["frames"], s["pairs"], s["pairs_present"], s["node"]) == (2, 10, 8, 8, 0)
    assert s["jpeg_bytes"] == sum(len(b) for v in packed[1].values() for b in v)
    assert s["bytes_per_flow"] == 2 * 4 * 6 * 2  # float16 [2, 4, 6], uncompressed
    r = _cli("info", packed[0])
    assert r.returncode == 0 and "total: 1 shards, 2 videos, 10 frames, flows 8/8 pairs" in r.stdout


def test_write_flow_pair_api_for_flow_compute(tmp_path):
    """The flow engineer's API: pack without flows, then fill pairs one by one (resumable)."""
    rgb = (np.random.default_rng(2).random((4, 20, 30, 3)) * 255).astype(np.uint8)
    fake_sources.write_frame_folder(tmp_path / "src", "val", "v", rgb)
    m = pack(PackConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), nodes=1, progress=False))
    path = m.path_of(m.shards[0])
    with schema.open_shard(path, "r+") as h5:
        (info,) = schema.list_videos(h5)
        assert (info.num_frames, info.flow_height, info.flow_width, info.flows_present) == (4, 3, 4, 0)
        assert not schema.flow_pair_present(h5, "v", 1)
        f = np.full((2, 3, 4), 1.25, np.float32)
        schema.write_flow_pair(h5, "v", 1, f, -f)
        assert schema.flows_present(h5, "v").tolist() == [False, True, False]
        with pytest.raises(ValueError, match=r"must have shape \(2, 3, 4\), got \(2, 4, 3\)"):
            schema.write_flow_pair(h5, "v", 0, np.zeros((2, 4, 3)), np.zeros((2, 4, 3)))
        with pytest.raises(UserError, match="flow pair 0 is missing"):
            schema.read_flows(h5, "v", 0, 2)
        with pytest.raises(UserError, match=r"no video 'w'"):
            schema.read_frame_jpeg(h5, "w", 0)
    with schema.open_shard(path) as h5:
        fwd, bwd = schema.read_flows(h5, "v", 1, 1)
        assert fwd.dtype == np.float32 and float(fwd.max()) == 1.25 and float(bwd.min()) == -1.25
        assert schema.read_frame_jpeg(h5, "v", 3) == (tmp_path / "src/images/val/v/00004.jpg").read_bytes()
    # Flow chunks are allocated when written, so the file grew: the stale manifest entry is reported.
    assert "the manifest says" in verify_shard(path).problems[0]
    from hdf5_tools.manifest import refresh_manifest

    refresh_manifest(tmp_path / "out" / "manifest.json")
    assert verify_shard(path).ok


def test_manifest_listing_a_missing_file_is_a_one_line_error(packed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(packed[0].rsplit("/", 1)[0], out)
    shard = next(out.glob("shard-*.h5"))
    shard.unlink()
    r = _cli("info", str(out / "manifest.json"))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"hdf5_tools info: error: {out / 'manifest.json'}: shard 0 lists a missing file {shard}"
    )
    data = json.loads((out / "manifest.json").read_text())
    data["schema_version"] = 7
    (out / "manifest.json").write_text(json.dumps(data))
    r = _cli("info", str(out / "manifest.json"))
    assert r.returncode == 2 and "unknown schema_version 7" in r.stderr
