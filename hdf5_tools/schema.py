"""The shard format: the only module that knows dataset names and the schema version.

A shard is one HDF5 file holding whole videos (a clip never crosses a shard). It opens with
plain h5py and Debian's ``h5ls``/``h5dump`` (no filters, no plugins). Layout, schema version 1::

    /                         attrs: format="pixpro_of.shard", schema_version=1
    /videos/<name>/           one group per video; attrs are the per-video table:
                                name (str), split (str), num_frames (int), height, width (frame
                                size in pixels), fps (float), source (str: where it was packed from),
                                flow_height, flow_width (= ceil(height/8), ceil(width/8))
        jpeg          uint8  [total_bytes]      every frame's JPEG bytes, concatenated, contiguous
        jpeg_offset   int64  [T]                byte offset of frame i in ``jpeg``
        jpeg_length   int64  [T]                byte length of frame i
        jpeg_crc32    uint32 [T]                zlib.crc32 of frame i's bytes
        flow_fwd      float16 [T-1, 2, h8, w8]  fwd[i]: frame i -> i+1, chunk = one pair
        flow_bwd      float16 [T-1, 2, h8, w8]  bwd[i]: frame i+1 -> i (time order), chunk = one pair
        flow_fwd_crc32, flow_bwd_crc32  uint32 [T-1]  zlib.crc32 of the pair's float16 bytes (LE)
        flow_present  uint8  [T-1]              1 once pair i's fwd and bwd were written

Flows follow ARCHITECTURE.md: channel 0 = x, channel 1 = y, in pixels of the 1/8-resolution grid
(``h8 = ceil(H/8)``, ``w8 = ceil(W/8)``). Flow datasets are pre-allocated (chunks are only
allocated when written, so a shard packed without flows stays small) and filled later by
``hdf5_tools flow``; ``flow_present`` says which pairs exist.

Public API (other parts use these names):

- :func:`open_shard` ``(path, mode="r") -> h5py.File`` (checks the schema version; mode "r" or "r+")
- :func:`list_videos` ``(h5) -> list[VideoInfo]`` (name, split, num_frames, height, width, fps,
  source, flow_height, flow_width, flows_present)
- :func:`video_info` ``(h5, video) -> VideoInfo``
- :func:`read_frame_jpeg` ``(h5, video, i, check_crc=True) -> bytes``
- :func:`read_flows` ``(h5, video, start, count, check_crc=True) -> (fwd, bwd)`` float32
  ``[count, 2, h8, w8]``
- :func:`write_flow_pair` ``(h5, video, i, fwd, bwd)``: float32 ``[2, h8, w8]`` in, float16
  stored, CRCs and the present flag updated (shard opened with mode "r+")
- :func:`write_flows` ``(h5, video, fwd, bwd, start=0)``: many pairs at once ``[n, 2, h8, w8]``
- :func:`flow_pair_present` ``(h5, video, i) -> bool``; :func:`flows_present` ``(h5, video) -> bool array``
- :func:`create_shard` ``(path) -> h5py.File`` and :func:`add_video` (used by ``pack``)

No compression filters: JPEG bytes do not compress (gzip made them larger and 20x slower to read,
see field-anchors §3.1), and float16 flows already take half the seed's float32 bytes; blosc-lz4 +
shuffle would save another ~1.4x on flows but every reader would then need ``hdf5plugin`` and
``h5ls``/``h5dump`` could no longer show the data, so it is not used.

Writers: one process writes a shard at a time; readers open shards read-only. A user mistake
(an unknown video or index, a damaged shard) raises :class:`plumbing.errors.UserError` naming the
shard, the video and the index; damaged HDF5 structure (a deleted dataset, a broken object
header, a truncated file) names the shard, the video and the dataset, never a bare KeyError or
OSError from h5py.
"""
from __future__ import annotations

import math
import os
import time
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import h5py
import numpy as np

from plumbing.errors import UserError

SCHEMA_VERSION = 1
FORMAT = "pixpro_of.shard"
FLOW_STRIDE = 8  # flows are stored at 1/8 of the frame size

VIDEOS = "videos"
JPEG = "jpeg"
JPEG_OFFSET = "jpeg_offset"
JPEG_LENGTH = "jpeg_length"
JPEG_CRC = "jpeg_crc32"
FLOW_FWD = "flow_fwd"
FLOW_BWD = "flow_bwd"
FLOW_FWD_CRC = "flow_fwd_crc32"
FLOW_BWD_CRC = "flow_bwd_crc32"
FLOW_PRESENT = "flow_present"
VIDEO_DATASETS = (JPEG, JPEG_OFFSET, JPEG_LENGTH, JPEG_CRC, FLOW_FWD, FLOW_BWD, FLOW_FWD_CRC,
                  FLOW_BWD_CRC, FLOW_PRESENT)
VIDEO_ATTRS = ("name", "split", "num_frames", "height", "width", "fps", "source", "flow_height",
               "flow_width")
