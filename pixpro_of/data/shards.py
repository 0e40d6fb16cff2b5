"""The clip reader: a torch Dataset over HDF5 shards whose item is one clip (video, t, k)."""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch.utils.data

from hdf5_tools import schema
from hdf5_tools.reader import ShardReader
from plumbing.errors import UserError


class ShardUnavailableError(UserError):
    """A whole shard is missing or cannot be opened (not one sample's damage)."""


def decode_jpeg(data: bytes, where: str) -> np.ndarray:
    """Decode JPEG bytes to uint8 [H, W, 3] RGB; ``where`` names the frame in error messages."""
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except Exception as exc:  # simplejpeg raises ValueError/RuntimeError for damaged data
        raise UserError(f"{where}: cannot decode JPEG ({str(exc).splitlines()[0][:120]})") from None


def checked_jpeg(data: bytes, where: str) -> bytes:
    """JPEG bytes whose header reads (not decoded: ``decode=False``); ``where`` names the frame."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg_header(data)
    except Exception as exc:  # noqa: BLE001 - simplejpeg raises ValueError/RuntimeError for damaged data
        raise UserError(
            f"{where}: cannot read the JPEG header "
            f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        ) from None
    return data


_F16_TABLE = None


def f16_to_f32(arr: np.ndarray) -> np.ndarray:
    """float16 -> float32, exactly. numpy's own cast is slow (~5 ns per value here); torch's is ~20x
    faster but may start intra-op threads, so it is used only where torch runs single-threaded
    (DataLoader workers); elsewhere a 65536-entry lookup table (~2 ns per value)."""
    global _F16_TABLE
    if torch.get_num_threads() == 1:
        return torch.from_numpy(np.ascontiguousarray(arr)).float().numpy()
    if _F16_TABLE is None:
        _F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return np.take(_F16_TABLE, np.ascontiguousarray(arr, "<f2").view(np.uint16))


class ShardClipDataset(torch.utils.data.Dataset):
    """Clips of ``k`` frames (k >= 1) from the videos of ``shard_paths``; see the module docstring.

    ``check_crc`` verifies every JPEG's and flow chunk's CRC32 on read.
    """

    def __init__(
        self,
        shard_paths: Sequence,
        k: int,
        check_crc: bool = True,
        drop_short: bool = False,
        all_frames: bool = False,
        flows: bool = True,
        decode: bool = True,
    ):
        if int(k) < 1:
            raise UserError(f"clip length k must be >= 1, got {k}")
        self.k = int(k)
        self.all_frames = bool(all_frames)
        self.read_flows = bool(flows)
        self.decode = bool(decode)
        if self.all_frames and not self.decode:
            raise UserError("ShardClipDataset: every frame of a clip (all_frames) is given decoded only")
        self.check_crc = bool(check_crc)
        self.shard_paths: List[str] = [os.fspath(p) for p in shard_paths]
        if not self.shard_paths:
            raise UserError("ShardClipDataset needs at least one shard path")
        names, shard_idx, frames, sizes = [], [], [], []
        for si, path in enumerate(self.shard_paths):
            with schema.open_shard(path) as h5:
                videos = schema.list_videos(h5)
            for v in videos:
                if v.num_frames < self.k:
                    if drop_short:
                        continue
                    raise UserError(
                        f"{os.path.basename(path)}: video {v.name!r} has {v.num_frames} frames, fewer than k={self.k}"
                    )
                names.append(v.name)
                shard_idx.append(si)
                frames.append(v.num_frames)
                sizes.append((v.height, v.width))
        self._names = np.array(names, dtype=object) if names else np.zeros(0, dtype=object)
        self._shard = np.array(shard_idx, np.int32)
        self._frames = np.array(frames, np.int64)
        self._sizes = np.array(sizes, np.int64).reshape(-1, 2)
        self._readers: Dict[int, ShardReader] = {}
        self._pid = None

    # ------------------------------------------------------------------ metadata
    @property
    def num_videos(self) -> int:
        return int(self._frames.shape[0])

    def __len__(self) -> int:
        return self.num_videos

    def num_frames(self, video_index: int) -> int:
        return int(self._frames[self._check_video(video_index)])

    def video_name(self, video_index: int) -> str:
        return str(self._names[self._check_video(video_index)])

    def shard_of(self, video_index: int) -> str:
        return self.shard_paths[int(self._shard[self._check_video(video_index)])]

    def frame_size(self, video_index: int) -> Tuple[int, int]:
        """(height, width) of the video's frames in pixels."""
        h, w = self._sizes[self._check_video(video_index)]
        return int(h), int(w)

    def _check_video(self, video_index) -> int:
        i = int(video_index)
        if not 0 <= i < self.num_videos:
            raise IndexError(f"video index {i} out of range [0, {self.num_videos})")
        return i

    # ------------------------------------------------------------------ reading
    def _reader(self, shard_index: int) -> ShardReader:
        pid = os.getpid()
        if self._pid != pid:  # first use in this process (e.g. a freshly forked worker)
            self._readers = {}
            self._pid = pid
        r = self._readers.get(shard_index)
        if r is None:
            try:
                r = ShardReader(self.shard_paths[shard_index], check_crc=self.check_crc)
            except UserError as exc:  # the whole shard, not one sample
                raise ShardUnavailableError(str(exc)) from None
            self._readers[shard_index] = r
        return r

    def get_clip(self, video_index: int, t: int) -> dict:
        """Frames t and t+k-1 of the video and the k-1 flows between them (see module docstring)."""
        vi = self._check_video(video_index)
        n, k, t = int(self._frames[vi]), self.k, int(t)
        name = str(self._names[vi])
        shard = self.shard_paths[int(self._shard[vi])]
        if not 0 <= t <= n - k:
            raise IndexError(
                f"{os.path.basename(shard)}: video {name!r}: clip start {t} out of range [0, {n - k}] for k={k}"
            )
        reader = self._reader(int(self._shard[vi]))
        gone = reader.changed()
        if gone:
            raise ShardUnavailableError(gone)
        where = f"{os.path.basename(shard)}: video {name!r} frame"
        frames = None
        fwd = bwd = None
        try:
            if self.all_frames:
                first = decode_jpeg(reader.jpeg(name, t), f"{where} {t}")
                frames = np.empty((k,) + first.shape, np.uint8)
                frames[0] = first
                for i in range(1, k):
                    frames[i] = decode_jpeg(reader.jpeg(name, t + i), f"{where} {t + i}")
                frame1, frame2 = frames[0], frames[k - 1]
            elif not self.decode:  # JPEG bytes, header checked (decoded later on the training device)
                frame1 = checked_jpeg(reader.jpeg(name, t), f"{where} {t}")
                frame2 = frame1 if k == 1 else checked_jpeg(reader.jpeg(name, t + k - 1), f"{where} {t + k - 1}")
            else:
                frame1 = decode_jpeg(reader.jpeg(name, t), f"{where} {t}")
                frame2 = frame1 if k == 1 else decode_jpeg(reader.jpeg(name, t + k - 1), f"{where} {t + k - 1}")
            if self.read_flows:
                fwd16, bwd16 = reader.flows(name, t, k - 1, as_stored=True)
                fwd, bwd = f16_to_f32(fwd16), f16_to_f32(bwd16)
        except UserError:
            gone = reader.changed(every_s=0.0)  # a truncated or replaced file fails the whole shard
            if gone:
                raise ShardUnavailableError(gone) from None
            raise
        except (OSError, KeyError, RuntimeError, ValueError) as exc:  # h5py on damaged metadata or data
            gone = reader.changed(every_s=0.0)
            if gone:
                raise ShardUnavailableError(gone) from None
            raise UserError(
                f"{where} {t}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
            ) from None
        if k == 1 and self.decode:
            frame2 = frame1.copy()
        clip = {"frame1": frame1, "frame2": frame2, "fwd": fwd, "bwd": bwd, "video": name, "t": t, "k": k}
        if frames is not None:
            clip["frames"] = frames
        return clip

    def __getitem__(self, item) -> dict:
        try:
            video_index, t = item
        except (TypeError, ValueError):
            raise TypeError(f"ShardClipDataset items are (video_index, t) pairs, got {item!r}") from None
        return self.get_clip(video_index, t)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"] = {}
        state["_pid"] = None
        return state

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers = {}
