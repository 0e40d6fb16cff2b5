"""``hdf5_tools pack SRC OUT --nodes N``: pack videos into per-node HDF5 shards plus a manifest."""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import click

from hdf5_tools import manifest as mf
from hdf5_tools import schema, sources
from plumbing.atomic import atomic_path, atomic_write_text
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.parse import checked, parse_bytes

PLAN_NAME = ".pack-plan.json"
PARTIAL_SUFFIX = ".partial"


@dataclass
class PackConfig:
    """Options of one pack run. ``shard_size`` in bytes; ``fps`` for decoding ``.mov`` sources."""

    src: str
    out: str
    nodes: int
    shard_size: int = 8 << 30
    flows: Optional[str] = None
    jobs: int = 1
    fps: float = 10.0
    jpeg_quality: int = 95
    splits: Optional[List[str]] = None
    src_kind: str = "auto"
    progress: bool = True


@dataclass
class ShardPlan:
    """One shard to write: its file name, node set, and videos as (split, name) pairs."""

    file: str
    node: int
    videos: List[List[str]]
    est_frames: int
    est_bytes: int


def _abs(src: str) -> str:
    return src if src.startswith("synth:") else os.path.abspath(src)


def make_plan(videos: List[sources.VideoSource], nodes: int, shard_size: int) -> List[ShardPlan]:
    """Assign videos to node sets (frames balanced) and cut each node set into shards."""
    load = [0] * nodes
    members: List[List[sources.VideoSource]] = [[] for _ in range(nodes)]
    for v in sorted(videos, key=lambda v: (-v.est_frames, v.split, v.name)):
        n = min(range(nodes), key=lambda i: (load[i], i))
        load[n] += v.est_frames
        members[n].append(v)
    plans: List[ShardPlan] = []
    for node, vs in enumerate(members):
        vs.sort(key=lambda v: (v.split, v.name))
        cur: List[sources.VideoSource] = []
        for nxt in [*vs, None]:
            if cur and (nxt is None or sum(x.est_bytes for x in cur) + nxt.est_bytes > shard_size):
                plans.append(
                    ShardPlan(
                        file=f"shard-n{node:03d}-{len([p for p in plans if p.node == node]):05d}.h5",
                        node=node,
                        videos=[[x.split, x.name] for x in cur],
                        est_frames=sum(x.est_frames for x in cur),
                        est_bytes=sum(x.est_bytes for x in cur),
                    )
                )
                cur = []
            if nxt is not None:
                cur.append(nxt)
    return plans


def write_shard(
    plan: ShardPlan, by_key: dict, out: str, flows: Optional[str], on_video: Optional[Callable[[int], None]] = None
) -> mf.ShardEntry:
    """Write one shard (temporary name, then rename) and return its manifest entry.

    ``on_video(frames)`` is called after each video is written (for the progress bar).
    """
    final = os.path.join(out, plan.file)
    flow_dir = sources.FlowDir(flows) if flows else None
    # h5py writes to a path, not a file object: atomic_path; the fixed temporary name is swept on a rerun
    with atomic_path(final, temporary=f".{plan.file}{PARTIAL_SUFFIX}") as tmp:
        with schema.create_shard(str(tmp)) as h5:
            for split, name in plan.videos:
                src = by_key[(split, name)]
                v = src.load()
                schema.add_video(
                    h5,
                    name,
                    v.jpegs,
                    split=split,
                    height=v.height,
                    width=v.width,
                    fps=v.fps,
                    source=f"{src.kind}:{src.location}",
                )
                fwd, bwd = v.fwd, v.bwd
                if flow_dir is not None:
                    fwd, bwd = flow_dir.load(src, len(v.jpegs), v.height, v.width)
                if fwd is not None and len(v.jpegs) > 1:
                    schema.write_flows(h5, name, fwd, bwd)
                if on_video is not None:
                    on_video(src.est_frames)
                del v
    entry = mf.describe_shard(final, plan.node, out)
    _write_json(_entry_path(out, plan.file), asdict(entry))
    return entry


def _entry_path(out: str, file: str) -> str:
    return os.path.join(out, f".{file}.entry.json")


def _write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


# State for pool workers, set in the parent just before the pool forks (the workers inherit it,
# so the source listing, with its loader closures, is not redone or pickled per worker).
_WORKER: Dict[str, Any] = {}


