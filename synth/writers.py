"""Write synthetic videos to disk in the real datasets' layouts."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from plumbing.errors import UserError
from synth.world import Frame, Renderer, check_size

FORMATS = ("bdd", "cityscapes", "all")
CITY = "synth"

# Cityscapes label id -> train id (cityscapesScripts labels.py); everything else is 255 (ignore).
TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
_TRAIN_LUT = np.full(256, 255, np.uint8)
for _k, _v in TRAIN_IDS.items():
    _TRAIN_LUT[_k] = _v


@dataclass
class SynthConfig:
    """What ``write_dataset`` renders and writes. ``size`` is (width, height) in pixels."""

    videos: int = 8
    frames: int = 60
    size: Tuple[int, int] = (640, 360)
    fps: float = 10.0
    seed: int = 0
    format: str = "bdd"  # bdd | cityscapes | all
    val_videos: Optional[int] = None  # None: max(1, videos // 8) if videos >= 2 else 0
    write_videos: bool = True  # bdd: videos/<split>/<name>.mov
    write_images: bool = True  # bdd: images/<split>/<name>/NNNNN.jpg
    write_flow: bool = True  # bdd: flow/<split>/<name>/... (.flo + occlusion PNGs)
    jpeg_quality: int = 95
    crf: int = 18  # libx264 constant rate factor
    cityscapes_every: int = 1  # write every n-th frame in the Cityscapes layout
    workers: int = 1  # processes rendering videos in parallel
    overwrite: bool = False  # replace an existing non-empty out_dir

    def validate(self) -> "SynthConfig":
        for name in ("videos", "frames", "cityscapes_every", "workers"):
            val = getattr(self, name)
            if not isinstance(val, (int, np.integer)) or val < 1:
                raise UserError(f"{name} must be a positive integer, got {val!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.size = check_size(self.size)
        try:
            fps = float(self.fps)
        except (TypeError, ValueError):
            fps = float("nan")
        if not 0 < fps <= 240:
            raise UserError(f"fps must be in (0, 240], got {self.fps!r}")
        self.fps = fps
        if self.format not in FORMATS:
            raise UserError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.val_videos is not None and not (0 <= self.val_videos <= self.videos):
            raise UserError(f"val_videos must be in 0..{self.videos}, got {self.val_videos}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not 0 <= self.crf <= 51:
            raise UserError(f"crf must be in 0..51, got {self.crf}")
        return self

    def n_val(self) -> int:
        if self.val_videos is not None:
            return int(self.val_videos)
        return max(1, self.videos // 8) if self.videos >= 2 else 0


def video_seed(seed: int, index: int) -> int:
    """Render seed of video ``index`` of a dataset with seed ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def video_name(index: int) -> str:
    return f"synth-{index:05d}"


def split_of(cfg: SynthConfig, index: int) -> str:
    return "val" if index >= cfg.videos - cfg.n_val() else "train"


class MovWriter:
    """Encodes RGB frames into a ``.mov`` with PyAV (libx264, yuv420p; yuv444p for odd sizes)."""

    def __init__(self, path: Path, width: int, height: int, fps: float, crf: int = 18):
        import av

        self.container = av.open(str(path), mode="w", format="mov")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.stream.thread_count = 1
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def read_video(path) -> np.ndarray:
    """Decode a video file into uint8 [T, H, W, 3] RGB frames."""
    import av

    try:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except (av.error.FFmpegError, OSError) as exc:
        raise UserError(f"{path}: cannot decode video ({exc})") from None


def _imwrite(path: Path, img: np.ndarray, params=()) -> None:
    ext = path.suffix
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())


