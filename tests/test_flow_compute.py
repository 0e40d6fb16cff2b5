"""``hdf5_tools flow``: flows into shards, mpirun equality, resume after a kill, one-line errors."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch

from flow.estimators import make_estimator
from hdf5_tools import manifest as mf
from hdf5_tools import schema
from hdf5_tools.cli import main as shard_main

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def encode(rgb):
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=92, colorspace="RGB")


def synth_frames(seed, frames, size):
    from synth import render_video

    return render_video(seed, frames, size=size).rgb


def make_shards(folder, videos, size=(64, 48), manifest=True):
    """Shards from {shard_file: [(video, num_frames, seed), ...]}; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for shard, vids in videos.items():
        h5 = schema.create_shard(folder / shard)
        for name, n, seed in vids:
            rgb = synth_frames(seed, n, size)
            schema.add_video(
                h5,
                name,
                [encode(f) for f in rgb],
                split="train",
                height=size[1],
                width=size[0],
                fps=10.0,
                source="synth",
            )
        h5.close()
    if manifest:
        entries = [mf.describe_shard(str(folder / s), 0, str(folder)) for s in videos]
        mf.write_manifest(str(folder / mf.MANIFEST_NAME), mf.Manifest(nodes=1, shards=entries, root=str(folder)))
    return folder


def all_flows(folder):
    out = {}
    for p in sorted(Path(folder).glob("*.h5")):
        with schema.open_shard(p) as h5:
            for v in schema.list_videos(h5):
                g = h5[schema.VIDEOS][v.name]
                out[(p.name, v.name)] = (
                    g[schema.FLOW_FWD][()],
                    g[schema.FLOW_BWD][()],
                    schema.flows_present(h5, v.name),
                )
    return out


LAYOUT = {"a.h5": [("v0", 5, 1), ("v1", 4, 2)], "b.h5": [("v2", 6, 3)]}