def _worker_run(plan_dict: dict):
    cfg = _WORKER["cfg"]
    plan = ShardPlan(**plan_dict)
    try:
        return asdict(write_shard(plan, _WORKER["by_key"], cfg.out, cfg.flows, _WORKER["progress"].put)), None
    except UserError as exc:
        return None, str(exc)


def pack(cfg: PackConfig) -> mf.Manifest:
    """Run the whole pack (see the module docstring) and return the manifest written."""
    if cfg.nodes < 1:
        raise UserError(f"--nodes must be >= 1, got {cfg.nodes}")
    if cfg.jobs < 1:
        raise UserError(f"-j must be >= 1, got {cfg.jobs}")
    kind, videos = sources.find_videos(cfg.src, cfg.fps, cfg.jpeg_quality, cfg.splits, kind=cfg.src_kind)
    if len(videos) < cfg.nodes:
        raise UserError(f"SRC {cfg.src}: {len(videos)} videos cannot fill --nodes {cfg.nodes} node sets")
    if cfg.flows:
        sources.FlowDir(cfg.flows)  # fail early on a wrong folder
    plans = make_plan(videos, cfg.nodes, cfg.shard_size)
    os.makedirs(cfg.out, exist_ok=True)
    plan_json = {
        "src": _abs(cfg.src),
        "src_kind": kind,
        "nodes": cfg.nodes,
        "shard_size": cfg.shard_size,
        "flows": _abs(cfg.flows) if cfg.flows else None,
        "fps": cfg.fps,
        "jpeg_quality": cfg.jpeg_quality,
        "shards": [asdict(p) for p in plans],
    }
    plan_path = os.path.join(cfg.out, PLAN_NAME)
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            old = json.load(f)
        if old != plan_json:
            raise UserError(
                f"{cfg.out}: holds shards of a different pack plan ({PLAN_NAME} differs: other SRC, "
                f"options or source files); use an empty OUT"
            )
    else:
        _write_json(plan_path, plan_json)
    for stale in Path(cfg.out).glob(f".*{PARTIAL_SUFFIX}"):
        stale.unlink()  # left by a killed run; never under a final name

    entries: dict = {}
    todo = []
    for p in plans:
        final = os.path.join(cfg.out, p.file)
        if os.path.exists(final):
            entries[p.file] = _load_entry(cfg.out, p)
        else:
            todo.append(p)
    total_frames = sum(p.est_frames for p in plans)
    done_frames = sum(p.est_frames for p in plans if p.file in entries)
    bar = _progress(cfg, total_frames, done_frames, len(plans) - len(todo), len(plans))
    if todo:
        if cfg.jobs == 1:
            by_key = {(v.split, v.name): v for v in videos}
            for p in todo:
                entries[p.file] = write_shard(p, by_key, cfg.out, cfg.flows, bar.update)
        else:
            ctx = get_context("fork")
            progress = ctx.SimpleQueue()  # workers report frames per video; a thread moves the bar
            _WORKER.update(cfg=cfg, by_key={(v.split, v.name): v for v in videos}, progress=progress)
            mover = threading.Thread(target=_move_bar, args=(progress, bar), daemon=True)
            mover.start()
            errors = []
            # No pool.terminate() on a bad video: the other workers finish their shards (valid,
            # kept for the resume) and the first error is raised once the pool has drained.
            with ctx.Pool(min(cfg.jobs, len(todo))) as pool:
                for entry, err in pool.imap_unordered(_worker_run, [asdict(p) for p in todo]):
                    if err is not None:
                        errors.append(err)
                        continue
                    entries[entry["file"]] = mf.ShardEntry(**entry)
                pool.close()
                pool.join()
            progress.put(None)
            mover.join()
            if errors:
                bar.close()
                raise UserError(errors[0] + (f" (and {len(errors) - 1} more bad shards)" if len(errors) > 1 else ""))
    bar.close()
    m = mf.Manifest(nodes=cfg.nodes, shards=[entries[p.file] for p in plans], root=cfg.out)
    mf.write_manifest(os.path.join(cfg.out, mf.MANIFEST_NAME), m)
    return m


def _move_bar(queue, bar) -> None:
    while True:
        n = queue.get()
        if n is None:
            return
        bar.update(n)


def _load_entry(out: str, plan: ShardPlan) -> mf.ShardEntry:
    path = _entry_path(out, plan.file)
    if os.path.exists(path):
        with open(path) as f:
            entry = mf.ShardEntry(**json.load(f))
        if entry.bytes == os.path.getsize(os.path.join(out, plan.file)) and entry.sha256:
            return entry  # (an entry written before SHA-256 was recorded is described again)
    entry = mf.describe_shard(os.path.join(out, plan.file), plan.node, out)
    _write_json(path, asdict(entry))
    return entry


