"""``hdf5_tools verify SHARD... [--deep] [--require-flows] [--manifest M]``: check shards; name each
bad shard and index. The problem scan (:func:`iter_problems`, whose docstring lists what it checks)
runs over an open shard; when a manifest lists the shard (``--manifest``, or a ``manifest.json``
beside it) the file's size and CRC32 and, with ``--deep``, its video names, frame counts and flow
counts are compared too. Prints one line per problem (``SHARD: video 'v' frame 3: ...``) and exits 1
if any shard is bad, 0 otherwise.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import click
import h5py
import numpy as np

from hdf5_tools import manifest as mf
from hdf5_tools import schema
from hdf5_tools.schema import (
    DATASET_TYPES,
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
    VIDEO_DATASETS,
    check_header,
    check_video_name,
    crc32,
    flow_crc,
    read_dataset,
    short_error,
    video_attrs,
    video_dataset,
    video_group,
    video_names,
)
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


@dataclass
class VerifyConfig:
    shards: List[str]
    deep: bool = False
    manifest: Optional[str] = None
    max_problems: int = 20
    require_flows: bool = False


@dataclass
class ShardReport:
    path: str
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _decode(data: bytes):
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def _manifest_entry(path: str, manifest_path: Optional[str]):
    mpath = manifest_path or os.path.join(os.path.dirname(os.path.abspath(path)), mf.MANIFEST_NAME)
    if not os.path.exists(mpath):
        if manifest_path:
            raise UserError(f"--manifest {manifest_path}: not found")
        return None
    m = mf.load_manifest(mpath, check_files=False)
    for s in m.shards:
        if os.path.abspath(m.path_of(s)) == os.path.abspath(path) or (
            manifest_path is None and os.path.basename(s.file) == os.path.basename(path)
        ):
            return s
    return None


def _manifest_problems(h5, entry) -> List[str]:
    """The shard's table against its manifest entry: names, splits, frame and flow counts."""
    out: List[str] = []
    try:
        videos = {v.name: v for v in schema.list_videos(h5)}
    except UserError:
        return out  # the content checks name the damage
    listed = {}
    for v in entry.videos:
        if isinstance(v, dict) and "name" in v:
            listed[str(v["name"])] = v
    for name in sorted(set(listed) - set(videos)):
        out.append(f"video {name!r} is listed in the manifest but not in the shard")
    for name in sorted(set(videos) - set(listed)):
        out.append(f"video {name!r} is in the shard but not listed in the manifest")
    for name in sorted(set(videos) & set(listed)):
        for key in ("split", "num_frames"):
            if key in listed[name] and listed[name][key] != getattr(videos[name], key):
                out.append(
                    f"video {name!r}: {key} is {getattr(videos[name], key)!r} in the shard, "
                    f"{listed[name][key]!r} in the manifest"
                )
    counts = {
        "num_videos": len(videos),
        "num_frames": sum(v.num_frames for v in videos.values()),
        "num_pairs": sum(v.num_pairs for v in videos.values()),
        "pairs_present": sum(v.flows_present for v in videos.values()),
    }
    for key, value in counts.items():
        if getattr(entry, key) != value:
            out.append(f"{key} is {value} in the shard, {getattr(entry, key)} in the manifest")
    return out


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
    g = video_group(h5, name)
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
            yield f"{v}: the group's links are damaged ({short_error(exc)})"
            return
        if not present:
            missing.append(d)
            continue
        try:
            ds[d] = video_dataset(h5, g, name, d)
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
    expect = {
        JPEG_OFFSET: (n,),
        JPEG_LENGTH: (n,),
        JPEG_CRC: (n,),
        FLOW_FWD: (n - 1, 2, h8, w8),
        FLOW_BWD: (n - 1, 2, h8, w8),
        FLOW_FWD_CRC: (n - 1,),
        FLOW_BWD_CRC: (n - 1,),
        FLOW_PRESENT: (n - 1,),
    }
    bad = [f"{d} {ds[d].shape} != {s}" for d, s in expect.items() if ds[d].shape != s]
    if bad:
        yield f"{v}: wrong shapes: {'; '.join(bad)}"
        return
    offset, length, crcs = (read_dataset(h5, name, d, ds[d]) for d in (JPEG_OFFSET, JPEG_LENGTH, JPEG_CRC))
    present = read_dataset(h5, name, FLOW_PRESENT, ds[FLOW_PRESENT])
    fcrc = read_dataset(h5, name, FLOW_FWD_CRC, ds[FLOW_FWD_CRC])
    bcrc = read_dataset(h5, name, FLOW_BWD_CRC, ds[FLOW_BWD_CRC])
    blob_len = ds[JPEG].shape[0]
    ends = offset + length
    if n and (offset[0] != 0 or (length <= 0).any() or (offset[1:] != ends[:-1]).any() or ends[-1] != blob_len):
        yield f"{v}: {JPEG_OFFSET}/{JPEG_LENGTH} do not tile the {blob_len}-byte {JPEG} dataset"
        return
    for i in range(n):
        try:
            data = read_dataset(h5, name, JPEG, ds[JPEG], slice(int(offset[i]), int(ends[i]))).tobytes()
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
                yield f"{v} frame {i}: JPEG does not decode ({short_error(exc)})"
                continue
            if tuple(img.shape[:2]) != (height, width):
                yield f"{v} frame {i}: decodes to {img.shape[1]}x{img.shape[0]}, table says {width}x{height}"
    odd = np.flatnonzero((present != 0) & (present != 1))
    if odd.size:
        yield f"{v}: {FLOW_PRESENT} holds {int(present[odd[0]])} at pair {int(odd[0])} (flags are 0 or 1)"
    for d, crc_arr in ((FLOW_FWD, fcrc), (FLOW_BWD, bcrc)):
        for i in np.flatnonzero(present):
            try:
                arr = read_dataset(h5, name, d, ds[d], int(i))
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
                yield (
                    f"{v} flow pair {int(i)}: its flows are stored and match their CRC32s but {FLOW_PRESENT} is 0 "
                    f"(a cleared flag, or 'hdf5_tools flow' stopped before setting it; "
                    f"training would call it missing)"
                )
    if require_flows and n > 1 and not present.all():
        missing_pairs = np.flatnonzero(present == 0)
        yield (
            f"{v}: {missing_pairs.size} of {n - 1} flow pairs are missing (first: pair {int(missing_pairs[0])}); "
            f"run 'hdf5_tools flow' on this shard"
        )


