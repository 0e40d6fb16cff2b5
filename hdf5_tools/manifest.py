"""The shard manifest: a JSON file beside the shards that lists them and their node assignment."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

from hdf5_tools import schema
from plumbing.atomic import atomic_write_text
from plumbing.errors import UserError

MANIFEST_FORMAT = "pixpro_of.manifest"
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIXES = (".h5", ".hdf5")


@dataclass
class ShardEntry:
    """One shard in the manifest. ``bytes`` is the file size; ``crc32`` its hex zlib CRC32, ``sha256``
    its hex SHA-256 ("" in manifests written before it was recorded)."""

    file: str
    node: int
    bytes: int
    crc32: str
    num_videos: int
    num_frames: int
    num_pairs: int
    pairs_present: int
    videos: List[dict] = field(default_factory=list)
    sha256: str = ""


@dataclass
class Manifest:
    """All shards of one pack. ``root`` is the manifest's folder (not stored)."""

    nodes: int
    shards: List[ShardEntry]
    root: str = "."
    schema_version: int = schema.SCHEMA_VERSION

    def path_of(self, entry: ShardEntry) -> str:
        return os.path.join(self.root, entry.file)

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "schema_version": self.schema_version,
            "nodes": self.nodes,
            "shards": [asdict(s) for s in self.shards],
        }


