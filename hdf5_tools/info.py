"""``hdf5_tools info SHARD...|MANIFEST [--json]``: a summary of shards.

Per shard: videos, frames, flow pairs present of all pairs, JPEG bytes per frame, flow bytes per
pair per direction (as stored), file size and the node set it belongs to (from the manifest given,
or a ``manifest.json`` beside the shards). ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import click

from hdf5_tools import manifest as mf
from hdf5_tools import schema
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError


@dataclass
class ShardSummary:
    file: str
    node: Optional[int]
    bytes: int
    videos: int
    frames: int
    pairs: int
    pairs_present: int
    jpeg_bytes: int
    flow_bytes: int
    splits: dict

    @property
    def bytes_per_frame(self) -> float:
        return self.jpeg_bytes / max(self.frames, 1)

    @property
    def bytes_per_flow(self) -> float:
        """Stored bytes per pair per direction."""
        return self.flow_bytes / max(2 * self.pairs_present, 1)


def summarize_shard(path: str, node: Optional[int] = None) -> ShardSummary:
    with schema.open_shard(path) as h5:
        videos = schema.list_videos(h5)
        jpeg = flow = 0
        for v in videos:
            s = schema.storage_bytes(h5, v.name)
            jpeg += s["jpeg"]
            flow += s["flow_fwd"] + s["flow_bwd"]
    splits: dict = {}
    for v in videos:
        splits[v.split] = splits.get(v.split, 0) + 1
    return ShardSummary(
        file=path,
        node=node,
        bytes=os.path.getsize(path),
        videos=len(videos),
        frames=sum(v.num_frames for v in videos),
        pairs=sum(v.num_pairs for v in videos),
        pairs_present=sum(v.flows_present for v in videos),
        jpeg_bytes=jpeg,
        flow_bytes=flow,
        splits=splits,
    )


def _targets(paths: List[str]):
    """[(shard path, node or None)], nodes from a manifest given or found beside the shards."""
    out: List[Tuple[str, Optional[int]]] = []
    for p in paths:
        if p.endswith(".json") or os.path.isdir(p):
            m = mf.load_manifest(p)
            out += [(m.path_of(s), s.node) for s in m.shards]
            continue
        node = None
        mpath = os.path.join(os.path.dirname(os.path.abspath(p)), mf.MANIFEST_NAME)
        if os.path.exists(mpath):
            m = mf.load_manifest(mpath, check_files=False)
            node = next((s.node for s in m.shards if os.path.basename(s.file) == os.path.basename(p)), None)
        out.append((p, node))
    if not out:
        raise UserError("no shards given")
    return out


@cli_command("info", epilog="Example: hdf5_tools info shards/manifest.json --json")
@click.argument("paths", nargs=-1, required=True, metavar="SHARD|MANIFEST...")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def command(paths, as_json) -> int:
    """Summarise shards or a manifest: videos, frames, flows, bytes per frame and flow, frames per node."""
    rows = [summarize_shard(p, n) for p, n in _targets(list(paths))]
    tot_frames = sum(r.frames for r in rows)
    tot_present = sum(r.pairs_present for r in rows)
    per_node: Dict[str, int] = {}
    for r in rows:
        key = "none" if r.node is None else str(r.node)
        per_node[key] = per_node.get(key, 0) + r.frames
    total: Dict[str, Any] = {
        "shards": len(rows),
        "videos": sum(r.videos for r in rows),
        "frames": tot_frames,
        "pairs": sum(r.pairs for r in rows),
        "pairs_present": tot_present,
        "bytes": sum(r.bytes for r in rows),
        "jpeg_bytes_per_frame": sum(r.jpeg_bytes for r in rows) / max(tot_frames, 1),
        "flow_bytes_per_pair_direction": sum(r.flow_bytes for r in rows) / max(2 * tot_present, 1),
        "frames_per_node": per_node,
    }
    if as_json:
        print(
            json.dumps(
                {
                    "shards": [
                        dict(asdict(r), bytes_per_frame=r.bytes_per_frame, bytes_per_flow=r.bytes_per_flow)
                        for r in rows
                    ],
                    "total": total,
                },
                indent=1,
            )
        )
        return 0
    print(f"{'shard':<32} {'node':>4} {'videos':>6} {'frames':>8} {'flows':>13} {'B/frame':>9} {'B/flow':>8} {'MB':>9}")
    for r in rows:
        print(
            f"{os.path.basename(r.file):<32} {'-' if r.node is None else r.node:>4} {r.videos:>6} "
            f"{r.frames:>8} {f'{r.pairs_present}/{r.pairs}':>13} {r.bytes_per_frame:>9.0f} "
            f"{r.bytes_per_flow:>8.0f} {r.bytes / 1e6:>9.1f}"
        )
    print(
        f"total: {total['shards']} shards, {total['videos']} videos, {tot_frames} frames, flows "
        f"{tot_present}/{total['pairs']} pairs, {total['jpeg_bytes_per_frame']:.0f} B per frame, "
        f"{total['flow_bytes_per_pair_direction']:.0f} B per flow (pair, direction), "
        f"{total['bytes'] / 1e6:.1f} MB"
    )
    print("frames per node: " + ", ".join(f"{k}: {v}" for k, v in sorted(total["frames_per_node"].items())))
    return 0


def main(argv=None) -> int:
    return call(command, argv, "hdf5_tools info")