def _pair_stored(h5, name, ds, i, fcrc, bcrc) -> bool:
    """Whether pair ``i``'s flow chunks are both written and match their stored CRCs."""
    if int(fcrc[i]) == 0 and int(bcrc[i]) == 0:
        return False
    for d, crc_arr in ((FLOW_FWD, fcrc), (FLOW_BWD, bcrc)):
        try:
            info = ds[d].id.get_chunk_info_by_coord((i, 0, 0, 0))
            if info.byte_offset is None:
                return False
            arr = read_dataset(h5, name, d, ds[d], i)
        except (UserError,) + H5_ERRORS:
            return False
        if flow_crc(arr) != int(crc_arr[i]):
            return False
    return True


def verify_shard(
    path: str,
    deep: bool = False,
    manifest_path: Optional[str] = None,
    max_problems: int = 20,
    require_flows: bool = False,
) -> ShardReport:
    """Check one shard file; the report lists at most ``max_problems`` problems (plus a count)."""
    rep = ShardReport(path)
    if not os.path.exists(path):
        rep.problems.append("file not found")
        return rep
    entry = _manifest_entry(path, manifest_path)
    if entry is not None:
        size = os.path.getsize(path)
        if size != entry.bytes:
            rep.problems.append(f"file has {size} bytes, the manifest says {entry.bytes} (truncated or changed)")
        elif mf.file_crc32(path) != entry.crc32:
            rep.problems.append(f"file CRC32 differs from the manifest's {entry.crc32}")
    try:
        h5 = schema.open_shard(path)
    except UserError as exc:
        rep.problems.append(str(exc).split(": ", 1)[-1])
        return rep
    extra = 0
    with h5:
        found = []
        try:
            found = list(iter_problems(h5, deep=deep, decode=_decode, require_flows=require_flows))
            if deep and entry is not None:
                found += _manifest_problems(h5, entry)
        except schema.H5_ERRORS as exc:  # HDF5 metadata damaged beyond one dataset
            found.append(f"unreadable HDF5 structure ({str(exc).splitlines()[0][:160]})")
        for p in found:
            if len(rep.problems) < max_problems:
                rep.problems.append(p)
            else:
                extra += 1
    if extra:
        rep.problems.append(f"... and {extra} more problems")
    return rep


@cli_command("verify", epilog="Example: hdf5_tools verify shards/*.h5 --deep --require-flows")
@click.argument("shards", nargs=-1, required=True, metavar="SHARD...")  # files, folders, manifests, patterns
@click.option(
    "--deep",
    is_flag=True,
    help="also decode every JPEG, check flows are finite, flags against stored flows and names against the manifest",
)
@click.option(
    "--require-flows", is_flag=True, help="every frame pair must have its flows (what training with k > 1 reads)"
)
@click.option(
    "--manifest",
    default=None,
    help="manifest to compare file sizes and checksums with (default: manifest.json beside each shard, if any)",
)
@click.option("--max-problems", type=int, default=20, show_default=True, help="problems listed per shard")
def command(shards, deep, require_flows, manifest, max_problems) -> int:
    """Check shards: schema, counts, CRCs; one line per problem, exit 1 if any shard is bad."""
    cfg = VerifyConfig(
        shards=mf.resolve_shards(shards, label="SHARD"),
        deep=deep,
        manifest=manifest,
        max_problems=max_problems,
        require_flows=require_flows,
    )
    bad = 0
    for path in cfg.shards:
        rep = verify_shard(path, cfg.deep, cfg.manifest, cfg.max_problems, cfg.require_flows)
        if rep.ok:
            print(f"{path}: ok")
        else:
            bad += 1
            for p in rep.problems:
                print(f"{path}: {p}", file=sys.stderr)
    if bad:
        print(f"{bad} of {len(cfg.shards)} shards bad", file=sys.stderr)
    return 1 if bad else 0


def main(argv=None) -> int:
    return call(command, argv, "hdf5_tools verify")
