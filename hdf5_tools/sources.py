"""Where ``pack`` reads videos from (the SRC kinds) and where it finds their flows (``--flows``)."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hdf5_tools import schema
from plumbing.errors import UserError
from plumbing.parse import checked, parse_wxh

JPEG_SUFFIXES = (".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mov", ".mp4")


@dataclass
class LoadedVideo:
    """A video's frames as JPEG bytes. ``height``/``width`` in pixels; flows (if any) float32
    [T-1, 2, ceil(H/8), ceil(W/8)] in 1/8-resolution pixels, time order."""

    jpegs: List[bytes]
    height: int
    width: int
    fps: float
    fwd: Optional[np.ndarray] = None
    bwd: Optional[np.ndarray] = None


@dataclass
class VideoSource:
    """One video to pack. ``est_frames``/``est_bytes`` are planning estimates (exact for frames)."""

    name: str
    split: str
    kind: str
    location: str
    est_frames: int
    est_bytes: int
    loader: Callable[[], LoadedVideo] = field(repr=False)

    def load(self) -> LoadedVideo:
        return self.loader()


# --------------------------------------------------------------------------- JPEG checks


def jpeg_size(data: bytes, where: str) -> Tuple[int, int]:
    """(height, width) from a JPEG header; UserError naming ``where`` if it is not a JPEG."""
    import simplejpeg

    if not data[:2] == b"\xff\xd8":
        raise UserError(f"{where}: not a JPEG file (no SOI marker)")
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except Exception as exc:
        raise UserError(f"{where}: corrupt JPEG header ({str(exc).splitlines()[0][:100]})") from None
    return int(h), int(w)


def check_same_size(sizes: Sequence[Tuple[int, int]], wheres: Sequence[str]) -> Tuple[int, int]:
    first = sizes[0]
    for s, where in zip(sizes, wheres):
        if s != first:
            raise UserError(
                f"{where}: frame size {s[1]}x{s[0]} differs from the video's first frame "
                f"{first[1]}x{first[0]} (mixed frame sizes in one video)"
            )
    return first


# --------------------------------------------------------------------------- frames


def _load_frame_folder(folder: Path, files: List[str], fps: float) -> LoadedVideo:
    jpegs, sizes, wheres = [], [], []
    for fn in files:
        p = folder / fn
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise UserError(f"{p}: cannot read ({exc.strerror})") from None
        sizes.append(jpeg_size(data, str(p)))
        wheres.append(str(p))
        jpegs.append(data)
    h, w = check_same_size(sizes, wheres)
    return LoadedVideo(jpegs=jpegs, height=h, width=w, fps=fps)


def _split_dirs(root: Path, splits: Optional[Sequence[str]]) -> List[Path]:
    """``root``'s split folders, sorted; only those named in ``splits`` when given."""
    return sorted(p for p in root.iterdir() if p.is_dir() and (not splits or p.name in splits))


def _frame_sources(images: Path, fps: float, splits: Optional[Sequence[str]] = None) -> List[VideoSource]:
    out = []
    for split_dir in _split_dirs(images, splits):
        for vdir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = sorted(f.name for f in os.scandir(vdir) if f.name.lower().endswith(JPEG_SUFFIXES))
            if not files:
                continue
            est = sum(os.path.getsize(vdir / f) for f in files)
            out.append(
                VideoSource(
                    name=vdir.name,
                    split=split_dir.name,
                    kind="frames",
                    location=str(vdir),
                    est_frames=len(files),
                    est_bytes=est,
                    loader=functools.partial(_load_frame_folder, vdir, files, fps),
                )
            )
    return out


# --------------------------------------------------------------------------- videos