def write_video(root: Path, cfg: SynthConfig, index: int, on_frame=None) -> Dict:
    """Render video ``index`` of ``cfg`` and write its files under ``root``. Returns its manifest entry."""
    from flow.io import write_flo

    name, split, seed = video_name(index), split_of(cfg, index), video_seed(cfg.seed, index)
    w, h = cfg.size
    bdd = cfg.format in ("bdd", "all")
    cs = cfg.format in ("cityscapes", "all")
    mov = None
    if bdd and cfg.write_videos:
        (root / "videos" / split).mkdir(parents=True, exist_ok=True)
        mov = MovWriter(root / "videos" / split / f"{name}.mov", w, h, cfg.fps, cfg.crf)
    img_dir = root / "images" / split / name
    flow_dir = root / "flow" / split / name
    if bdd and cfg.write_images:
        img_dir.mkdir(parents=True, exist_ok=True)
    if bdd and cfg.write_flow:
        for sub in ("forward", "backward", "occlusion/forward", "occlusion/backward"):
            (flow_dir / sub).mkdir(parents=True, exist_ok=True)
    if cs:
        for top in ("leftImg8bit", "gtFine"):
            (root / top / split / CITY).mkdir(parents=True, exist_ok=True)
    try:
        fr: Frame
        for fr in Renderer(seed, cfg.frames, cfg.size, cfg.fps, flow=bdd and cfg.write_flow).frames():
            num = fr.t + 1
            bgr = np.ascontiguousarray(fr.rgb[..., ::-1])
            if mov is not None:
                mov.write(fr.rgb)
            if bdd and cfg.write_images:
                _imwrite(img_dir / f"{num:05d}.jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality))
            if bdd and cfg.write_flow and fr.t >= 1:
                pair = f"{fr.t:05d}"  # flow between frames fr.t and fr.t + 1 (1-based)
                write_flo(flow_dir / "forward" / f"{pair}.flo", fr.fwd)
                write_flo(flow_dir / "backward" / f"{pair}.flo", fr.bwd)
                _imwrite(flow_dir / "occlusion" / "forward" / f"{pair}.png", fr.valid_fwd.astype(np.uint8) * 255)
                _imwrite(flow_dir / "occlusion" / "backward" / f"{pair}.png", fr.valid_bwd.astype(np.uint8) * 255)
            if cs and fr.t % cfg.cityscapes_every == 0:
                stem = f"{CITY}_{index:06d}_{num:06d}"
                _imwrite(
                    root / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png",
                    bgr,
                    (cv2.IMWRITE_PNG_COMPRESSION, 1),
                )
                gt = root / "gtFine" / split / CITY
                _imwrite(gt / f"{stem}_gtFine_labelIds.png", fr.labels)
                _imwrite(gt / f"{stem}_gtFine_labelTrainIds.png", _TRAIN_LUT[fr.labels])
            if on_frame is not None:
                on_frame()
    finally:
        if mov is not None:
            mov.close()
    return {"name": name, "split": split, "index": index, "seed": seed, "frames": cfg.frames}


_PROGRESS = None  # a shared frame counter in worker processes


def _init_worker(counter) -> None:
    global _PROGRESS
    _PROGRESS = counter


def _count_frame() -> None:
    with _PROGRESS.get_lock():
        _PROGRESS.value += 1


def _worker(args):
    root, cfg, index = args
    return write_video(Path(root), cfg, index, on_frame=_count_frame)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """Check ``out`` can be created; return the temporary directory to write into."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: directory exists and is not empty (pass overwrite/--force to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise UserError(f"{out}: cannot write the output directory ({exc.strerror or exc})") from None
    return tmp


def write_dataset(out_dir, cfg: SynthConfig, progress: bool = False) -> Dict:
    """Render ``cfg.videos`` videos and write them under ``out_dir`` atomically; returns the manifest."""
    cfg.validate()
    out = Path(out_dir)
    tmp = _prepare_out(out, cfg.overwrite)
    try:
        from tqdm import tqdm

        bar = tqdm(total=cfg.videos * cfg.frames, unit="frame", desc="synth", disable=not progress)
        entries: List[Dict] = []
        if cfg.workers > 1 and cfg.videos > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork")
            counter = ctx.Value("l", 0)
            with ctx.Pool(min(cfg.workers, cfg.videos), initializer=_init_worker, initargs=(counter,)) as pool:
                result = pool.map_async(_worker, [(str(tmp), cfg, i) for i in range(cfg.videos)], chunksize=1)
                while not result.ready():
                    result.wait(0.25)
                    bar.update(counter.value - bar.n)
                entries = result.get()  # re-raises a worker's exception
            bar.update(counter.value - bar.n)
        else:
            for i in range(cfg.videos):
                entries.append(write_video(tmp, cfg, i, on_frame=lambda: bar.update(1)))
        bar.close()
        manifest = {"generator": "synth", "config": asdict(cfg), "videos": entries}
        manifest["config"]["size"] = list(cfg.size)
        (tmp / "synth.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.synth-old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
