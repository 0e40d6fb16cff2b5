"""``hdf5_tools verify SHARD... [--deep] [--require-flows] [--manifest M]``: check shards; name each
bad shard and index.

Checks the format tag and schema version, every video's attributes (present, typed, in range, the
``name`` attribute equal to the group's name), datasets (present, readable, dtype, shape), that the
JPEG offsets tile the blob, every frame's CRC32, the ``flow_present`` flags and every flagged flow
chunk's CRC32 (:func:`hdf5_tools.schema.iter_problems`). ``--deep`` also decodes every JPEG and
checks its size, checks stored flows are finite and reports pairs whose flows are stored but not
flagged. ``--require-flows`` reports pairs without flows (what training with stored flows and
k > 1 needs). When a manifest lists the shard (``--manifest``, or a ``manifest.json`` beside it),
the file's size and CRC32 and, with ``--deep``, its video names, frame counts and flow counts are
compared too. Prints one line per problem (``SHARD: video 'v' frame 3: ...``) and exits 1 if any
shard is bad, 0 otherwise.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import click

from hdf5_tools import manifest as mf
from hdf5_tools import schema
from plumbing.errors import UserError
from plumbing.cli import call, command as cli_command


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
                manifest_path is None and os.path.basename(s.file) == os.path.basename(path)):
            return s
    return None


def _manifest_problems(h5, entry) -> List[str]:
    """The shard's table against its manifest entry: names, splits, frame and flow counts."""
    out = []
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
                out.append(f"video {name!r}: {key} is {getattr(videos[name], key)!r} in the shard, "
                           f"{listed[name][key]!r} in the manifest")
    counts = {"num_videos": len(videos), "num_frames": sum(v.num_frames for v in videos.values()),
              "num_pairs": sum(v.num_pairs for v in videos.values()),
              "pairs_present": sum(v.flows_present for v in videos.values())}
    for key, value in counts.items():
        if getattr(entry, key) != value:
            out.append(f"{key} is {value} in the shard, {getattr(entry, key)} in the manifest")
    return out


def verify_shard(path: str, deep: bool = False, manifest_path: Optional[str] = None,
                 max_problems: int = 20, require_flows: bool = False) -> ShardReport:
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
            found = list(schema.iter_problems(h5, deep=deep, decode=_decode, require_flows=require_flows))
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
@click.option("--deep", is_flag=True, help="also decode every JPEG, check flows are finite, "
              "flags against stored flows and names against the manifest")
@click.option("--require-flows", is_flag=True,
              help="every frame pair must have its flows (what training with k > 1 reads)")
@click.option("--manifest", default=None, help="manifest to compare file sizes and checksums with "
              "(default: manifest.json beside each shard, if any)")
@click.option("--max-problems", type=int, default=20, show_default=True, help="problems listed per shard")
def command(shards, deep, require_flows, manifest, max_problems) -> int:
    """Check shards: schema, counts, CRCs; one line per problem, exit 1 if any shard is bad."""
    cfg = VerifyConfig(shards=mf.resolve_shards(shards, label="SHARD"), deep=deep, manifest=manifest, max_problems=max_problems,
                       require_flows=require_flows)
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