STR_ATTRS = ("name", "split", "source")
INT_ATTRS = ("num_frames", "height", "width", "flow_height", "flow_width")
# dtype and rank of every per-video dataset
DATASET_TYPES = {JPEG: ("u1", 1), JPEG_OFFSET: ("i8", 1), JPEG_LENGTH: ("i8", 1), JPEG_CRC: ("u4", 1),
                 FLOW_FWD: ("f2", 4), FLOW_BWD: ("f2", 4), FLOW_FWD_CRC: ("u4", 1), FLOW_BWD_CRC: ("u4", 1),
                 FLOW_PRESENT: ("u1", 1)}
H5_ERRORS = (KeyError, OSError, RuntimeError, ValueError, TypeError)  # what h5py raises on damaged files


@dataclass(frozen=True)
class VideoInfo:
    """One row of a shard's per-video table. Sizes in pixels; ``flows_present`` counts pairs."""

    name: str
    split: str
    num_frames: int
    height: int
    width: int
    fps: float
    source: str
    flow_height: int
    flow_width: int
    flows_present: int

    @property
    def num_pairs(self) -> int:
        return max(self.num_frames - 1, 0)


def flow_size(height: int, width: int) -> Tuple[int, int]:
    """The 1/8-resolution flow grid for a frame of ``height`` x ``width`` pixels."""
    return math.ceil(height / FLOW_STRIDE), math.ceil(width / FLOW_STRIDE)


def crc32(data) -> int:
    """zlib CRC32 of a bytes-like object or a numpy array's raw bytes (as an unsigned int)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8)
    return zlib.crc32(data) & 0xFFFFFFFF


def flow_crc(arr16: np.ndarray) -> int:
    """CRC32 of one stored flow chunk: a little-endian float16 array [2, h8, w8]."""
    return crc32(np.ascontiguousarray(arr16, dtype="<f2"))


def shard_name(h5: h5py.File) -> str:
    return os.path.basename(h5.filename)


# --------------------------------------------------------------------------- open / create

def open_shard(path, mode: str = "r", **kwargs) -> h5py.File:
    """Open a shard (mode "r" or "r+") and check its format and schema version.

    Extra keyword arguments go to :class:`h5py.File` (e.g. ``rdcc_nbytes``). File locking is off
    (shards are immutable while read; locking fails on some parallel file systems).
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"open_shard mode must be 'r' or 'r+', got {mode!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: shard not found")
    try:
        h5 = h5py.File(path, mode, locking=False, **kwargs)
    except OSError as exc:
        raise UserError(f"{path}: cannot open shard (truncated or not HDF5: {_short(exc)})") from None
    try:
        check_header(h5)
    except Exception:
        h5.close()
        raise
    return h5


def check_header(h5: h5py.File) -> None:
    """Raise UserError unless ``h5`` carries this module's format tag and schema version."""
    try:
        fmt = h5.attrs.get("format")
        version = h5.attrs.get("schema_version")
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: root attributes are damaged ({_short(exc)})") from None
    if isinstance(fmt, bytes):
        fmt = fmt.decode(errors="replace")
    if fmt != FORMAT:
        raise UserError(f"{shard_name(h5)}: not a pixpro_of shard (format attribute {fmt!r})")
    if isinstance(version, np.generic):
        version = version.item()
    if not isinstance(version, int) or version != SCHEMA_VERSION:
        raise UserError(f"{shard_name(h5)}: unknown schema_version {version!r} "
                        f"(this code reads version {SCHEMA_VERSION})")
    try:
        ok = VIDEOS in h5 and isinstance(h5[VIDEOS], h5py.Group)
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: group /{VIDEOS} is damaged ({_short(exc)})") from None
    if not ok:
        raise UserError(f"{shard_name(h5)}: missing group /{VIDEOS}")


def create_shard(path) -> h5py.File:
    """Create an empty shard at ``path`` (overwrites). Callers write under a temporary name."""
    h5 = h5py.File(os.fspath(path), "w", locking=False)
    h5.attrs["format"] = FORMAT
    h5.attrs["schema_version"] = SCHEMA_VERSION
    h5.create_group(VIDEOS)
    return h5


def check_video_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.strip() != name:
        raise UserError(f"video name {name!r} cannot be a shard group name (no '/', no blanks at the ends)")


