"""``hdf5_tools verify SHARD... [--deep] [--manifest M]``: check shards; name each bad shard and index.

Checks the format tag and schema version, every video's datasets, shapes and counts, that the
JPEG offsets tile the blob, every frame's CRC32 and every stored flow chunk's CRC32. ``--deep``
also decodes every JPEG and checks its size. When a manifest lists the shard (``--manifest``, or a
``manifest.json`` beside it), the file's size and CRC32 are compared too. Prints one line per
problem (``SHARD: video 'v' frame 3: ...``) and exits 1 if any shard is bad, 0 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from hdf5_tools import manifest as mf
from hdf5_tools import schema
from hdf5_tools.errors import UserError


@dataclass
class VerifyConfig:
    shards: List[str]
    deep: bool = False
    manifest: Optional[str] = None
    max_problems: int = 20


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


def verify_shard(path: str, deep: bool = False, manifest_path: Optional[str] = None,
                 max_problems: int = 20) -> ShardReport:
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
        try:
            for p in schema.iter_problems(h5, deep=deep, decode=_decode):
                if len(rep.problems) < max_problems:
                    rep.problems.append(p)
                else:
                    extra += 1
        except (OSError, RuntimeError, KeyError) as exc:  # HDF5 metadata damaged beyond one dataset
            rep.problems.append(f"unreadable HDF5 structure ({str(exc).splitlines()[0][:160]})")
    if extra:
        rep.problems.append(f"... and {extra} more problems")
    return rep


def main(argv) -> int:
    ap = argparse.ArgumentParser(prog="hdf5_tools verify", description=__doc__.splitlines()[0])
    ap.add_argument("shards", nargs="+", metavar="SHARD")
    ap.add_argument("--deep", action="store_true", help="also decode every JPEG")
    ap.add_argument("--manifest", help="manifest to compare file sizes and checksums with "
                    "(default: manifest.json beside each shard, if any)")
    ap.add_argument("--max-problems", type=int, default=20, help="problems listed per shard (default 20)")
    a = ap.parse_args(argv)
    cfg = VerifyConfig(shards=a.shards, deep=a.deep, manifest=a.manifest, max_problems=a.max_problems)
    bad = 0
    for path in cfg.shards:
        rep = verify_shard(path, cfg.deep, cfg.manifest, cfg.max_problems)
        if rep.ok:
            print(f"{path}: ok")
        else:
            bad += 1
            for p in rep.problems:
                print(f"{path}: {p}", file=sys.stderr)
    if bad:
        print(f"{bad} of {len(cfg.shards)} shards bad", file=sys.stderr)
    return 1 if bad else 0
