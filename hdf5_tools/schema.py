"""The shard format: its dataset and attribute names (the layout is stated beside them below), its
schema version, reading and writing a shard through h5py (``open_shard``, ``create_shard`` and
``add_video``, ``list_videos``, ``read_frame_jpeg``, ``read_flows``, ``write_flows``), and the
checked access to a video's datasets (``video_group``, ``video_dataset``, ``read_dataset``) that the
fast reader (:mod:`hdf5_tools.reader`) and the problem scan (:mod:`hdf5_tools.verify`) build on.

A shard is one unfiltered HDF5 file of whole videos (a clip never crosses a shard) that plain h5py
and ``h5ls``/``h5dump`` open, written by one process at a time. A user mistake or damaged HDF5
raises :class:`plumbing.errors.UserError` naming the shard, the video and the index or dataset.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from plumbing.errors import UserError

SCHEMA_VERSION = 1
FORMAT = "pixpro_of.shard"  # the root's attributes: format=FORMAT, schema_version=SCHEMA_VERSION
FLOW_STRIDE = 8  # flows are stored at 1/8 of the frame size: h8 = ceil(H/8), w8 = ceil(W/8)

# /videos/<name>/ is one group per video; its attributes (VIDEO_ATTRS) are the per-video table, and
# it holds these datasets, for T frames. Flows: channel 0 = x, 1 = y, in pixels of the 1/8 grid;
# they are pre-allocated (HDF5 allocates a chunk only when it is written, so a shard packed without
# flows stays small) and filled by ``hdf5_tools flow``.
VIDEOS = "videos"
JPEG = "jpeg"  # uint8 [total_bytes]: every frame's JPEG bytes, concatenated, contiguous
JPEG_OFFSET = "jpeg_offset"  # int64 [T]: byte offset of frame i in JPEG
JPEG_LENGTH = "jpeg_length"  # int64 [T]: byte length of frame i
JPEG_CRC = "jpeg_crc32"  # uint32 [T]: zlib.crc32 of frame i's bytes
FLOW_FWD = "flow_fwd"  # float16 [T-1, 2, h8, w8]: fwd[i] maps frame i -> i+1; one chunk per pair
FLOW_BWD = "flow_bwd"  # float16 [T-1, 2, h8, w8]: bwd[i] maps frame i+1 -> i (time order)
FLOW_FWD_CRC = "flow_fwd_crc32"  # uint32 [T-1]: zlib.crc32 of fwd[i]'s little-endian float16 bytes
FLOW_BWD_CRC = "flow_bwd_crc32"  # uint32 [T-1]: the same for bwd[i]
FLOW_PRESENT = "flow_present"  # uint8 [T-1]: 1 once pair i's fwd and bwd were written
VIDEO_DATASETS = (
    JPEG,
    JPEG_OFFSET,
    JPEG_LENGTH,
    JPEG_CRC,
    FLOW_FWD,
    FLOW_BWD,
    FLOW_FWD_CRC,
    FLOW_BWD_CRC,
    FLOW_PRESENT,
)
# name (the group's name), split, source (where it was packed from), frame size in pixels, fps,
# flow_height/flow_width = flow_size(height, width)
VIDEO_ATTRS = ("name", "split", "num_frames", "height", "width", "fps", "source", "flow_height", "flow_width")
STR_ATTRS = ("name", "split", "source")
INT_ATTRS = ("num_frames", "height", "width", "flow_height", "flow_width")
# dtype and rank of every per-video dataset
DATASET_TYPES = {
    JPEG: ("u1", 1),
    JPEG_OFFSET: ("i8", 1),
    JPEG_LENGTH: ("i8", 1),
    JPEG_CRC: ("u4", 1),
    FLOW_FWD: ("f2", 4),
    FLOW_BWD: ("f2", 4),
    FLOW_FWD_CRC: ("u4", 1),
    FLOW_BWD_CRC: ("u4", 1),
    FLOW_PRESENT: ("u1", 1),
}
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
        raise UserError(f"{path}: cannot open shard (truncated or not HDF5: {short_error(exc)})") from None
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
        raise UserError(f"{shard_name(h5)}: root attributes are damaged ({short_error(exc)})") from None
    if isinstance(fmt, bytes):
        fmt = fmt.decode(errors="replace")
    if fmt != FORMAT:
        raise UserError(f"{shard_name(h5)}: not a pixpro_of shard (format attribute {fmt!r})")
    if isinstance(version, np.generic):
        version = version.item()
    if not isinstance(version, int) or version != SCHEMA_VERSION:
        raise UserError(
            f"{shard_name(h5)}: unknown schema_version {version!r} (this code reads version {SCHEMA_VERSION})"
        )
    try:
        ok = VIDEOS in h5 and isinstance(h5[VIDEOS], h5py.Group)
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: group /{VIDEOS} is damaged ({short_error(exc)})") from None
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


def add_video(
    h5: h5py.File, name: str, jpegs: Sequence[bytes], *, split: str, height: int, width: int, fps: float, source: str
) -> None:
    """Write one video's frames (JPEG bytes, stored as-is) and pre-allocate its flow datasets.

    ``height``/``width`` are the frames' size in pixels (the caller checked every frame has it).
    """
    # No compression filters: JPEG bytes are already entropy-coded, float16 flows already take half
    # of float32's bytes, and a filter such as blosc-lz4 would make every reader install hdf5plugin
    # and hide the data from h5ls/h5dump.
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
            blob[start : start + piece_bytes] = np.frombuffer(b"".join(piece), np.uint8)
            start, piece, piece_bytes = start + piece_bytes, [], 0
    if piece_bytes:
        blob[start : start + piece_bytes] = np.frombuffer(b"".join(piece), np.uint8)
    g.create_dataset(JPEG_OFFSET, data=offsets)
    g.create_dataset(JPEG_LENGTH, data=lengths)
    g.create_dataset(JPEG_CRC, data=np.array([crc32(b) for b in jpegs], np.uint32))
    h8, w8 = flow_size(height, width)
    pairs = n - 1
    for ds in (FLOW_FWD, FLOW_BWD):
        g.create_dataset(
            ds, shape=(pairs, 2, h8, w8), maxshape=(None, 2, h8, w8), dtype="<f2", chunks=(1, 2, h8, w8), fillvalue=0
        )
    g.create_dataset(FLOW_FWD_CRC, data=np.zeros(pairs, np.uint32))
    g.create_dataset(FLOW_BWD_CRC, data=np.zeros(pairs, np.uint32))
    g.create_dataset(FLOW_PRESENT, data=np.zeros(pairs, np.uint8))
    g.attrs.update(
        dict(
            name=name,
            split=split,
            num_frames=n,
            height=int(height),
            width=int(width),
            fps=float(fps),
            source=str(source),
            flow_height=h8,
            flow_width=w8,
        )
    )


# --------------------------------------------------------------------------- read


def video_group(h5: h5py.File, video: str) -> h5py.Group:
    try:
        g = h5[VIDEOS][video]
    except KeyError:
        raise UserError(f"{shard_name(h5)}: no video {video!r}") from None
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: video {video!r}: group is damaged ({short_error(exc)})") from None
    if not isinstance(g, h5py.Group):
        raise UserError(f"{shard_name(h5)}: video {video!r} is not a group")
    return g


def video_dataset(h5: h5py.File, g: h5py.Group, video: str, name: str) -> h5py.Dataset:
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
        raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} is damaged ({short_error(exc)})") from None
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: video {video!r}: dataset {name} is damaged ({short_error(exc)})") from None
    if not isinstance(ds, h5py.Dataset):
        raise UserError(f"{shard_name(h5)}: video {video!r}: {name} is not a dataset")
    return ds


def read_dataset(h5: h5py.File, video: str, name: str, ds: h5py.Dataset, sel=()) -> np.ndarray:
    """``ds[sel]``; UserError naming shard, video and dataset when HDF5 cannot read it."""
    try:
        return ds[sel]
    except H5_ERRORS as exc:
        raise UserError(
            f"{shard_name(h5)}: video {video!r}: dataset {name} cannot be read ({short_error(exc)})"
        ) from None


def read_array(h5: h5py.File, g: h5py.Group, video: str, name: str) -> np.ndarray:
    return read_dataset(h5, video, name, video_dataset(h5, g, video, name))


def _plain(v):
    """numpy scalars as Python values (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def video_attrs(h5: h5py.File, video: str, g: Optional[h5py.Group] = None) -> dict:
    """A video's table row as checked Python values; UserError naming the attribute when one is
    missing, of the wrong type or out of range, or does not match the group's name."""
    g = video_group(h5, video) if g is None else g
    where = f"{shard_name(h5)}: video {video!r}"
    try:
        a = dict(g.attrs)
    except H5_ERRORS as exc:
        raise UserError(f"{where}: attributes are damaged ({short_error(exc)})") from None
    missing = [k for k in VIDEO_ATTRS if k not in a]
    if missing:
        raise UserError(f"{where} lacks attributes {missing}")
    out: Dict[str, Any] = {}
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
    if (
        not isinstance(fps, (int, float, np.integer, np.floating))
        or isinstance(fps, (bool, np.bool_))
        or not math.isfinite(float(fps))
        or float(fps) <= 0
    ):
        raise UserError(f"{where}: attribute fps must be a positive number, got {_plain(fps)!r}")
    out["fps"] = float(fps)
    if out["name"] != video:
        raise UserError(f"{where}: attribute name is {out['name']!r}, not the group's name {video!r}")
    h8, w8 = flow_size(out["height"], out["width"])
    if (out["flow_height"], out["flow_width"]) != (h8, w8):
        raise UserError(
            f"{where}: flow size {out['flow_height']}x{out['flow_width']} != {h8}x{w8} "
            f"(ceil of {out['height']}x{out['width']} / {FLOW_STRIDE})"
        )
    return out


def video_info(h5: h5py.File, video: str) -> VideoInfo:
    """The per-video table row of ``video``."""
    g = video_group(h5, video)
    a = video_attrs(h5, video, g)
    try:
        has_flags = FLOW_PRESENT in g
    except H5_ERRORS as exc:
        raise UserError(
            f"{shard_name(h5)}: video {video!r}: the group's links are damaged ({short_error(exc)})"
        ) from None
    present = read_array(h5, g, video, FLOW_PRESENT) if has_flags else np.zeros(0, np.uint8)
    return VideoInfo(
        name=a["name"],
        split=a["split"],
        num_frames=a["num_frames"],
        height=a["height"],
        width=a["width"],
        fps=a["fps"],
        source=a["source"],
        flow_height=a["flow_height"],
        flow_width=a["flow_width"],
        flows_present=int(np.count_nonzero(present)),
    )


def video_names(h5: h5py.File) -> List[str]:
    """The shard's video group names, sorted."""
    try:
        return sorted(h5[VIDEOS].keys())
    except H5_ERRORS as exc:
        raise UserError(f"{shard_name(h5)}: group /{VIDEOS} cannot be listed ({short_error(exc)})") from None


def list_videos(h5: h5py.File) -> List[VideoInfo]:
    """Every video in the shard (sorted by name) with its table row."""
    return [video_info(h5, name) for name in video_names(h5)]


def check_frame_index(h5, video, i, n):
    if not 0 <= i < n:
        raise UserError(f"{shard_name(h5)}: video {video!r} frame index {i} out of range [0, {n})")


def read_frame_jpeg(h5: h5py.File, video: str, i: int, check_crc: bool = True) -> bytes:
    """The JPEG bytes of frame ``i`` (0-based) of ``video``, as packed (CRC-checked)."""
    g = video_group(h5, video)
    offsets = video_dataset(h5, g, video, JPEG_OFFSET)
    n = offsets.shape[0]
    i = int(i)
    check_frame_index(h5, video, i, n)
    off = int(read_dataset(h5, video, JPEG_OFFSET, offsets, i))
    length = int(read_dataset(h5, video, JPEG_LENGTH, video_dataset(h5, g, video, JPEG_LENGTH), i))
    data = read_dataset(h5, video, JPEG, video_dataset(h5, g, video, JPEG), slice(off, off + length)).tobytes()
    if len(data) != length:
        raise UserError(f"{shard_name(h5)}: video {video!r} frame {i}: JPEG bytes end outside the blob")
    if check_crc and crc32(data) != int(read_dataset(h5, video, JPEG_CRC, video_dataset(h5, g, video, JPEG_CRC), i)):
        raise UserError(f"{shard_name(h5)}: video {video!r} frame {i}: JPEG bytes fail their CRC32")
    return data


def flows_present(h5: h5py.File, video: str) -> np.ndarray:
    """Boolean [T-1]: which adjacent pairs of ``video`` have their flows stored."""
    return read_array(h5, video_group(h5, video), video, FLOW_PRESENT).astype(bool)


def flow_pair_present(h5: h5py.File, video: str, i: int) -> bool:
    """Whether pair ``i`` (frames i, i+1) of ``video`` has both flows stored."""
    g = video_group(h5, video)
    present = read_array(h5, g, video, FLOW_PRESENT)
    pairs = present.shape[0]
    if not 0 <= int(i) < pairs:
        raise UserError(f"{shard_name(h5)}: video {video!r} flow pair {i} out of range [0, {pairs})")
    return bool(present[int(i)])


def read_flows(
    h5: h5py.File, video: str, start: int, count: int, check_crc: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs ``start .. start+count-1`` of ``video`` as float32 ``(fwd, bwd)``, each [count, 2, h8, w8].

    ``fwd[j]`` maps frame start+j -> start+j+1; ``bwd[j]`` maps start+j+1 -> start+j.
    Raises UserError naming the pair when a flow is missing or fails its CRC.
    """
    g = video_group(h5, video)
    pairs = video_dataset(h5, g, video, FLOW_PRESENT).shape[0]
    start, count = int(start), int(count)
    if start < 0 or count < 0 or start + count > pairs:
        raise UserError(
            f"{shard_name(h5)}: video {video!r} flow pairs [{start}, {start + count}) out of range [0, {pairs})"
        )
    return _read_flows(h5, video, g, start, count, check_crc)


def _read_flows(h5, video, g, start, count, check_crc):
    h8, w8 = video_dataset(h5, g, video, FLOW_FWD).shape[2:]
    if count == 0:
        z = np.zeros((0, 2, h8, w8), np.float32)
        return z, z.copy()
    present = read_dataset(
        h5, video, FLOW_PRESENT, video_dataset(h5, g, video, FLOW_PRESENT), slice(start, start + count)
    )
    if not present.all():
        j = start + int(np.argmin(present))
        raise UserError(
            f"{shard_name(h5)}: video {video!r} flow pair {j} is missing (run 'hdf5_tools flow' on this shard)"
        )
    out = []
    for ds, crc_ds in ((FLOW_FWD, FLOW_FWD_CRC), (FLOW_BWD, FLOW_BWD_CRC)):
        arr = read_dataset(h5, video, ds, video_dataset(h5, g, video, ds), slice(start, start + count))
        if check_crc:
            crcs = read_dataset(h5, video, crc_ds, video_dataset(h5, g, video, crc_ds), slice(start, start + count))
            for j in range(count):
                if flow_crc(arr[j]) != int(crcs[j]):
                    raise UserError(f"{shard_name(h5)}: video {video!r} {ds} pair {start + j} fails its CRC32")
        out.append(arr.astype(np.float32))
    return out[0], out[1]


# --------------------------------------------------------------------------- write flows


def _to_f16(h5, video, name, arr, shape):
    arr = np.asarray(arr)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(
            f"{shard_name(h5)}: video {video!r}: {name} must have shape {tuple(shape)}, got {tuple(arr.shape)}"
        )
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
    g = video_group(h5, video)
    pairs, _, h8, w8 = g[FLOW_FWD].shape
    fwd = np.asarray(fwd)
    n = fwd.shape[0] if fwd.ndim == 4 else -1
    start = int(start)
    if n < 0 or start < 0 or start + n > pairs:
        raise ValueError(
            f"{shard_name(h5)}: video {video!r}: fwd must be [n, 2, {h8}, {w8}] with "
            f"start + n <= {pairs}, got shape {tuple(fwd.shape)} at start {start}"
        )
    f16 = _to_f16(h5, video, "fwd", fwd, (n, 2, h8, w8))
    b16 = _to_f16(h5, video, "bwd", bwd, (n, 2, h8, w8))
    if n == 0:
        return
    g[FLOW_FWD][start : start + n] = f16
    g[FLOW_BWD][start : start + n] = b16
    g[FLOW_FWD_CRC][start : start + n] = np.array([flow_crc(a) for a in f16], np.uint32)
    g[FLOW_BWD_CRC][start : start + n] = np.array([flow_crc(a) for a in b16], np.uint32)
    g[FLOW_PRESENT][start : start + n] = 1


def write_flow_pair(h5: h5py.File, video: str, i: int, fwd: np.ndarray, bwd: np.ndarray) -> None:
    """Store pair ``i`` of ``video``: ``fwd`` (frame i -> i+1) and ``bwd`` (i+1 -> i), float32 [2, h8, w8]."""
    g = video_group(h5, video)
    shape = g[FLOW_FWD].shape[1:]
    fwd, bwd = np.asarray(fwd), np.asarray(bwd)
    if tuple(fwd.shape) != tuple(shape) or tuple(bwd.shape) != tuple(shape):
        raise ValueError(
            f"{shard_name(h5)}: video {video!r} pair {i}: fwd and bwd must have shape "
            f"{tuple(shape)}, got {tuple(fwd.shape)} and {tuple(bwd.shape)}"
        )
    write_flows(h5, video, fwd[None], bwd[None], start=int(i))


def short_error(exc: Exception) -> str:
    """The first line of an exception's message, at most 200 characters (for one-line errors)."""
    return str(exc).splitlines()[0][:200]


def storage_bytes(h5: h5py.File, video: str) -> dict:
    """Bytes on disk of a video's JPEG blob and its flows: {'jpeg': n, 'flow_fwd': n, 'flow_bwd': n}."""
    g = video_group(h5, video)
    return {
        "jpeg": int(g[JPEG].id.get_storage_size()),
        "flow_fwd": int(g[FLOW_FWD].id.get_storage_size()),
        "flow_bwd": int(g[FLOW_BWD].id.get_storage_size()),
    }