def add_video(h5: h5py.File, name: str, jpegs: Sequence[bytes], *, split: str, height: int,
              width: int, fps: float, source: str) -> None:
    """Write one video's frames (JPEG bytes, stored as-is) and pre-allocate its flow datasets.

    ``height``/``width`` are the frames' size in pixels (the caller checked every frame has it).
    """
    check_video_name(name)
    if name in h5[VIDEOS]:
        raise UserError(f"{shard_name(h5)}: video {name!r} is already in the shard")
    n = len(jpegs)
    if n < 1:
        raise UserError(f"{shard_name(h5)}: video {name!r} has no frames")
    lengths = np.array([len(b) for b in jpegs], np.int64)
    offsets = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    g = h5[VIDEOS].create_group(name)
    blob = g.create_dataset(JPEG, shape=(int(lengths.sum()),), dtype=np.uint8)
    # Write in pieces of about 8 MiB (bounded, cache-friendly joins).
    start, piece, piece_bytes = 0, [], 0
    for b in jpegs:
        piece.append(b)
        piece_bytes += len(b)
        if piece_bytes >= 8 << 20:
            blob[start:start + piece_bytes] = np.frombuffer(b"".join(piece), np.uint8)
            start, piece, piece_bytes = start + piece_bytes, [], 0
    if piece_bytes:
        blob[start:start + piece_bytes] = np.frombuffer(b"".join(piece), np.uint8)
    g.create_dataset(JPEG_OFFSET, data=offsets)
    g.create_dataset(JPEG_LENGTH, data=lengths)
    g.create_dataset(JPEG_CRC, data=np.array([crc32(b) for b in jpegs], np.uint32))
    h8, w8 = flow_size(height, width)
    pairs = n - 1
    for ds in (FLOW_FWD, FLOW_BWD):
        g.create_dataset(ds, shape=(pairs, 2, h8, w8), maxshape=(None, 2, h8, w8), dtype="<f2",
                         chunks=(1, 2, h8, w8), fillvalue=0)
    g.create_dataset(FLOW_FWD_CRC, data=np.zeros(pairs, np.uint32))
    g.create_dataset(FLOW_BWD_CRC, data=np.zeros(pairs, np.uint32))
    g.create_dataset(FLOW_PRESENT, data=np.zeros(pairs, np.uint8))
    g.attrs.update(dict(name=name, split=split, num_frames=n, height=int(height), width=int(width),
                        fps=float(fps), source=str(source), flow_height=h8, flow_width=w8))


# --------------------------------------------------------------------------- read

def _video_group(h5: h5py.File, video: str) -> h5py.Group:
    try:
        g = h5[VIDEOS][video]
    except KeyError:
        raise UserError(f"{shard_name(h5)}: no video {video!r}") from None
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: video {video!r}: group is damaged ({_short(exc)})") from None
    if not isinstance(g, h5py.Group):
        raise UserError(f"{shard_name(h5)}: video {video!r} is not a group")
    return g


def _dataset(h5: h5py.File, g: h5py.Group, video: str, name: str) -> h5py.Dataset:
    """Dataset ``name`` of a video group; UserError naming shard, video and dataset when it is
    missing or its object header cannot be read."""
    try:
        ds = g[name]
    except KeyError as exc:  # h5py says KeyError both for no link and for a header it cannot read
        try:
            linked = name in g
        except H5_ERRORS:
            linked = True
        if not linked:
            raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} is missing") from None
        raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} is damaged ({_short(exc)})") from None
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} is damaged ({_short(exc)})") from None
    if not isinstance(ds, h5py.Dataset):
        raise UserError(f"{shard_name(h5)}: video {video!r}: {name} is not a dataset")
    return ds


def _read(h5: h5py.File, video: str, name: str, ds: h5py.Dataset, sel=()) -> np.ndarray:
    """``ds[sel]``; UserError naming shard, video and dataset when HDF5 cannot read it."""
    try:
        return ds[sel]
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} cannot be read ({_short(exc)})") from None


def _array(h5: h5py.File, g: h5py.Group, video: str, name: str) -> np.ndarray:
    return _read(h5, video, name, _dataset(h5, g, video, name))


def _plain(v):
    """numpy scalars as Python values (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def video_attrs(h5: h5py.File, video: str, g: Optional[h5py.Group] = None) -> dict:
    """A video's table row as checked Python values; UserError naming the attribute when one is
    missing, of the wrong type or out of range, or does not match the group's name."""
    g = _video_group(h5, video) if g is None else g
    where = f"{shard_name(h5)}: video {video!r}"
    try:
        a = dict(g.attrs)
    except H5_ERRORS as exc:
        raise UserError(f"{where}: attributes are damaged ({_short(exc)})") from None
    missing = [k for k in VIDEO_ATTRS if k not in a]
    if missing:
        raise UserError(f"{where} lacks attributes {missing}")
    out = {}
    for k in STR_ATTRS:
        v = a[k]
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError:
                raise UserError(f"{where}: attribute {k} is not UTF-8 text") from None
        if not isinstance(v, str):
            raise UserError(f"{where}: attribute {k} must be a string, got {type(v).__name__} {_plain(v)!r}")
        out[k] = v
    for k in INT_ATTRS:
        v = a[k]
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
            raise UserError(f"{where}: attribute {k} must be an integer, got {type(v).__name__} {_plain(v)!r}")
        if int(v) < 1:
            raise UserError(f"{where}: attribute {k} must be >= 1, got {int(v)}")
        out[k] = int(v)
    fps = a["fps"]
    if not isinstance(fps, (int, float, np.integer, np.floating)) or isinstance(fps, (bool, np.bool_)) \
            or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise UserError(f"{where}: attribute fps must be a positive number, got {_plain(fps)!r}")
    out["fps"] = float(fps)
    if out["name"] != video:
        raise UserError(f"{where}: attribute name is {out['name']!r}, not the group's name {video!r}")
    h8, w8 = flow_size(out["height"], out["width"])
    if (out["flow_height"], out["flow_width"]) != (h8, w8):
        raise UserError(f"{where}: flow size {out['flow_height']}x{out['flow_width']} != {h8}x{w8} "
                        f"(ceil of {out['height']}x{out['width']} / {FLOW_STRIDE})")
    return out


