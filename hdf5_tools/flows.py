"""``hdf5_tools flow``: forward and backward flow for every adjacent pair, into the shards."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import click
import h5py
import numpy as np

from plumbing.atomic import atomic_copy
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.jobenv import job_environment
from plumbing.runs import EXIT_RESUME

TAG_REQ, TAG_FRAMES, TAG_RESULT = 11, 12, 13


@dataclass
class ComputeConfig:
    """Resolved options of ``hdf5_tools flow`` (see ``--help``)."""

    sources: List[str]
    model: str = "raft-small"
    weights: Optional[str] = None
    into: Optional[str] = None
    device: str = "auto"
    iters: int = 12
    amp: Optional[str] = None
    dis_preset: str = "medium"
    batch: int = 8
    chunk: int = 16
    threads: Optional[int] = None
    recompute: bool = False
    progress: bool = True
    verbose: bool = False


@dataclass
class Chunk:
    """Pairs ``start .. start+count-1`` of one video (needs frames ``start .. start+count``)."""

    cid: int
    shard: str
    video: str
    start: int
    count: int
    height: int
    width: int


@dataclass
class Plan:
    shards: List[str]
    chunks: List[Chunk]
    worker: Dict[int, int] = field(default_factory=dict)  # chunk id -> computing rank
    owner: Dict[str, int] = field(default_factory=dict)  # shard path -> the only rank that opens it
    skipped_pairs: int = 0


# --------------------------------------------------------------------------- shards and plan


def copy_into(shards: List[str], into: str) -> List[str]:
    """Copy shards (and a manifest beside the first) into ``into``; reuse copies already there."""
    names = [os.path.basename(p) for p in shards]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--into {into}: two shards are named {dup[0]} (copies would collide)")
    os.makedirs(into, exist_ok=True)
    out = []
    for p in shards:
        dst = os.path.join(os.path.abspath(into), os.path.basename(p))
        if os.path.realpath(dst) != os.path.realpath(p) and not os.path.exists(dst):
            atomic_copy(p, dst)
        out.append(dst)
    from hdf5_tools import manifest as mf

    src_manifest = os.path.join(os.path.dirname(shards[0]), mf.MANIFEST_NAME) if shards else ""
    dst_manifest = os.path.join(os.path.abspath(into), mf.MANIFEST_NAME)
    if src_manifest and os.path.exists(src_manifest) and not os.path.exists(dst_manifest):
        atomic_copy(src_manifest, dst_manifest)
    return out


def make_plan(shards: List[str], size: int, chunk: int, recompute: bool = False) -> Plan:
    """Pending pairs cut into chunks; videos to ranks (largest first, least loaded); shard owners."""
    from hdf5_tools import schema

    chunks: List[Chunk] = []
    skipped = 0
    for path in shards:
        with schema.open_shard(path, "r") as h5:
            for v in schema.list_videos(h5):
                if v.num_pairs == 0:
                    continue
                todo = np.ones(v.num_pairs, bool) if recompute else ~schema.flows_present(h5, v.name)
                skipped += int(v.num_pairs - todo.sum())
                i = 0
                while i < v.num_pairs:
                    if not todo[i]:
                        i += 1
                        continue
                    j = i
                    while j < v.num_pairs and todo[j] and j - i < chunk:
                        j += 1
                    chunks.append(Chunk(len(chunks), path, v.name, i, j - i, v.height, v.width))
                    i = j
    plan = Plan(shards=shards, chunks=chunks, skipped_pairs=skipped)
    videos: Dict[Tuple[str, str], List[Chunk]] = {}
    for c in chunks:
        videos.setdefault((c.shard, c.video), []).append(c)
    load = [0] * size
    order = sorted(videos.items(), key=lambda kv: (-sum(c.count for c in kv[1]), kv[0]))
    for _, cs in order:
        r = min(range(size), key=lambda k: (load[k], k))
        load[r] += sum(c.count for c in cs)
        for c in cs:
            plan.worker[c.cid] = r
    for path in shards:
        per_rank = [0] * size
        for c in chunks:
            if c.shard == path:
                per_rank[plan.worker[c.cid]] += c.count
        plan.owner[path] = max(range(size), key=lambda k: (per_rank[k], -k))
    return plan


# --------------------------------------------------------------------------- frames and flows


def decode_frames(jpegs: List[bytes], c: Chunk) -> np.ndarray:
    """Decode a chunk's frames to uint8 [count+1, H, W, 3]; UserError on a frame of another size."""
    import simplejpeg

    out = []
    for k, b in enumerate(jpegs):
        i = c.start + k
        try:
            img = simplejpeg.decode_jpeg(b, colorspace="RGB")
        except Exception as exc:  # simplejpeg raises ValueError/RuntimeError on damaged data
            raise UserError(
                f"{os.path.basename(c.shard)}: video {c.video!r} frame {i}: cannot decode JPEG ({exc})"
            ) from None
        if img.shape[:2] != (c.height, c.width):
            raise UserError(
                f"{os.path.basename(c.shard)}: video {c.video!r} frame {i} is {img.shape[1]}x{img.shape[0]}, "
                f"the video's frames are {c.width}x{c.height}"
            )
        out.append(img)
    return np.stack(out)


