"""Writing the synthetic world: BDD100K / flow / Cityscapes layouts, video round trip, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from flow.io import read_flo
from pixpro_of.__main__ import main as pixpro_main
from plumbing.errors import UserError
from synth import SynthConfig, read_video, render_video, video_name, video_seed, write_dataset, writers

W, H, T = 160, 96, 5


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    manifest = write_dataset(out, SynthConfig(videos=3, frames=T, size=(W, H), seed=7, format="all"))
    return out, manifest


def test_layout_split_and_manifest(dataset):
    out, manifest = dataset
    names = [video_name(i) for i in range(3)]
    assert [v["name"] for v in manifest["videos"]] == names
    assert [v["split"] for v in manifest["videos"]] == ["train", "train", "val"]  # last video -> val
    assert json.loads((out / "synth.json").read_text()) == manifest
    assert sorted(p.name for p in (out / "videos" / "train").iterdir()) == ["synth-00000.mov", "synth-00001.mov"]
    assert sorted(p.name for p in (out / "videos" / "val").iterdir()) == ["synth-00002.mov"]
    assert sorted(p.name for p in (out / "images" / "val" / "synth-00002").iterdir()) == [
        f"{i:05d}.jpg" for i in range(1, T + 1)
    ]
    flow_dir = out / "flow" / "train" / "synth-00001"
    for sub in ("forward", "backward"):
        assert sorted(p.name for p in (flow_dir / sub).iterdir()) == [f"{i:05d}.flo" for i in range(1, T)]
        assert sorted(p.name for p in (flow_dir / "occlusion" / sub).iterdir()) == [f"{i:05d}.png" for i in range(1, T)]
    cs = sorted(p.name for p in (out / "leftImg8bit" / "val" / "synth").iterdir())
    assert cs == [f"synth_000002_{i:06d}_leftImg8bit.png" for i in range(1, T + 1)]
    gt = sorted(p.name for p in (out / "gtFine" / "train" / "synth").iterdir())
    assert len(gt) == 2 * 2 * T and "synth_000000_000001_gtFine_labelIds.png" in gt
    assert "synth_000001_000005_gtFine_labelTrainIds.png" in gt
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_files_hold_the_rendered_ground_truth(dataset):
    out, manifest = dataset
    entry = manifest["videos"][1]
    assert entry["seed"] == video_seed(7, 1)
    v = render_video(entry["seed"], T, (W, H))
    base = out / "flow" / "train" / entry["name"]
    for t in range(T - 1):
        assert np.array_equal(read_flo(base / "forward" / f"{t + 1:05d}.flo"), v.fwd[t])
        assert np.array_equal(read_flo(base / "backward" / f"{t + 1:05d}.flo"), v.bwd[t])
        occ = cv2.imread(str(base / "occlusion" / "forward" / f"{t + 1:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert occ.dtype == np.uint8 and set(np.unique(occ)) <= {0, 255}
        assert np.array_equal(occ == 255, v.valid_fwd[t])
        occ_b = cv2.imread(str(base / "occlusion" / "backward" / f"{t + 1:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(occ_b == 255, v.valid_bwd[t])
    # JPEG frames: close to the render (quality 95).
    jpg = cv2.imread(str(out / "images" / "train" / entry["name"] / "00003.jpg"))[..., ::-1]
    assert jpg.shape == (H, W, 3) and psnr(jpg, v.rgb[2]) > 30
    # Cityscapes: lossless PNGs, label ids and train ids.
    stem = f"synth_{1:06d}_{3:06d}"
    png = cv2.imread(str(out / "leftImg8bit" / "train" / "synth" / f"{stem}_leftImg8bit.png"))[..., ::-1]
    assert np.array_equal(png, v.rgb[2])
    lab = cv2.imread(str(out / "gtFine" / "train" / "synth" / f"{stem}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
    assert lab.dtype == np.uint8 and lab.ndim == 2 and np.array_equal(lab, v.labels[2])
    train = cv2.imread(
        str(out / "gtFine" / "train" / "synth" / f"{stem}_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED
    )
    expect = {7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 23: 10, 26: 13}
    for lid, tid in expect.items():
        assert np.all(train[lab == lid] == tid)


def test_video_decodes_to_the_rendered_frames(dataset):
    out, manifest = dataset
    entry = manifest["videos"][2]
    v = render_video(entry["seed"], T, (W, H))
    frames = read_video(out / "videos" / "val" / f"{entry['name']}.mov")
    assert frames.shape == (T, H, W, 3)
    for t in range(T):
        assert psnr(frames[t], v.rgb[t]) > 30, (t, psnr(frames[t], v.rgb[t]))


def test_odd_size_video_round_trip(tmp_path):
    cfg = SynthConfig(videos=1, frames=3, size=(97, 55), seed=1, format="bdd", write_images=False, write_flow=False)
    manifest = write_dataset(tmp_path / "odd", cfg)
    frames = read_video(tmp_path / "odd" / "videos" / "train" / "synth-00000.mov")
    v = render_video(manifest["videos"][0]["seed"], 3, (97, 55))
    assert frames.shape == (3, 55, 97, 3) and min(psnr(a, b) for a, b in zip(frames, v.rgb)) > 30
    assert not (tmp_path / "odd" / "images").exists() and not (tmp_path / "odd" / "flow").exists()


def test_cityscapes_only_and_every_nth_frame(tmp_path):
    cfg = SynthConfig(videos=1, frames=5, size=(64, 48), seed=2, format="cityscapes", cityscapes_every=2)
    write_dataset(tmp_path / "cs", cfg)
    assert sorted(p.name for p in (tmp_path / "cs").iterdir()) == ["gtFine", "leftImg8bit", "synth.json"]
    names = sorted(p.name for p in (tmp_path / "cs" / "leftImg8bit" / "train" / "synth").iterdir())
    assert names == [f"synth_000000_{i:06d}_leftImg8bit.png" for i in (1, 3, 5)]


def test_split_rule():
    assert [writers.split_of(SynthConfig(videos=1), i) for i in range(1)] == ["train"]
    assert [writers.split_of(SynthConfig(videos=8), i) for i in range(8)] == ["train"] * 7 + ["val"]
    assert [writers.split_of(SynthConfig(videos=16), i) for i in range(16)].count("val") == 2
    assert [writers.split_of(SynthConfig(videos=4, val_videos=0), i) for i in range(4)] == ["train"] * 4


def test_parallel_workers_write_the_same_files(tmp_path, capsys):
    cfg = dict(videos=2, frames=3, size=(64, 48), seed=3, format="all", write_videos=False)
    write_dataset(tmp_path / "a", SynthConfig(**cfg))
    capsys.readouterr()
    write_dataset(tmp_path / "b", SynthConfig(workers=2, **cfg), progress=True)
    assert "6/6" in capsys.readouterr().err  # per-frame progress from the workers
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name != "synth.json":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_existing_output_is_refused_then_replaced_with_force(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cfg = SynthConfig(videos=1, frames=2, size=(32, 24), format="cityscapes")
    with pytest.raises(UserError, match="not empty"):
        write_dataset(out, cfg)
    assert (out / "keep.txt").exists()
    cfg.overwrite = True
    write_dataset(out, cfg)
    assert not (out / "keep.txt").exists() and (out / "synth.json").exists()


def test_failure_midway_leaves_no_partial_output(tmp_path, monkeypatch):
    calls = []

    def failing(root, cfg, index, on_frame=None):
        calls.append(index)
        (root / "images").mkdir(exist_ok=True)
        (root / "images" / "partial.jpg").write_bytes(b"x")
        if index == 1:
            raise OSError(28, "No space left on device")
        return {"name": video_name(index), "split": "train", "index": index, "seed": 0, "frames": 2}

    monkeypatch.setattr(writers, "write_video", failing)
    with pytest.raises(OSError):
        write_dataset(tmp_path / "ds", SynthConfig(videos=3, frames=2, size=(32, 24)))
    assert calls == [0, 1]
    assert list(tmp_path.iterdir()) == []


def test_failure_in_a_worker_leaves_no_partial_output(tmp_path, monkeypatch):
    real = writers.write_video

    def failing(root, cfg, index, on_frame=None):
        if index == 2:
            raise UserError("video 2: simulated failure")
        return real(root, cfg, index, on_frame)

    monkeypatch.setattr(writers, "write_video", failing)  # inherited by the forked workers
    with pytest.raises(UserError, match="simulated failure"):
        write_dataset(tmp_path / "ds", SynthConfig(videos=3, frames=2, size=(32, 24), workers=2))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- CLI


def run_cli(argv, capsys):
    rc = pixpro_main(["synth", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--size", "0x0"], "--size: '0x0': width and height must be positive"),
        (["--size", "4000x360"], "--size: size 4000x360 out of range"),
        (["--size", "640by360"], "--size: '640by360' is not WIDTHxHEIGHT"),
        (["--videos", "-1"], "--videos: videos must be a positive integer, got -1"),
        (["--video-frames", "0"], "--video-frames: frames must be a positive integer, got 0"),
        (["--seed", "-3"], "--seed: seed must be a non-negative integer"),
        (["--fps", "0"], "--fps: fps must be in (0, 240]"),
        (["--val-videos", "9"], "--val-videos: val_videos must be in 0..8"),
    ],
)
def test_cli_bad_arguments_one_line_error_no_output(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc, _, err = run_cli(["--out", str(out), "--quiet", *args], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pixpro_of synth: error: ") and needle in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_cli_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, _, err = run_cli(
        ["--out", str(blocker / "out"), "--videos", "1", "--video-frames", "2", "--size", "32x24", "--quiet"], capsys
    )
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(blocker / "out") in lines[0] and "cannot write" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    rc, stdout, _ = run_cli(
        [
            "--out",
            str(out),
            "--videos",
            "2",
            "--video-frames",
            "3",
            "--size",
            "64x48",
            "--fps",
            "5",
            "--seed",
            "4",
            "--format",
            "all",
            "--quiet",
            "--no-videos",
        ],
        capsys,
    )
    assert rc == 0
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["config"]["fps"] == 5.0 and manifest["config"]["size"] == [64, 48]
    assert [v["split"] for v in manifest["videos"]] == ["train", "val"]
    assert not (out / "videos").exists()
    assert len(list((out / "images" / "train" / "synth-00000").iterdir())) == 3
    assert (out / "gtFine" / "val" / "synth" / "synth_000001_000003_gtFine_labelIds.png").exists()


def test_cli_subprocess_progress_and_help(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "pixpro_of", "synth", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "--format [bdd|cityscapes|all]" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixpro_of",
            "synth",
            "--out",
            str(tmp_path / "d"),
            "--videos",
            "1",
            "--video-frames",
            "2",
            "--size",
            "32x24",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "2/2" in r.stderr  # tqdm progress bar counts frames
    r = subprocess.run(
        [sys.executable, "-m", "pixpro_of", "synth", "--out", str(tmp_path / "e"), "--size", "0x0"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_read_video_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.mov"
    bad.write_bytes(b"not a video" * 20)
    for path in (bad, tmp_path / "missing.mov"):
        with pytest.raises(UserError, match=str(path) + ": cannot decode video"):
            read_video(path)