def video_info(h5: h5py.File, video: str) -> VideoInfo:
    """The per-video table row of ``video``."""
    g = _video_group(h5, video)
    a = video_attrs(h5, video, g)
    try:
        has_flags = FLOW_PRESENT in g
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: video {video!r}: the group's links are damaged ({_short(exc)})") from None
    present = _array(h5, g, video, FLOW_PRESENT) if has_flags else np.zeros(0, np.uint8)
    return VideoInfo(name=a["name"], split=a["split"], num_frames=a["num_frames"], height=a["height"],
                     width=a["width"], fps=a["fps"], source=a["source"], flow_height=a["flow_height"],
                     flow_width=a["flow_width"], flows_present=int(np.count_nonzero(present)))


def video_names(h5: h5py.File) -> List[str]:
    """The shard's video group names, sorted."""
    try:
        return sorted(h5[VIDEOS].keys())
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: group /{VIDEOS} cannot be listed ({_short(exc)})") from None


def list_videos(h5: h5py.File) -> List[VideoInfo]:
    """Every video in the shard (sorted by name) with its table row."""
    return [video_info(h5, name) for name in video_names(h5)]


def _check_frame_index(h5, video, i, n):
    if not 0 <= i < n:
        raise UserError(f"{shard_name(h5)}: video {video!r} frame index {i} out of range [0, {n})")


def read_frame_jpeg(h5: h5py.File, video: str, i: int, check_crc: bool = True) -> bytes:
    """The JPEG bytes of frame ``i`` (0-based) of ``video``, as packed (CRC-checked)."""
    g = _video_group(h5, video)
    offsets = _dataset(h5, g, video, JPEG_OFFSET)
    n = offsets.shape[0]
    i = int(i)
    _check_frame_index(h5, video, i, n)
    off = int(_read(h5, video, JPEG_OFFSET, offsets, i))
    length = int(_read(h5, video, JPEG_LENGTH, _dataset(h5, g, video, JPEG_LENGTH), i))
    data = _read(h5, video, JPEG, _dataset(h5, g, video, JPEG), slice(off, off + length)).tobytes()
    if len(data) != length:
        raise UserError(f"{shard_name(h5)}: video {video!r} frame {i}: JPEG bytes end outside the blob")
    if check_crc and crc32(data) != int(_read(h5, video, JPEG_CRC, _dataset(h5, g, video, JPEG_CRC), i)):
        raise UserError(f"{shard_name(h5)}: video {video!r} frame {i}: JPEG bytes fail their CRC32")
    return data


def flows_present(h5: h5py.File, video: str) -> np.ndarray:
    """Boolean [T-1]: which adjacent pairs of ``video`` have their flows stored."""
    return _array(h5, _video_group(h5, video), video, FLOW_PRESENT).astype(bool)


def flow_pair_present(h5: h5py.File, video: str, i: int) -> bool:
    """Whether pair ``i`` (frames i, i+1) of ``video`` has both flows stored."""
    g = _video_group(h5, video)
    present = _array(h5, g, video, FLOW_PRESENT)
    pairs = present.shape[0]
    if not 0 <= int(i) < pairs:
        raise UserError(f"{shard_name(h5)}: video {video!r} flow pair {i} out of range [0, {pairs})")
    return bool(present[int(i)])