def read_chunk_jpegs(h5, c: Chunk) -> List[bytes]:
    from hdf5_tools import schema

    return [schema.read_frame_jpeg(h5, c.video, i) for i in range(c.start, c.start + c.count + 1)]


def chunk_flows(estimator, frames: np.ndarray, batch: int) -> Tuple[np.ndarray, np.ndarray]:
    """fwd, bwd float32 [n, 2, h8, w8] for the n adjacent pairs of ``frames`` [n+1, H, W, 3]."""
    n = frames.shape[0] - 1
    a = np.concatenate([frames[:-1], frames[1:]])  # fwd pairs, then bwd pairs
    b = np.concatenate([frames[1:], frames[:-1]])
    lows = []
    for s in range(0, 2 * n, batch):
        lows.append(estimator(a[s : s + batch], b[s : s + batch]).low.cpu().numpy())
    low = np.concatenate(lows).astype(np.float32)
    return low[:n], low[n:]


# --------------------------------------------------------------------------- the run


class _Stop:
    def __init__(self):
        self.flag = False

    def __call__(self, signum, frame):
        self.flag = True


def _mpi_comm():
    """The MPI world communicator when launched by mpirun with more than one rank, else None."""
    job = job_environment()
    if job.mpi and job.world_size > 1:
        from mpi4py import MPI

        return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
    return None


def _pick_device(spec: str) -> str:
    import torch

    if spec != "auto":
        return spec
    if torch.cuda.is_available():
        local = job_environment().local_rank
        return f"cuda:{local % torch.cuda.device_count()}"
    return "cpu"