def _decode_video(path: Path, fps: float, quality: int) -> LoadedVideo:
    """Decode ``path`` and keep one frame per 1/fps seconds (the first frame at or after each tick)."""
    import av
    import simplejpeg

    jpegs, size = [], None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            next_tick = 0
            for frame in container.decode(stream):
                ts = frame.time if frame.time is not None else 0.0
                if ts + 1e-6 < next_tick / fps:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                if size is None:
                    size = rgb.shape[:2]
                elif rgb.shape[:2] != size:
                    raise UserError(
                        f"{path}: frame at {ts:.3f} s has size {rgb.shape[1]}x{rgb.shape[0]}, "
                        f"first frame {size[1]}x{size[0]} (mixed frame sizes in one video)"
                    )
                jpegs.append(simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB"))
                next_tick = math.floor(ts * fps + 1e-6) + 1
    except UserError:
        raise
    except Exception as exc:  # PyAV raises av.error.* for damaged containers
        raise UserError(f"{path}: cannot decode video ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not jpegs or size is None:
        raise UserError(f"{path}: no video frames decoded")
    return LoadedVideo(jpegs=jpegs, height=int(size[0]), width=int(size[1]), fps=fps)


def _video_sources(videos: Path, fps: float, quality: int, splits: Optional[Sequence[str]] = None) -> List[VideoSource]:
    import av

    out = []
    for split_dir in _split_dirs(videos, splits):
        for f in sorted(split_dir.iterdir()):
            if f.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            try:
                with av.open(str(f)) as c:
                    s = c.streams.video[0]
                    duration = float(c.duration / 1e6) if c.duration else float(s.frames or 1) / fps
                    w, h = s.codec_context.width, s.codec_context.height
            except Exception as exc:
                raise UserError(f"{f}: cannot open video ({type(exc).__name__}: {str(exc)[:120]})") from None
            frames = max(1, int(round(duration * fps)))
            out.append(
                VideoSource(
                    name=f.stem,
                    split=split_dir.name,
                    kind="videos",
                    location=str(f),
                    est_frames=frames,
                    est_bytes=frames * max(1, w * h // 4),  # ~ a q95 JPEG; only for planning
                    loader=functools.partial(_decode_video, f, fps, quality),
                )
            )
    return out


# --------------------------------------------------------------------------- synth

_SYNTH_KEYS = {"videos": int, "frames": int, "size": str, "seed": int, "fps": float}


def parse_synth_spec(spec: str) -> dict:
    """``synth:videos=4,frames=20,size=64x48,seed=0`` -> dict with the defaults filled in."""
    opts = {"videos": 4, "frames": 20, "size": "64x48", "seed": 0, "fps": 10.0}
    body = spec.split(":", 1)[1]
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        if key not in _SYNTH_KEYS or not value:
            raise UserError(
                f"SRC {spec!r}: unknown or empty option {part!r} (use {', '.join(k + '=' for k in _SYNTH_KEYS)})"
            )
        try:
            opts[key] = _SYNTH_KEYS[key](value)
        except ValueError:
            raise UserError(f"SRC {spec!r}: bad value for {key}: {value!r}") from None
    opts["size"] = checked(parse_wxh, str(opts["size"]), f"SRC {spec!r}: size")
    return opts


def _render_synth(seed: int, frames: int, size, fps: float, quality: int, with_flows: bool) -> LoadedVideo:
    import simplejpeg

    from synth import render_video

    v = render_video(seed, frames, size=size, fps=fps)
    rgb = np.asarray(v.rgb)
    jpegs = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=quality, colorspace="RGB") for f in rgb]
    h, w = rgb.shape[1:3]
    fwd = bwd = None
    if with_flows and rgb.shape[0] > 1:
        fwd, bwd = downsample_flow(v.fwd), downsample_flow(v.bwd)
    return LoadedVideo(jpegs=jpegs, height=h, width=w, fps=fps, fwd=fwd, bwd=bwd)


def _synth_sources(spec: str, quality: int, with_flows: bool) -> List[VideoSource]:
    """Videos named, seeded and split exactly as ``synth.write_dataset`` would write them."""
    from synth import SynthConfig, video_name, video_seed
    from synth.writers import split_of

    o = parse_synth_spec(spec)
    w, h = o["size"]
    scfg = SynthConfig(videos=o["videos"], frames=o["frames"], size=(w, h), fps=o["fps"], seed=o["seed"])
    out = []
    for i in range(o["videos"]):
        seed = video_seed(o["seed"], i)
        out.append(
            VideoSource(
                name=video_name(i),
                split=split_of(scfg, i),
                kind="synth",
                location=f"{spec}#{i}",
                est_frames=o["frames"],
                est_bytes=o["frames"] * max(1, w * h // 4),
                loader=functools.partial(_render_synth, seed, o["frames"], (w, h), o["fps"], quality, with_flows),
            )
        )
    return out


# --------------------------------------------------------------------------- entry

SRC_KINDS = ("auto", "frames", "videos")

#: The splits ``hdf5_tools pack`` reads from a folder SRC unless ``--split`` says otherwise
#: (pretraining reads the training videos; ``--split all`` packs every split).
DEFAULT_SPLITS = ("train",)


def _layout(src: str, kind: str) -> Tuple[str, Path]:
    """``(kind, folder holding the split folders)`` of a folder SRC: ``SRC/images``, ``SRC/videos``,
    or SRC itself when it is the ``images`` or ``videos`` folder (what a user points at)."""
    if kind not in SRC_KINDS:
        raise UserError(f"--src-kind {kind!r}: choose from {', '.join(SRC_KINDS)}")
    root = Path(src)
    if not root.is_dir():
        raise UserError(f"SRC {src}: not a folder (nor a synth:... spec)")
    if kind in ("auto", "frames") and (root / "images").is_dir():
        return "frames", root / "images"
    if kind in ("auto", "videos") and (root / "videos").is_dir():
        return "videos", root / "videos"
    name = root.resolve().name
    if kind in ("auto", "frames") and name == "images":
        return "frames", root
    if kind in ("auto", "videos") and name == "videos":
        return "videos", root
    want = {
        "auto": "images/{split}/<video>/*.jpg or videos/{split}/*.mov",
        "frames": "images/{split}/<video>/*.jpg",
        "videos": "videos/{split}/*.mov",
    }[kind]
    raise UserError(f"SRC {src}: expected {want} under it (or SRC to be that images/ or videos/ folder)")


def splits_of(src: str, kind: str = "auto") -> List[str]:
    """The split names a SRC holds, sorted, without opening any video (synth: those with videos)."""
    if src.startswith("synth:"):
        from synth import SynthConfig
        from synth.writers import split_of

        o = parse_synth_spec(src)
        scfg = SynthConfig(videos=o["videos"], frames=o["frames"], size=o["size"], fps=o["fps"], seed=o["seed"])
        return sorted({split_of(scfg, i) for i in range(o["videos"])})
    _, root = _layout(src, kind)
    return [p.name for p in _split_dirs(root, None)]


def find_videos(
    src: str,
    fps: float = 10.0,
    jpeg_quality: int = 95,
    splits: Optional[Sequence[str]] = None,
    synth_flows: bool = True,
    kind: str = "auto",
) -> Tuple[str, List[VideoSource]]:
    """Return ``(kind, videos)`` for SRC, sorted by (split, name); see the module docstring.

    ``kind`` "auto" prefers ``images/`` over ``videos/`` when a folder has both. ``splits`` (None:
    every split) is applied before any video is opened.
    """
    if kind not in SRC_KINDS:
        raise UserError(f"--src-kind {kind!r}: choose from {', '.join(SRC_KINDS)}")
    if src.startswith("synth:"):
        kind, videos = "synth", _synth_sources(src, jpeg_quality, synth_flows)
        if splits:
            videos = [v for v in videos if v.split in set(splits)]
    else:
        kind, root = _layout(src, kind)
        videos = (
            _frame_sources(root, fps, splits) if kind == "frames" else _video_sources(root, fps, jpeg_quality, splits)
        )
    if not videos:
        if splits:
            have = splits_of(src, kind if kind != "synth" else "auto")
            raise UserError(
                f"SRC {src}: no videos in split(s) {', '.join(splits)} (splits here: "
                f"{', '.join(have) or 'none'}); choose with --split NAME or --split all"
            )
        raise UserError(f"SRC {src}: no videos found")
    seen: Dict[str, str] = {}
    for v in videos:
        schema.check_video_name(v.name)
        if v.name in seen:
            raise UserError(f"SRC {src}: video name {v.name!r} appears in splits {seen[v.name]!r} and {v.split!r}")
        seen[v.name] = v.split
    videos.sort(key=lambda v: (v.split, v.name))
    return kind, videos


# --------------------------------------------------------------------------- flows


def downsample_flow(flow: np.ndarray) -> np.ndarray:
    """Full-resolution flow [..., 2, H, W] in pixels -> [..., 2, ceil(H/8), ceil(W/8)] in 1/8-res pixels.

    :func:`flow.ops.full_flow_to_shard` (8x8 block means, the last row/column replicated into the
    bottom/right padding), the one rule every shard flow follows.
    """
    import torch

    from flow.ops import full_flow_to_shard

    return full_flow_to_shard(torch.from_numpy(np.ascontiguousarray(flow, np.float32))).numpy()


class FlowDir:
    """Finds a video's flows under ``--flows DIR`` (seed ``.pth`` or ``.flo``); see the module docstring."""

    def __init__(self, root: str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"--flows {root}: not a folder")

    def _candidates(self, split: str) -> List[Path]:
        return [self.root / split, self.root, self.root / "pth" / split]

    def load(self, video: VideoSource, num_frames: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(fwd, bwd)`` float32 [T-1, 2, h8, w8], 1/8-res units, time order; UserError if absent or wrong."""
        from flow.io import read_flo, read_seed_pth

        h8, w8 = schema.flow_size(height, width)
        want = (num_frames - 1, 2, h8, w8)
        for base in self._candidates(video.split):
            fp, bp = base / "forward" / f"{video.name}.pth", base / "backward" / f"{video.name}.pth"
            if fp.is_file() and bp.is_file():
                fwd, bwd = read_seed_pth(fp, bp)
                if fwd.shape != want:
                    raise UserError(
                        f"{fp}: flow shape {tuple(fwd.shape)} does not match video {video.name!r} "
                        f"({num_frames} frames of {width}x{height} -> {want})"
                    )
                return fwd, bwd
            vdir = base / video.name
            if (vdir / "forward").is_dir() and (vdir / "backward").is_dir():
                return self._load_flo(vdir, video.name, num_frames, height, width, read_flo)
        raise UserError(
            f"--flows {self.root}: no flows for video {video.name!r} (looked for "
            f"[{video.split}/]forward/{video.name}.pth and [{video.split}/]{video.name}/forward/*.flo)"
        )

    @staticmethod
    def _load_flo(vdir: Path, name: str, num_frames: int, height: int, width: int, read_flo):
        out = []
        for direction in ("forward", "backward"):
            files = sorted(f for f in os.listdir(vdir / direction) if f.endswith(".flo"))
            if len(files) != num_frames - 1:
                raise UserError(
                    f"{vdir / direction}: {len(files)} .flo files for video {name!r} with "
                    f"{num_frames} frames (expected {num_frames - 1})"
                )
            arrs = []
            for fn in files:
                f = read_flo(vdir / direction / fn)
                if f.shape[1:] != (height, width):
                    raise UserError(
                        f"{vdir / direction / fn}: flow size {f.shape[2]}x{f.shape[1]} differs from "
                        f"the frames' {width}x{height}"
                    )
                arrs.append(downsample_flow(f))
            h8, w8 = schema.flow_size(height, width)
            out.append(np.stack(arrs) if arrs else np.zeros((0, 2, h8, w8), np.float32))
        return out[0], out[1]