def read_flows(h5: h5py.File, video: str, start: int, count: int,
               check_crc: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs ``start .. start+count-1`` of ``video`` as float32 ``(fwd, bwd)``, each [count, 2, h8, w8].

    ``fwd[j]`` maps frame start+j -> start+j+1; ``bwd[j]`` maps start+j+1 -> start+j.
    Raises UserError naming the pair when a flow is missing or fails its CRC.
    """
    g = _video_group(h5, video)
    pairs = _dataset(h5, g, video, FLOW_PRESENT).shape[0]
    start, count = int(start), int(count)
    if start < 0 or count < 0 or start + count > pairs:
        raise UserError(f"{shard_name(h5)}: video {video!r} flow pairs [{start}, {start + count}) "
                        f"out of range [0, {pairs})")
    return _read_flows(h5, video, g, start, count, check_crc)


def _read_flows(h5, video, g, start, count, check_crc):
    h8, w8 = _dataset(h5, g, video, FLOW_FWD).shape[2:]
    if count == 0:
        z = np.zeros((0, 2, h8, w8), np.float32)
        return z, z.copy()
    present = _read(h5, video, FLOW_PRESENT, _dataset(h5, g, video, FLOW_PRESENT), slice(start, start + count))
    if not present.all():
        j = start + int(np.argmin(present))
        raise UserError(f"{shard_name(h5)}: video {video!r} flow pair {j} is missing "
                        f"(run 'hdf5_tools flow' on this shard)")
    out = []
    for ds, crc_ds in ((FLOW_FWD, FLOW_FWD_CRC), (FLOW_BWD, FLOW_BWD_CRC)):
        arr = _read(h5, video, ds, _dataset(h5, g, video, ds), slice(start, start + count))
        if check_crc:
            crcs = _read(h5, video, crc_ds, _dataset(h5, g, video, crc_ds), slice(start, start + count))
            for j in range(count):
                if flow_crc(arr[j]) != int(crcs[j]):
                    raise UserError(f"{shard_name(h5)}: video {video!r} {ds} pair {start + j} "
                                    f"fails its CRC32")
        out.append(arr.astype(np.float32))
    return out[0], out[1]


# --------------------------------------------------------------------------- write flows

def _to_f16(h5, video, name, arr, shape):
    arr = np.asarray(arr)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{shard_name(h5)}: video {video!r}: {name} must have shape {tuple(shape)}, "
                         f"got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{shard_name(h5)}: video {video!r}: {name} has non-finite values")
    big = float(np.abs(arr).max()) if arr.size else 0.0
    if big > 65504.0:
        raise ValueError(f"{shard_name(h5)}: video {video!r}: {name} has |value| {big} beyond float16 range")
    return np.ascontiguousarray(arr, dtype="<f2")


def write_flows(h5: h5py.File, video: str, fwd: np.ndarray, bwd: np.ndarray, start: int = 0) -> None:
    """Store pairs ``start .. start+n-1`` of ``video`` from float32 ``fwd``/``bwd`` [n, 2, h8, w8].

    Values are in 1/8-resolution pixels; they are rounded to float16. CRCs and the present flags
    are updated after the data, so a killed writer never leaves a pair flagged with bad data.
    """
    g = _video_group(h5, video)
    pairs, _, h8, w8 = g[FLOW_FWD].shape
    fwd = np.asarray(fwd)
    n = fwd.shape[0] if fwd.ndim == 4 else -1
    start = int(start)
    if n < 0 or start < 0 or start + n > pairs:
        raise ValueError(f"{shard_name(h5)}: video {video!r}: fwd must be [n, 2, {h8}, {w8}] with "
                         f"start + n <= {pairs}, got shape {tuple(fwd.shape)} at start {start}")
    f16 = _to_f16(h5, video, "fwd", fwd, (n, 2, h8, w8))
    b16 = _to_f16(h5, video, "bwd", bwd, (n, 2, h8, w8))
    if n == 0:
        return
    g[FLOW_FWD][start:start + n] = f16
    g[FLOW_BWD][start:start + n] = b16
    g[FLOW_FWD_CRC][start:start + n] = np.array([flow_crc(a) for a in f16], np.uint32)
    g[FLOW_BWD_CRC][start:start + n] = np.array([flow_crc(a) for a in b16], np.uint32)
    g[FLOW_PRESENT][start:start + n] = 1


def write_flow_pair(h5: h5py.File, video: str, i: int, fwd: np.ndarray, bwd: np.ndarray) -> None:
    """Store pair ``i`` of ``video``: ``fwd`` (frame i -> i+1) and ``bwd`` (i+1 -> i), float32 [2, h8, w8]."""
    g = _video_group(h5, video)
    shape = g[FLOW_FWD].shape[1:]
    fwd, bwd = np.asarray(fwd), np.asarray(bwd)
    if tuple(fwd.shape) != tuple(shape) or tuple(bwd.shape) != tuple(shape):
        raise ValueError(f"{shard_name(h5)}: video {video!r} pair {i}: fwd and bwd must have shape "
                         f"{tuple(shape)}, got {tuple(fwd.shape)} and {tuple(bwd.shape)}")
    write_flows(h5, video, fwd[None], bwd[None], start=int(i))


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]


# --------------------------------------------------------------------------- fast reader

class _VideoHandles:
    """Cached dataset handles, index arrays and raw file offsets of one video (for repeated reads).

    ``blob_at`` is the file offset of the (contiguous, unfiltered) JPEG blob, or -1 if the blob is
    not stored that way. ``fwd_at``/``bwd_at`` hold each flow chunk's file offset (-1 where the chunk
    is not allocated or the dataset is filtered); they are looked up on first use of the video.
    """

    __slots__ = ("blob", "offset", "length", "crc", "fwd", "bwd", "fwd_crc", "bwd_crc", "present",
                 "blob_at", "fwd_at", "bwd_at", "chunk_bytes", "file_size")

    def __init__(self, h5: h5py.File, g: h5py.Group, video: str):
        self.blob = _dataset(h5, g, video, JPEG)
        self.offset = _array(h5, g, video, JPEG_OFFSET)
        self.length = _array(h5, g, video, JPEG_LENGTH)
        self.crc = _array(h5, g, video, JPEG_CRC)
        self.fwd = _dataset(h5, g, video, FLOW_FWD)
        self.bwd = _dataset(h5, g, video, FLOW_BWD)
        self.fwd_crc = _array(h5, g, video, FLOW_FWD_CRC)
        self.bwd_crc = _array(h5, g, video, FLOW_BWD_CRC)
        self.present = _array(h5, g, video, FLOW_PRESENT)
        n = self.offset.shape[0]
        for name, arr in ((JPEG_LENGTH, self.length), (JPEG_CRC, self.crc)):
            if arr.shape != (n,):
                raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} has shape {arr.shape}, "
                                f"{JPEG_OFFSET} has {(n,)}")
        pairs = max(n - 1, 0)
        for name, arr in ((FLOW_PRESENT, self.present), (FLOW_FWD_CRC, self.fwd_crc), (FLOW_BWD_CRC, self.bwd_crc),
                          (FLOW_FWD, self.fwd), (FLOW_BWD, self.bwd)):
            if arr.shape[:1] != (pairs,) or (arr.ndim == 4) != (name in (FLOW_FWD, FLOW_BWD)):
                raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} has shape {arr.shape} "
                                f"for {n} frames")
        self.file_size = os.path.getsize(h5.filename)
        try:
            at = self.blob.id.get_offset() if self.blob.compression is None else None
            self.blob_at = -1 if at is None or not 0 <= int(at) <= self.file_size - self.blob.shape[0] else int(at)
            self.chunk_bytes = int(np.prod(self.fwd.shape[1:])) * 2
            self.fwd_at = self._chunk_offsets(self.fwd)
            self.bwd_at = self._chunk_offsets(self.bwd)
        except H5_ERRORS as exc:
            raise UserError(f"{shard_name(h5)}: video {video!r}: dataset layout cannot be read ({_short(exc)})") from None

    def _chunk_offsets(self, ds) -> np.ndarray:
        n = ds.shape[0]
        out = np.full(n, -1, np.int64)
        if ds.compression is not None or ds.chunks != (1,) + ds.shape[1:] or n == 0:
            return out
        for k in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(k)
            if info.byte_offset is not None and info.size == self.chunk_bytes and 0 <= info.chunk_offset[0] < n \
                    and 0 <= info.byte_offset <= self.file_size - info.size:  # damaged indexes go through h5py
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
        self._cache = {}
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
            return (f"{self.path}: shard changed size from {self._size} to {st.st_size} bytes while training "
                    f"read it (truncated or rewritten)")
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
            h = self._cache[video] = _VideoHandles(self.h5, _video_group(self.h5, video), video)
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
        _check_frame_index(self.h5, video, i, h.offset.shape[0])
        off, n = int(h.offset[i]), int(h.length[i])
        if off < 0 or n < 0 or off + n > h.blob.shape[0]:
            raise UserError(f"{self.name}: video {video!r} frame {i}: JPEG bytes [{off}, {off + n}) lie outside "
                            f"the {h.blob.shape[0]}-byte {JPEG} dataset")
        if h.blob_at >= 0:
            data = self._pread(n, h.blob_at + off, f"video {video!r} frame {i}")
        else:
            data = _read(self.h5, video, JPEG, h.blob, slice(off, off + n)).tobytes()
        if self.check_crc and crc32(data) != int(h.crc[i]):
            raise UserError(f"{self.name}: video {video!r} frame {i}: JPEG bytes fail their CRC32")
        return data

    def _read_chunks(self, ds, at: np.ndarray, start: int, count: int, video: str, label: str) -> np.ndarray:
        sel = at[start:start + count]
        cb = self.chunk_bytes_of(ds)
        if (sel >= 0).all() and (count == 1 or (np.diff(sel) == cb).all()):
            buf = np.empty((count,) + ds.shape[1:], "<f2")
            try:
                n = os.preadv(self._fd, [buf], int(sel[0]))
            except (OSError, OverflowError, ValueError) as exc:
                raise UserError(f"{self.name}: video {video!r} {label} pairs {start}..{start + count - 1}: "
                                f"cannot read ({exc})") from None
            if n != buf.nbytes:
                raise UserError(f"{self.name}: video {video!r} {label} pairs {start}..{start + count - 1}: "
                                f"file ends early (truncated shard)")
            return buf
        return _read(self.h5, video, label, ds, slice(start, start + count))

    @staticmethod
    def chunk_bytes_of(ds) -> int:
        return int(np.prod(ds.shape[1:])) * 2

    def flows(self, video: str, start: int, count: int, as_stored: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """Pairs ``start .. start+count-1``: float32 [count, 2, h8, w8] (float16 if ``as_stored``)."""
        h = self._handles(video)
        pairs = h.present.shape[0]
        start, count = int(start), int(count)
        if start < 0 or count < 0 or start + count > pairs:
            raise UserError(f"{self.name}: video {video!r} flow pairs [{start}, {start + count}) "
                            f"out of range [0, {pairs})")
        h8, w8 = h.fwd.shape[2:]
        dtype = np.float16 if as_stored else np.float32
        if count == 0:
            return np.zeros((0, 2, h8, w8), dtype), np.zeros((0, 2, h8, w8), dtype)
        present = h.present[start:start + count]
        if not present.all():
            j = start + int(np.argmin(present))
            raise UserError(f"{self.name}: video {video!r} flow pair {j} is missing "
                            f"(run 'hdf5_tools flow' on this shard)")
        out = []
        for ds, at, crcs, label in ((h.fwd, h.fwd_at, h.fwd_crc, FLOW_FWD), (h.bwd, h.bwd_at, h.bwd_crc, FLOW_BWD)):
            arr = self._read_chunks(ds, at, start, count, video, label)
            if self.check_crc:
                for j in range(count):
                    if flow_crc(arr[j]) != int(crcs[start + j]):
                        raise UserError(f"{self.name}: video {video!r} {label} pair {start + j} "
                                        f"fails its CRC32")
            out.append(arr if as_stored else arr.astype(np.float32))
        return out[0], out[1]


# --------------------------------------------------------------------------- verification

def iter_problems(h5: h5py.File, deep: bool = False, decode=None, require_flows: bool = False):
    """Yield one message per problem found in an open shard (schema, counts, CRCs).

    Messages name the video and the index or dataset (the caller prefixes the shard). Always:
    the header, every video's attributes (present, typed, in range, ``name`` equal to the group's
    name, flow size), datasets (present, readable, dtype, shape), that the JPEG offsets tile the
    blob, every frame's CRC32, the ``flow_present`` flags (0 or 1) and every flagged flow chunk's
    CRC32. With ``deep``: ``decode`` (bytes -> uint8 [H, W, 3], raising on bad data) is applied
    to every frame and its size checked, stored flows must be finite, and a pair whose flows are
    stored (allocated, matching their CRCs) but not flagged is reported (training would call it
    missing). ``require_flows``: every pair must be flagged (what training with stored flows and
    k > 1 reads).
    """
    try:
        check_header(h5)
        names = video_names(h5)
    except UserError as exc:
        yield str(exc).split(": ", 1)[-1]
        return
    for name in names:
        try:
            yield from _video_problems(h5, name, deep, decode, require_flows)
        except UserError as exc:
            yield str(exc).split(": ", 1)[-1]


def _unprefixed(exc: UserError) -> str:
    return str(exc).split(": ", 1)[-1]


def _video_problems(h5, name, deep, decode, require_flows=False):
    v = f"video {name!r}"
    try:
        check_video_name(name)
    except UserError as exc:
        yield f"{v}: {exc}"
        return
    g = _video_group(h5, name)
    try:
        a = video_attrs(h5, name, g)
    except UserError as exc:
        yield _unprefixed(exc)
        return
    missing, damaged, wrong_type = [], [], []
    ds = {}
    for d in VIDEO_DATASETS:
        try:
            present = d in g
        except H5_ERRORS as exc:  # the reader checks links too: report it, as it would fail
            yield f"{v}: the group's links are damaged ({_short(exc)})"
            return
        if not present:
            missing.append(d)
            continue
        try:
            ds[d] = _dataset(h5, g, name, d)
        except UserError as exc:
            damaged.append(_unprefixed(exc))
    if missing:
        yield f"{v}: missing datasets {missing}"
    for m in damaged:
        yield m
    if missing or damaged:
        return
    for d, (kind, rank) in DATASET_TYPES.items():
        dt = ds[d].dtype
        ok = dt.kind == kind[0] and dt.itemsize == int(kind[1:]) and len(ds[d].shape) == rank
        if d in (FLOW_FWD, FLOW_BWD):
            ok = ok and dt.str == "<f2"  # read as raw little-endian float16 chunks
        if not ok:
            wrong_type.append(f"{d} is {dt.str} with {len(ds[d].shape)} dimensions (expected {kind}, {rank})")
    if wrong_type:
        yield f"{v}: wrong dataset types: {'; '.join(wrong_type)}"
        return
    n, height, width = a["num_frames"], a["height"], a["width"]
    h8, w8 = a["flow_height"], a["flow_width"]
    expect = {JPEG_OFFSET: (n,), JPEG_LENGTH: (n,), JPEG_CRC: (n,), FLOW_FWD: (n - 1, 2, h8, w8),
              FLOW_BWD: (n - 1, 2, h8, w8), FLOW_FWD_CRC: (n - 1,), FLOW_BWD_CRC: (n - 1,),
              FLOW_PRESENT: (n - 1,)}
    bad = [f"{d} {ds[d].shape} != {s}" for d, s in expect.items() if ds[d].shape != s]
    if bad:
        yield f"{v}: wrong shapes: {'; '.join(bad)}"
        return
    offset, length, crcs = (_read(h5, name, d, ds[d]) for d in (JPEG_OFFSET, JPEG_LENGTH, JPEG_CRC))
    present = _read(h5, name, FLOW_PRESENT, ds[FLOW_PRESENT])
    fcrc, bcrc = _read(h5, name, FLOW_FWD_CRC, ds[FLOW_FWD_CRC]), _read(h5, name, FLOW_BWD_CRC, ds[FLOW_BWD_CRC])
    blob_len = ds[JPEG].shape[0]
    ends = offset + length
    if n and (offset[0] != 0 or (length <= 0).any() or (offset[1:] != ends[:-1]).any() or ends[-1] != blob_len):
        yield f"{v}: {JPEG_OFFSET}/{JPEG_LENGTH} do not tile the {blob_len}-byte {JPEG} dataset"
        return
    for i in range(n):
        try:
            data = _read(h5, name, JPEG, ds[JPEG], slice(int(offset[i]), int(ends[i]))).tobytes()
        except UserError as exc:
            yield f"{v} frame {i}: {_unprefixed(exc)}"
            continue
        if crc32(data) != int(crcs[i]):
            yield f"{v} frame {i}: JPEG bytes fail their CRC32"
            continue
        if deep and decode is not None:
            try:
                img = decode(data)
            except Exception as exc:
                yield f"{v} frame {i}: JPEG does not decode ({_short(exc)})"
                continue
            if tuple(img.shape[:2]) != (height, width):
                yield f"{v} frame {i}: decodes to {img.shape[1]}x{img.shape[0]}, table says {width}x{height}"
    odd = np.flatnonzero((present != 0) & (present != 1))
    if odd.size:
        yield f"{v}: {FLOW_PRESENT} holds {int(present[odd[0]])} at pair {int(odd[0])} (flags are 0 or 1)"
    for d, crc_arr in ((FLOW_FWD, fcrc), (FLOW_BWD, bcrc)):
        for i in np.flatnonzero(present):
            try:
                arr = _read(h5, name, d, ds[d], int(i))
            except UserError:
                yield f"{v} {d} pair {int(i)}: cannot read the flow chunk"
                continue
            if flow_crc(arr) != int(crc_arr[i]):
                yield f"{v} {d} pair {int(i)}: flow chunk fails its CRC32"
            elif deep and not np.isfinite(arr).all():
                yield f"{v} {d} pair {int(i)}: flow chunk holds non-finite values"
    if deep:
        for i in np.flatnonzero(present == 0):
            if _pair_stored(h5, name, ds, int(i), fcrc, bcrc):
                yield (f"{v} flow pair {int(i)}: its flows are stored and match their CRC32s but {FLOW_PRESENT} is 0 "
                       f"(a cleared flag, or 'hdf5_tools flow' stopped before setting it; "
                       f"training would call it missing)")
    if require_flows and n > 1 and not present.all():
        missing_pairs = np.flatnonzero(present == 0)
        yield (f"{v}: {missing_pairs.size} of {n - 1} flow pairs are missing (first: pair {int(missing_pairs[0])}); "
               f"run 'hdf5_tools flow' on this shard")


def _pair_stored(h5, name, ds, i, fcrc, bcrc) -> bool:
    """Whether pair ``i``'s flow chunks are both written and match their stored CRCs."""
    if int(fcrc[i]) == 0 and int(bcrc[i]) == 0:
        return False
    for d, crc_arr in ((FLOW_FWD, fcrc), (FLOW_BWD, bcrc)):
        try:
            info = ds[d].id.get_chunk_info_by_coord((i, 0, 0, 0))
            if info.byte_offset is None:
                return False
            arr = _read(h5, name, d, ds[d], i)
        except (UserError,) + H5_ERRORS:
            return False
        if flow_crc(arr) != int(crc_arr[i]):
            return False
    return True


def storage_bytes(h5: h5py.File, video: str) -> dict:
    """Bytes on disk of a video's JPEG blob and its flows: {'jpeg': n, 'flow_fwd': n, 'flow_bwd': n}."""
    g = _video_group(h5, video)
    return {"jpeg": int(g[JPEG].id.get_storage_size()),
            "flow_fwd": int(g[FLOW_FWD].id.get_storage_size()),
            "flow_bwd": int(g[FLOW_BWD].id.get_storage_size())}