def run(cfg: ComputeConfig, log=print) -> int:
    """Compute and store every pending pair of ``cfg.sources``. Returns 0, or 75 when stopped early."""
    import torch

    from flow.estimators import make_estimator
    from hdf5_tools import manifest as mf

    comm = _mpi_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)

    # Everything that can fail on user input happens on rank 0 before any work, then is shared.
    err, plan = None, None
    if rank == 0:
        try:
            if cfg.model != "dis" and cfg.weights is None:
                raise UserError(
                    f"--weights is required for {cfg.model} (a local raft-small.pth / raft-things.pth / "
                    f"torchvision checkpoint)"
                )
            if cfg.weights is not None and not os.path.isfile(cfg.weights):
                raise UserError(f"{cfg.weights}: weights file not found")
            if cfg.batch < 1 or cfg.chunk < 1:
                raise UserError(f"--batch and --chunk should be >= 1, got {cfg.batch} and {cfg.chunk}")
            shards = [os.path.abspath(p) for p in mf.resolve_shards(cfg.sources)]
            if cfg.into:
                shards = copy_into(shards, cfg.into)
            plan = make_plan(shards, size, cfg.chunk, cfg.recompute)
        except UserError as exc:
            err = str(exc)
    if comm is not None:
        err, plan = comm.bcast((err, plan), root=0)
    if err is not None:
        if rank != 0:
            return 2  # rank 0 reports it (one line, not one per rank)
        raise UserError(err)
    assert plan is not None  # rank 0 made it or raised; the others received it

    threads = cfg.threads
    if threads is None:
        local_size = job_environment().local_size
        threads = max(1, (os.cpu_count() or 1) // max(local_size, size if comm is not None else 1))
    torch.set_num_threads(threads)
    device = _pick_device(cfg.device)
    try:
        estimator = make_estimator(
            cfg.model,
            weights=cfg.weights,
            device=device,
            iters=cfg.iters,
            amp=cfg.amp,
            dis_preset=cfg.dis_preset,
            threads=threads,
        )
    except UserError as exc:
        if comm is not None:
            log(f"hdf5_tools flow: error: {exc}", file=sys.stderr)
            comm.Abort(2)
        raise

    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    try:
        rc = _work(cfg, plan, estimator, comm, rank, size, stop, log)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc == 0 and rank == 0:
        for root in sorted({os.path.dirname(p) for p in plan.shards}):
            if os.path.exists(os.path.join(root, mf.MANIFEST_NAME)):
                mf.refresh_manifest(root)
    return rc


def _work(cfg, plan: Plan, estimator, comm, rank, size, stop: _Stop, log) -> int:
    from hdf5_tools import schema

    mine = [c for c in plan.chunks if plan.worker[c.cid] == rank]
    owned = [p for p in plan.shards if plan.owner[p] == rank and any(c.shard == p for c in plan.chunks)]
    handles: Dict[str, h5py.File] = {}
    by_id = {c.cid: c for c in plan.chunks}
    expect_remote = sum(1 for c in plan.chunks if plan.owner[c.shard] == rank and plan.worker[c.cid] != rank)
    served = received = 0
    frames_in: Dict[int, List[bytes]] = {}
    sends = []
    total = sum(c.count for c in mine)
    done_pairs = 0
    t0 = time.perf_counter()
    if rank == 0 and plan.skipped_pairs:
        log(f"skipping {plan.skipped_pairs} pair(s) already present")
    bar = None
    if cfg.progress and total:
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            unit="pair",
            desc=f"flow {estimator.name}" + (f" rank {rank}" if comm else ""),
            position=rank if comm else None,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )

    def write(c: Chunk, fwd, bwd):
        h5 = handles[c.shard]
        schema.write_flows(h5, c.video, fwd, bwd, start=c.start)
        h5.flush()
        if cfg.verbose:
            log(f"wrote {os.path.basename(c.shard)} {c.video} pairs {c.start}-{c.start + c.count - 1}", flush=True)

    def serve():
        nonlocal served, received
        if comm is None:
            return
        from mpi4py import MPI

        st = MPI.Status()
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
            src, tag = st.Get_source(), st.Get_tag()
            msg = comm.recv(source=src, tag=tag)
            if tag == TAG_REQ:
                c = by_id[msg]
                sends.append(comm.isend((msg, read_chunk_jpegs(handles[c.shard], c)), dest=src, tag=TAG_FRAMES))
                served += 1
            elif tag == TAG_FRAMES:
                frames_in[msg[0]] = msg[1]
            elif tag == TAG_RESULT:
                cid, fwd, bwd = msg
                write(by_id[cid], fwd, bwd)
                received += 1
        sends[:] = [r for r in sends if not r.Test()]

    def request(c: Chunk):
        if plan.owner[c.shard] != rank:
            sends.append(comm.isend(c.cid, dest=plan.owner[c.shard], tag=TAG_REQ))

    try:
        for p in owned:
            handles[p] = schema.open_shard(p, "r+")
        if mine:
            request(mine[0])
        for k, c in enumerate(mine):
            if stop.flag:
                break
            if k + 1 < len(mine):
                request(mine[k + 1])  # prefetch the next chunk's frames
            if plan.owner[c.shard] == rank:
                jpegs = read_chunk_jpegs(handles[c.shard], c)
            else:
                while c.cid not in frames_in and not stop.flag:
                    serve()
                    time.sleep(0.0005)
                if stop.flag:
                    break
                jpegs = frames_in.pop(c.cid)
            frames = decode_frames(jpegs, c)
            fwd, bwd = chunk_flows(estimator, frames, cfg.batch)
            h8, w8 = math.ceil(c.height / 8), math.ceil(c.width / 8)
            assert fwd.shape == (c.count, 2, h8, w8), (fwd.shape, c)
            if plan.owner[c.shard] == rank:
                write(c, fwd, bwd)
            else:
                sends.append(comm.isend((c.cid, fwd, bwd), dest=plan.owner[c.shard], tag=TAG_RESULT))
            done_pairs += c.count
            if bar is not None:
                bar.update(c.count)
            serve()
        while comm is not None and not stop.flag and (served < expect_remote or received < expect_remote or sends):
            serve()
            time.sleep(0.0005)
    except UserError as exc:
        if comm is not None:
            log(f"hdf5_tools flow: error: {exc}", file=sys.stderr, flush=True)
            for h in handles.values():
                h.flush()
            comm.Abort(2)
        raise
    finally:
        if bar is not None:
            bar.close()
        for h in handles.values():
            h.close()
    dt = time.perf_counter() - t0
    if stop.flag:
        log(
            f"stopped after {done_pairs} of {total} pair(s){f' on rank {rank}' if comm else ''}; "
            f"run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_RESUME
    if comm is not None:
        comm.Barrier()
    log(
        f"{'rank %d: ' % rank if comm else ''}{done_pairs} pair(s) with {estimator.name} in {dt:.1f} s "
        f"({done_pairs / dt if dt > 0 else 0.0:.2f} pairs/s)",
        flush=True,
    )
    return 0


@cli_command(
    "flow",
    epilog="Examples: mpirun -np 4 hdf5_tools flow shards/ --model raft-small --weights raft-small.pth; "
    "hdf5_tools flow shards/ --model dis --into shards-dis/",
)
@click.argument("sources", nargs=-1, required=True, metavar="SHARDS...")
@click.option(
    "--model", type=click.Choice(["raft-small", "raft-large", "dis"]), default="raft-small", show_default=True
)
@click.option(
    "--weights", default=None, help="local RAFT checkpoint (official princeton-vl .pth or torchvision state dict)"
)
@click.option(
    "--into", metavar="DIR", default=None, help="copy the shards into DIR and fill the copies (default: in place)"
)
@click.option("--device", default="auto", help="torch device for RAFT (default: this rank's GPU, else cpu)")
@click.option("--iters", type=int, default=12, show_default=True, help="RAFT refinement iterations (as the seed)")
@click.option(
    "--amp", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="RAFT autocast dtype"
)
@click.option("--dis-preset", type=click.Choice(["ultrafast", "fast", "medium"]), default="medium", show_default=True)
@click.option("--batch", type=int, default=8, show_default=True, help="pairs per estimator call")
@click.option(
    "--chunk",
    type=int,
    default=16,
    show_default=True,
    help="pairs computed between writes; a kill loses at most this many per rank",
)
@click.option("--threads", type=int, default=None, help="CPU threads per rank (default: cores / ranks on the node)")
@click.option("--recompute", is_flag=True, help="recompute pairs that are already present")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("-v", "--verbose", is_flag=True, help="print one line per chunk written")
def command(
    sources,
    model,
    weights,
    into,
    device,
    iters,
    amp,
    dis_preset,
    batch,
    chunk,
    threads,
    recompute,
    no_progress,
    verbose,
) -> int:
    """Forward and backward flow for every adjacent pair, written into the shards.

    Resumable; runs under mpirun with one writer per shard. SHARDS are shard files, or folders of
    shards (manifest.json or *.h5).
    """
    cfg = ComputeConfig(
        sources=list(sources),
        model=model,
        weights=weights,
        into=into,
        device=device,
        iters=iters,
        amp=None if amp == "fp32" else amp,
        dis_preset=dis_preset,
        batch=batch,
        chunk=chunk,
        threads=threads,
        recompute=recompute,
        progress=not no_progress,
        verbose=verbose,
    )
    return run(cfg)


def main(argv=None) -> int:
    return call(command, argv, "hdf5_tools flow")