def file_crc32(path, block: int = 8 << 20) -> str:
    """Hex zlib CRC32 of a whole file, read in blocks."""
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            crc = zlib.crc32(b, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def file_digests(path, block: int = 8 << 20) -> Tuple[str, str]:
    """(hex CRC32, hex SHA-256) of a whole file, in one read."""
    crc, h = 0, hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            crc = zlib.crc32(b, crc)
            h.update(b)
    return f"{crc & 0xFFFFFFFF:08x}", h.hexdigest()


def describe_shard(path, node: int, root: Optional[str] = None) -> ShardEntry:
    """Build a manifest entry by reading the shard's per-video table and checksumming the file."""
    path = os.fspath(path)
    with schema.open_shard(path) as h5:
        videos = schema.list_videos(h5)
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    crc32, sha256 = file_digests(path)
    return ShardEntry(
        file=rel,
        node=int(node),
        bytes=os.path.getsize(path),
        crc32=crc32,
        sha256=sha256,
        num_videos=len(videos),
        num_frames=sum(v.num_frames for v in videos),
        num_pairs=sum(v.num_pairs for v in videos),
        pairs_present=sum(v.flows_present for v in videos),
        videos=[{"name": v.name, "split": v.split, "num_frames": v.num_frames} for v in videos],
    )


def write_manifest(path, manifest: Manifest) -> None:
    """Write ``manifest`` as JSON at ``path`` (temporary name, then rename)."""
    atomic_write_text(path, json.dumps(manifest.to_json(), indent=1) + "\n")


#: The first bytes of every HDF5 file (a shard given where its manifest was wanted).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def manifest_file(path) -> str:
    """``path``, or ``path/manifest.json`` when ``path`` is a folder (what ``pack`` wrote into OUT)."""
    path = os.fspath(path)
    return os.path.join(path, MANIFEST_NAME) if os.path.isdir(path) else path


def load_manifest(path, check_files: bool = True) -> Manifest:
    """Read a manifest (or a folder's ``manifest.json``); with ``check_files`` every listed shard must exist.

    A file that is not a manifest (a shard, a list, binary data, other JSON) is one UserError line.
    """
    path = manifest_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: manifest not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    if raw.startswith(HDF5_SIGNATURE):
        raise UserError(
            f"{path}: cannot read manifest: this is an HDF5 shard; give the {MANIFEST_NAME} "
            f"that 'hdf5_tools pack' wrote beside the shards (or its folder)"
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UserError(
            f"{path}: cannot read manifest: this is not JSON text; give the {MANIFEST_NAME} "
            f"that 'hdf5_tools pack' wrote beside the shards (or its folder)"
        ) from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise UserError(
            f"{path}: not a shard manifest (format {data.get('format') if isinstance(data, dict) else None!r})"
        )
    if data.get("schema_version") != schema.SCHEMA_VERSION:
        raise UserError(
            f"{path}: unknown schema_version {data.get('schema_version')!r} "
            f"(this code reads version {schema.SCHEMA_VERSION})"
        )
    try:
        shards = [ShardEntry(**s) for s in data["shards"]]
        nodes = int(data["nodes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: malformed manifest ({exc})") from None
    m = Manifest(nodes=nodes, shards=shards, root=os.path.dirname(os.path.abspath(path)))
    for i, s in enumerate(shards):
        if not 0 <= s.node < nodes:
            raise UserError(f"{path}: shard {i} ({s.file}) has node {s.node} outside [0, {nodes})")
        if check_files and not os.path.exists(m.path_of(s)):
            raise UserError(f"{path}: shard {i} lists a missing file {m.path_of(s)}")
    return m


@dataclass(frozen=True)
class FlowCoverage:
    """How many of a manifest's adjacent frame pairs hold their flows (forward and backward)."""

    pairs: int
    present: int
    shards: int  # shards listed
    shards_incomplete: int  # shards with at least one pair missing

    @property
    def missing(self) -> int:
        return self.pairs - self.present

    @property
    def complete(self) -> bool:
        return self.present >= self.pairs


def flow_coverage(manifest) -> FlowCoverage:
    """Flow pairs present in a manifest's shards, from the manifest's own counts (no shard is opened).

    ``manifest`` is a :class:`Manifest` or a path (file or folder). The counts are those of the
    last ``pack`` or completed ``hdf5_tools flow`` run (which refreshes the manifest); a flow run
    stopped early leaves them low until the same command is run again to finish.
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, check_files=False)
    return FlowCoverage(
        pairs=sum(s.num_pairs for s in m.shards),
        present=sum(min(s.pairs_present, s.num_pairs) for s in m.shards),
        shards=len(m.shards),
        shards_incomplete=sum(1 for s in m.shards if s.pairs_present < s.num_pairs),
    )


def refresh_manifest(path) -> Manifest:
    """Recompute every entry's sizes, counts and checksums (e.g. after flows were filled in)."""
    m = load_manifest(path)
    m.shards = [describe_shard(m.path_of(s), s.node, m.root) for s in m.shards]
    write_manifest(os.path.join(m.root, MANIFEST_NAME) if os.path.isdir(os.fspath(path)) else path, m)
    return m


def node_sets_for(node_index: int, num_nodes: int, manifest_nodes: int) -> List[int]:
    """Node sets (0 .. manifest_nodes-1) that node ``node_index`` of a ``num_nodes``-node job holds."""
    if num_nodes < 1 or not 0 <= node_index < num_nodes:
        raise UserError(f"node index {node_index} outside [0, {num_nodes})")
    if num_nodes > manifest_nodes:
        raise UserError(
            f"the job has {num_nodes} nodes but the shards were packed for {manifest_nodes} "
            f"(repack with --nodes {num_nodes} or use fewer nodes)"
        )
    return [j for j in range(manifest_nodes) if j % num_nodes == node_index]


def shards_for_node(
    manifest, node_index: int, num_nodes: Optional[int] = None, root: Optional[str] = None
) -> List[str]:
    """Paths of the shards node ``node_index`` reads, in manifest order.

    ``manifest`` is a :class:`Manifest` or a path to one. ``num_nodes`` defaults to the manifest's
    node count. ``root`` (default: the manifest's folder) is where the shards are, e.g. the
    node-local directory ``stage --to`` copied them to.
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, check_files=False)
    sets = set(node_sets_for(node_index, m.nodes if num_nodes is None else num_nodes, m.nodes))
    base = m.root if root is None else os.fspath(root)
    paths = [os.path.join(base, s.file) for s in m.shards if s.node in sets]
    for p in paths:
        if not os.path.exists(p):
            raise UserError(f"manifest in {m.root}: node {node_index} shard {p} is missing")
    return paths


def resolve_shards(
    entries: Sequence[str], node_index: Optional[int] = None, num_nodes: Optional[int] = None, label: str = ""
) -> List[str]:
    """Shard file paths from what a user gave, in order; every path exists and none repeats.

    An entry is a shard file (``.h5``/``.hdf5``), a glob pattern, a manifest (``.json``) or a folder
    (its manifest when it holds one, else its shard files, sorted), or a ``.txt`` list with one
    path a line (relative to the list; ``#`` starts a comment). From a manifest come the shards of
    node ``node_index`` of ``num_nodes`` (:func:`shards_for_node`), or all of them when
    ``node_index`` is None. Errors are one line, prefixed with ``label`` (the option) when given.
    """
    where = f"{label}: " if label else ""

    def from_manifest(path: str) -> List[str]:
        try:
            if node_index is None:
                m = load_manifest(path)
                return [m.path_of(s) for s in m.shards]
            return shards_for_node(path, node_index, num_nodes)
        except UserError as exc:  # add which option named the manifest
            raise UserError(f"{where}{exc}") from None

    out: List[str] = []
    for entry in entries:
        entry = str(entry)
        path = os.path.expanduser(entry)
        if any(c in entry for c in "*?["):
            hits = sorted(glob.glob(path))
            if not hits:
                raise UserError(f"{where}pattern {entry!r} matches no file")
            out += hits
        elif os.path.isdir(path):
            if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
                out += from_manifest(os.path.join(path, MANIFEST_NAME))
            else:
                hits = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(SHARD_SUFFIXES))
                if not hits:
                    raise UserError(f"{where}{entry}: no {MANIFEST_NAME} and no .h5 shards in this folder")
                out += hits
        elif not os.path.isfile(path):
            raise UserError(f"{where}{entry}: no such shard file or folder")
        elif path.endswith(".json"):
            out += from_manifest(path)
        elif path.endswith(".txt"):
            with open(path) as f:
                lines = [ln.strip() for ln in f]
            for ln in lines:
                if ln and not ln.startswith("#"):
                    q = ln if os.path.isabs(ln) else os.path.join(os.path.dirname(path), ln)
                    if not os.path.isfile(q):
                        raise UserError(f"{where}{entry} lists a missing shard {q}")
                    out.append(q)
        elif path.endswith(SHARD_SUFFIXES):
            out.append(path)
        else:
            raise UserError(f"{where}{entry} is not a shard (.h5), manifest (.json) or list (.txt)")
    if not out:
        raise UserError(f"{where}no shard files found")
    seen = set()
    for p in out:
        key = os.path.realpath(p)
        if key in seen:
            raise UserError(f"{where}{p}: shard given twice")
        seen.add(key)
    return out