def _progress(cfg: PackConfig, total: int, done: int, shards_done: int, shards: int):
    from tqdm import tqdm

    if not cfg.progress:
        return tqdm(total=total, initial=done, disable=True)

    if shards_done:
        print(f"resuming: {shards_done} of {shards} shards already packed", file=sys.stderr)
    return tqdm(total=total, initial=done, unit="frame", desc="pack", file=sys.stderr, dynamic_ncols=True)


def choose_splits(src: str, given) -> Optional[List[str]]:
    """The splits a ``pack`` command line packs: ``--split`` as given (``all``: every split); without
    it the training split of a folder SRC (:data:`sources.DEFAULT_SPLITS`) and every video of a
    ``synth:`` spec (the spec names the videos it wants)."""
    given = [s for s in given if s]
    if "all" in given:
        if len(given) > 1:
            raise UserError("--split all packs every split; give it alone")
        return None
    if given:
        return given
    return None if src.startswith("synth:") else list(sources.DEFAULT_SPLITS)


@cli_command(
    "pack",
    epilog="Examples: hdf5_tools pack data/bdd shards --nodes 4 --shard-size 8GiB -j 4; "
    "hdf5_tools pack data/bdd/videos shards --nodes 4 --split train --split val; "
    "hdf5_tools pack synth:videos=8,frames=60,size=640x360,seed=0 shards --nodes 2",
)
@click.argument("src", metavar="SRC")
@click.argument("out", metavar="OUT")
@click.option("--nodes", type=int, required=True, help="number of node sets to balance frames across")
@click.option(
    "--shard-size",
    default="8GiB",
    show_default=True,
    help="largest shard (estimated bytes): 8GiB, 500MiB, 512MB (decimal), 8G (binary) or a byte count",
)
@click.option("--flows", metavar="DIR", default=None, help="seed .pth flows (forward/, backward/) or .flo folders")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="shards written in parallel")
@click.option("--fps", type=float, default=10.0, show_default=True, help="frame rate for decoding videos")
@click.option(
    "--jpeg-quality", type=int, default=95, show_default=True, help="JPEG quality when encoding decoded frames"
)
@click.option(
    "--src-kind",
    type=click.Choice(sources.SRC_KINDS),
    default="auto",
    show_default=True,
    help="which SRC layout to read when a folder has both images/ and videos/ (auto: images)",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="pack only this split (repeatable; 'all' for every split); default: train for a folder SRC, "
    "every video of a synth: spec",
)
@click.option("--no-progress", is_flag=True, help="no progress bar")
def command(src, out, nodes, shard_size, flows, jobs, fps, jpeg_quality, src_kind, splits, no_progress) -> int:
    """Pack frame folders, .mov videos or the synthetic world into per-node shards and a manifest.

    SRC is a folder holding images/{split}/<video>/*.jpg or videos/{split}/*.mov (or that images/ or
    videos/ folder itself), or synth:videos=N,frames=T,size=WxH,seed=S; OUT is the output folder
    for the shards and manifest.json. A folder's train split is packed unless --split says otherwise.
    """
    shard_bytes = checked(parse_bytes, shard_size, "--shard-size")
    cfg = PackConfig(
        src=src,
        out=out,
        nodes=nodes,
        shard_size=shard_bytes,
        flows=flows,
        jobs=jobs,
        fps=fps,
        jpeg_quality=jpeg_quality,
        splits=choose_splits(src, splits),
        src_kind=src_kind,
        progress=not no_progress,
    )
    m = pack(cfg)
    frames = sum(s.num_frames for s in m.shards)
    size = sum(s.bytes for s in m.shards)
    packed = sorted({v["split"] for s in m.shards for v in s.videos})
    print(
        f"packed {sum(s.num_videos for s in m.shards)} videos, {frames} frames into {len(m.shards)} shards "
        f"({size / 1e6:.1f} MB) for {m.nodes} nodes from split(s) {', '.join(packed)}: "
        f"{os.path.join(cfg.out, mf.MANIFEST_NAME)}"
    )
    if cfg.splits is not None:
        left = [s for s in sources.splits_of(src, src_kind) if s not in cfg.splits]
        if left:
            print(f"not packed: split(s) {', '.join(left)} (--split NAME or --split all packs them)")
    return 0


def main(argv=None) -> int:
    return call(command, argv, "hdf5_tools pack")