def run_cli(args, env_extra=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run(
        [PY, "-m", "hdf5_tools", "flow", *args], cwd=REPO, env=env, capture_output=True, text=True, **kw
    )


def test_compute_dis_fills_every_pair_with_the_estimators_flow(tmp_path, capsys):
    src = make_shards(tmp_path / "src", LAYOUT)
    before = (src / "a.h5").read_bytes()
    rc = shard_main(
        [
            "flow",
            str(src),
            "--model",
            "dis",
            "--into",
            str(tmp_path / "out"),
            "--no-progress",
            "--chunk",
            "2",
            "--batch",
            "3",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    assert (src / "a.h5").read_bytes() == before  # --into leaves the source alone
    flows = all_flows(tmp_path / "out")
    assert set(flows) == {("a.h5", "v0"), ("a.h5", "v1"), ("b.h5", "v2")}
    est = make_estimator("dis")
    with schema.open_shard(tmp_path / "out" / "b.h5") as h5:
        rgb = np.stack(
            [simplejpeg.decode_jpeg(schema.read_frame_jpeg(h5, "v2", i), colorspace="RGB") for i in range(6)]
        )
        fwd, bwd = schema.read_flows(h5, "v2", 0, 5)
    assert fwd.shape == (5, 2, 6, 8)
    ref_f = est(rgb[:-1], rgb[1:]).low.numpy()
    ref_b = est(rgb[1:], rgb[:-1]).low.numpy()
    np.testing.assert_allclose(fwd, ref_f.astype(np.float16).astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(bwd, ref_b.astype(np.float16).astype(np.float32), atol=1e-6)
    assert np.abs(fwd).max() > 0.05  # real motion, not an empty dataset
    for _fwd, _bwd, present in flows.values():
        assert present.all()
    m = mf.load_manifest(tmp_path / "out")  # refreshed: the copy's checksums match the filled files
    for e in m.shards:
        assert e.crc32 == mf.file_crc32(m.path_of(e)) and e.pairs_present == e.num_pairs
        assert e.sha256 == mf.file_digests(m.path_of(e))[1]  # the strong hash stage decides by follows the flows
    out = capsys.readouterr().out
    assert "12 pair(s) with dis" in out and "pairs/s" in out
    # A second run has nothing to do.
    assert shard_main(["flow", str(tmp_path / "out"), "--model", "dis", "--no-progress"]) == 0
    assert "skipping 12 pair(s) already present" in capsys.readouterr().out


@pytest.mark.mpi
def test_compute_under_mpirun_np2_writes_the_same_flows_as_one_process(tmp_path):
    # Pairs: v0 4, v1 3, v2 3, v3 2. Ranks get v0 + v3 (rank 0) and v1 + v2 (rank 1); a.h5 is owned
    # by rank 1, so rank 0 fetches v0's frames from rank 1 and sends its flows back.
    src = make_shards(tmp_path / "src", {"a.h5": [("v0", 5, 1), ("v1", 4, 2), ("v2", 4, 3)], "b.h5": [("v3", 3, 4)]})
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(src, one)
    shutil.copytree(src, two)
    r1 = run_cli([str(one), "--model", "dis", "--no-progress", "--chunk", "2", "--threads", "1"])
    assert r1.returncode == 0, r1.stderr
    env = {
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
    }
    r2 = subprocess.run(
        [
            "mpirun",
            "-np",
            "2",
            "--oversubscribe",
            PY,
            "-m",
            "hdf5_tools",
            "flow",
            str(two),
            "--model",
            "dis",
            "--no-progress",
            "--chunk",
            "2",
            "--threads",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, **env),
        timeout=240,
    )
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "rank 0: 6 pair(s)" in r2.stdout and "rank 1: 6 pair(s)" in r2.stdout, r2.stdout
    a, b = all_flows(one), all_flows(two)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][2].all()
        for x, y in zip(a[k], b[k]):
            assert np.array_equal(x, y), k


def _random_raft_checkpoint(path):
    from torchvision.models.optical_flow import raft_small

    from flow.raft_weights import torchvision_to_official

    torch.manual_seed(0)
    torch.save(torchvision_to_official(raft_small().state_dict(), small=True), path)


@pytest.mark.slow
def test_killed_compute_resumes_and_ends_with_the_same_flows(tmp_path):
    layout = {"k.h5": [("long", 16, 5)]}
    src = make_shards(tmp_path / "src", layout, size=(128, 128), manifest=False)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    shutil.copytree(src, ref)
    shutil.copytree(src, killed)
    ckpt = tmp_path / "raft-small.pth"
    _random_raft_checkpoint(ckpt)
    args = [
        "--model",
        "raft-small",
        "--weights",
        str(ckpt),
        "--iters",
        "2",
        "--chunk",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "-v",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [PY, "-m", "hdf5_tools", "flow", str(killed), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = 0
        for line in proc.stdout:
            if line.startswith("wrote "):
                seen += 1
                if seen == 3:
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with schema.open_shard(killed / "k.h5") as h5:  # still a readable shard
        present = schema.flows_present(h5, "long")
    assert 3 <= present.sum() < 15, present
    r = run_cli([str(killed), *args])
    assert r.returncode == 0, r.stderr
    assert f"skipping {present.sum()} pair(s) already present" in r.stdout
    assert r.stdout.count("wrote ") == 15 - present.sum()
    r = run_cli([str(ref), *args])
    assert r.returncode == 0, r.stderr
    a, b = all_flows(ref), all_flows(killed)
    for x, y in zip(a[("k.h5", "long")], b[("k.h5", "long")]):
        assert np.array_equal(x, y)
    assert b[("k.h5", "long")][2].all()


def test_sigterm_stops_after_the_current_chunk_with_exit_75(tmp_path):
    src = make_shards(tmp_path / "src", {"t.h5": [("v", 40, 7)]}, size=(160, 96), manifest=False)
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "hdf5_tools",
            "flow",
            str(src),
            "--model",
            "dis",
            "--chunk",
            "1",
            "--threads",
            "1",
            "--no-progress",
            "-v",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("wrote "):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("compute finished before the signal arrived")
    assert proc.returncode == 75, err
    assert "run the same command again to resume" in err
    with schema.open_shard(src / "t.h5") as h5:
        assert 1 <= schema.flows_present(h5, "v").sum() < 39


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    src = make_shards(tmp_path / "src", {"a.h5": [("v0", 3, 1)]}, manifest=False)

    def err_of(args):
        rc = shard_main(["flow", *args])
        e = capsys.readouterr().err
        assert rc == 2 and e.count("\n") == 1, e
        return e

    assert "nope.pth: weights file not found" in err_of(
        [str(src), "--model", "raft-small", "--weights", str(tmp_path / "nope.pth")]
    )
    assert "--weights is required for raft-large" in err_of([str(src), "--model", "raft-large"])
    assert "missing.h5: no such shard file or folder" in err_of([str(tmp_path / "missing.h5"), "--model", "dis"])
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    assert "bad.pth: cannot load weights" in err_of([str(src), "--model", "raft-small", "--weights", str(bad)])
    from torchvision.models.optical_flow import raft_large

    from flow.raft_weights import torchvision_to_official

    large = tmp_path / "raft-things.pth"
    torch.save(torchvision_to_official(raft_large().state_dict(), small=False), large)
    assert "official-layout weights for raft-large, but the model is raft-small" in err_of(
        [str(src), "--model", "raft-small", "--weights", str(large)]
    )
    # A video whose frames have different sizes.
    h5 = schema.create_shard(tmp_path / "mixed.h5")
    rgb = synth_frames(3, 3, (64, 48))
    other = synth_frames(3, 1, (72, 48))[0]
    schema.add_video(
        h5,
        "mixed",
        [encode(rgb[0]), encode(rgb[1]), encode(other)],
        split="train",
        height=48,
        width=64,
        fps=10.0,
        source="synth",
    )
    h5.close()
    e = err_of([str(tmp_path / "mixed.h5"), "--model", "dis", "--no-progress"])
    assert "mixed.h5: video 'mixed' frame 2 is 72x48, the video's frames are 64x48" in e
