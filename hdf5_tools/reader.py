"""The training-side shard reader, :class:`ShardReader`: one shard open read-only, each video's
handles, indexes and file offsets cached, JPEG bytes and flow chunks read with ``os.pread``.
Names, layout and checked access come from :mod:`hdf5_tools.schema`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

import h5py
import numpy as np

from hdf5_tools.schema import (
    FLOW_BWD,
    FLOW_BWD_CRC,
    FLOW_FWD,
    FLOW_FWD_CRC,
    FLOW_PRESENT,
    H5_ERRORS,
    JPEG,
    JPEG_CRC,
    JPEG_LENGTH,
    JPEG_OFFSET,
    check_frame_index,
    crc32,
    flow_crc,
    open_shard,
    read_array,
    read_dataset,
    shard_name,
    short_error,
    video_dataset,
    video_group,
)
from plumbing.errors import UserError


class _VideoHandles:
    """Cached dataset handles, index arrays and raw file offsets of one video (for repeated reads).

    ``blob_at`` is the file offset of the (contiguous, unfiltered) JPEG blob, or -1 if the blob is
    not stored that way. ``fwd_at``/``bwd_at`` hold each flow chunk's file offset (-1 where the chunk
    is not allocated or the dataset is filtered); they are looked up on first use of the video.
    """

    __slots__ = (
        "blob",
        "offset",
        "length",
        "crc",
        "fwd",
        "bwd",
        "fwd_crc",
        "bwd_crc",
        "present",
        "blob_at",
        "fwd_at",
        "bwd_at",
        "chunk_bytes",
        "file_size",
    )

    def __init__(self, h5: h5py.File, g: h5py.Group, video: str):
        self.blob = video_dataset(h5, g, video, JPEG)
        self.offset = read_array(h5, g, video, JPEG_OFFSET)
        self.length = read_array(h5, g, video, JPEG_LENGTH)
        self.crc = read_array(h5, g, video, JPEG_CRC)
        self.fwd = video_dataset(h5, g, video, FLOW_FWD)
        self.bwd = video_dataset(h5, g, video, FLOW_BWD)
        self.fwd_crc = read_array(h5, g, video, FLOW_FWD_CRC)
        self.bwd_crc = read_array(h5, g, video, FLOW_BWD_CRC)
        self.present = read_array(h5, g, video, FLOW_PRESENT)
        n = self.offset.shape[0]
        for name, arr in ((JPEG_LENGTH, self.length), (JPEG_CRC, self.crc)):
            if arr.shape != (n,):
                raise UserError(
                    f"{shard_name(h5)}: video {video!r}: dataset {name} has shape {arr.shape}, {JPEG_OFFSET} has {(n,)}"
                )
        pairs = max(n - 1, 0)
        for name, arr in (
            (FLOW_PRESENT, self.present),
            (FLOW_FWD_CRC, self.fwd_crc),
            (FLOW_BWD_CRC, self.bwd_crc),
            (FLOW_FWD, self.fwd),
            (FLOW_BWD, self.bwd),
        ):
            if arr.shape[:1] != (pairs,) or (arr.ndim == 4) != (name in (FLOW_FWD, FLOW_BWD)):
                raise UserError(
                    f"{shard_name(h5)}: video {video!r}: dataset {name} has shape {arr.shape} for {n} frames"
                )
        self.file_size = os.path.getsize(h5.filename)
        try:
            at = self.blob.id.get_offset() if self.blob.compression is None else None
            self.blob_at = -1 if at is None or not 0 <= int(at) <= self.file_size - self.blob.shape[0] else int(at)
            self.chunk_bytes = int(np.prod(self.fwd.shape[1:])) * 2
            self.fwd_at = self._chunk_offsets(self.fwd)
            self.bwd_at = self._chunk_offsets(self.bwd)
        except H5_ERRORS as exc:
            raise UserError(
                f"{shard_name(h5)}: video {video!r}: dataset layout cannot be read ({short_error(exc)})"
            ) from None

    def _chunk_offsets(self, ds) -> np.ndarray:
        n = ds.shape[0]
        out = np.full(n, -1, np.int64)
        if ds.compression is not None or ds.chunks != (1,) + ds.shape[1:] or n == 0:
            return out
        for k in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(k)
            if (
                info.byte_offset is not None
                and info.size == self.chunk_bytes
                and 0 <= info.chunk_offset[0] < n
                and 0 <= info.byte_offset <= self.file_size - info.size
            ):  # damaged indexes go through h5py
                out[info.chunk_offset[0]] = info.byte_offset
        return out


class ShardReader:
    """Read-only random access to one shard, with per-video handles and indexes cached.

    Made for the training reader: open one per process (h5py handles do not survive fork).
    ``jpeg(video, i) -> bytes`` and ``flows(video, start, count) -> (fwd, bwd)`` float32
    [count, 2, h8, w8] check CRCs when ``check_crc`` is true. Because the JPEG blob is contiguous
    and flow chunks are unfiltered, both are read with ``os.pread`` at the file offsets HDF5 reports
    (consecutive flow chunks in one call), falling back to h5py for any other layout. The shard must
    not be written while a reader has it open.
    """

    def __init__(self, path, check_crc: bool = True, rdcc_nbytes: int = 0):
        self.path = os.fspath(path)
        self.check_crc = check_crc
        self.h5 = open_shard(self.path, "r", rdcc_nbytes=rdcc_nbytes)
        self.name = os.path.basename(self.path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.h5.close()
            raise UserError(f"{self.path}: cannot open shard ({exc.strerror})") from None
        self._cache: Dict[Any, Any] = {}
        self._size = os.fstat(self._fd).st_size
        self._checked = time.monotonic()

    def changed(self, every_s: float = 1.0) -> Optional[str]:
        """None while the file is still linked and as long as when it was opened; otherwise one line
        saying what happened (deleted, truncated or rewritten). Checks at most every ``every_s``
        seconds (an ``fstat``); reads through the open descriptor would go on serving a deleted
        file, and fail only sample by sample on a truncated one."""
        now = time.monotonic()
        if now - self._checked < every_s or self._fd < 0:
            return None
        self._checked = now
        try:
            st = os.fstat(self._fd)
        except OSError as exc:
            return f"{self.path}: shard cannot be checked ({exc.strerror})"
        if st.st_nlink == 0:
            return f"{self.path}: shard was deleted while training read it"
        if st.st_size != self._size:
            return (
                f"{self.path}: shard changed size from {self._size} to {st.st_size} bytes while training "
                f"read it (truncated or rewritten)"
            )
        return None

    def close(self) -> None:
        self._cache.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.h5.close()

    def _handles(self, video: str) -> _VideoHandles:
        h = self._cache.get(video)
        if h is None:
            h = self._cache[video] = _VideoHandles(self.h5, video_group(self.h5, video), video)
        return h

    def _pread(self, n: int, at: int, what: str) -> bytes:
        try:
            data = os.pread(self._fd, n, at)
        except (OSError, OverflowError, ValueError) as exc:
            raise UserError(f"{self.name}: {what}: cannot read {n} bytes at {at} ({exc})") from None
        if len(data) != n:
            raise UserError(f"{self.name}: {what}: file ends early (truncated shard)")
        return data

    def jpeg(self, video: str, i: int) -> bytes:
        h = self._handles(video)
        i = int(i)
        check_frame_index(self.h5, video, i, h.offset.shape[0])
        off, n = int(h.offset[i]), int(h.length[i])
        if off < 0 or n < 0 or off + n > h.blob.shape[0]:
            raise UserError(
                f"{self.name}: video {video!r} frame {i}: JPEG bytes [{off}, {off + n}) lie outside "
                f"the {h.blob.shape[0]}-byte {JPEG} dataset"
            )
        if h.blob_at >= 0:
            data = self._pread(n, h.blob_at + off, f"video {video!r} frame {i}")
        else:
            data = read_dataset(self.h5, video, JPEG, h.blob, slice(off, off + n)).tobytes()
        if self.check_crc and crc32(data) != int(h.crc[i]):
            raise UserError(f"{self.name}: video {video!r} frame {i}: JPEG bytes fail their CRC32")
        return data

    def _read_chunks(self, ds, at: np.ndarray, start: int, count: int, video: str, label: str) -> np.ndarray:
        sel = at[start : start + count]
        cb = self.chunk_bytes_of(ds)
        if (sel >= 0).all() and (count == 1 or (np.diff(sel) == cb).all()):
            buf = np.empty((count,) + ds.shape[1:], "<f2")
            try:
                n = os.preadv(self._fd, [buf], int(sel[0]))  # type: ignore[list-item]  # numpy types ndarray as a Buffer only on 3.12+
            except (OSError, OverflowError, ValueError) as exc:
                raise UserError(
                    f"{self.name}: video {video!r} {label} pairs {start}..{start + count - 1}: cannot read ({exc})"
                ) from None
            if n != buf.nbytes:
                raise UserError(
                    f"{self.name}: video {video!r} {label} pairs {start}..{start + count - 1}: "
                    f"file ends early (truncated shard)"
                )
            return buf
        return read_dataset(self.h5, video, label, ds, slice(start, start + count))

    @staticmethod
    def chunk_bytes_of(ds) -> int:
        return int(np.prod(ds.shape[1:])) * 2

    def flows(self, video: str, start: int, count: int, as_stored: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """Pairs ``start .. start+count-1``: float32 [count, 2, h8, w8] (float16 if ``as_stored``)."""
        h = self._handles(video)
        pairs = h.present.shape[0]
        start, count = int(start), int(count)
        if start < 0 or count < 0 or start + count > pairs:
            raise UserError(
                f"{self.name}: video {video!r} flow pairs [{start}, {start + count}) out of range [0, {pairs})"
            )
        h8, w8 = h.fwd.shape[2:]
        dtype = np.float16 if as_stored else np.float32
        if count == 0:
            return np.zeros((0, 2, h8, w8), dtype), np.zeros((0, 2, h8, w8), dtype)
        present = h.present[start : start + count]
        if not present.all():
            j = start + int(np.argmin(present))
            raise UserError(
                f"{self.name}: video {video!r} flow pair {j} is missing (run 'hdf5_tools flow' on this shard)"
            )
        out = []
        for ds, at, crcs, label in ((h.fwd, h.fwd_at, h.fwd_crc, FLOW_FWD), (h.bwd, h.bwd_at, h.bwd_crc, FLOW_BWD)):
            arr = self._read_chunks(ds, at, start, count, video, label)
            if self.check_crc:
                for j in range(count):
                    if flow_crc(arr[j]) != int(crcs[start + j]):
                        raise UserError(f"{self.name}: video {video!r} {label} pair {start + j} fails its CRC32")
            out.append(arr if as_stored else arr.astype(np.float32))
        return out[0], out[1]
