"""``hdf5_tools stage MANIFEST --node I --to DIR``: copy one node's shards to node-local storage."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Optional, Tuple

import click

from hdf5_tools import manifest as mf
from plumbing.atomic import atomic_copy, atomic_open
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.jobenv import JobEnvironment, job_environment
from plumbing.private_dir import private_dir

MARKER_NAME = ".pixpro-stage"


@dataclass
class StageConfig:
    manifest: str
    to: str
    node: Optional[int] = None
    num_nodes: Optional[int] = None
    quiet: bool = False
    run: str = ""  # who stages (the job script passes its run directory); written into the marker


@dataclass
class StageResult:
    node: int
    num_nodes: int
    copied: int
    skipped: int
    bytes_copied: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_copied / 1e6 / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (
            f"node {self.node} of {self.num_nodes}: copied {self.copied} shards "
            f"({self.bytes_copied / 1e6:.1f} MB in {self.seconds:.2f} s, {self.mb_per_s:.1f} MB/s), "
            f"{self.skipped} already there and verified"
        )


class _Crc32:
    """zlib CRC32 with hashlib's update/hexdigest (for manifests without SHA-256)."""

    def __init__(self):
        self.crc = 0

    def update(self, b) -> None:
        self.crc = zlib.crc32(b, self.crc)

    def hexdigest(self) -> str:
        return f"{self.crc & 0xFFFFFFFF:08x}"


def expected_digest(s: mf.ShardEntry) -> Tuple[str, str]:
    """(name, hex digest) a copy of shard ``s`` must have: its SHA-256, or CRC32 in an old manifest."""
    return ("SHA-256", s.sha256) if s.sha256 else ("CRC32", s.crc32)


def _hasher(name: str):
    return hashlib.sha256() if name == "SHA-256" else _Crc32()


def _copy_checked(src: str, fo: Optional[IO[bytes]], digest: str = "SHA-256", block: int = 16 << 20) -> Tuple[str, int]:
    """Read ``src`` once, hashing it and writing it to ``fo`` when given; (hex ``digest``, bytes).

    A helper thread hashes each block while this one writes it and reads the next (all three
    release the GIL), so the copy runs at about the slowest of read, hash and write.
    """
    h, size = _hasher(digest), 0
    with open(src, "rb") as fi, ThreadPoolExecutor(1) as pool:
        hashing = None
        while True:
            b = fi.read(block)
            if not b:
                break
            if hashing is not None:
                hashing.result()  # in order: block k-1 is hashed before block k
            hashing = pool.submit(h.update, b)
            if fo is not None:
                fo.write(b)
            size += len(b)
        if hashing is not None:
            hashing.result()
    return h.hexdigest(), size


def staged_copy_good(dst: str, s: mf.ShardEntry) -> bool:
    """Whether ``dst`` (in a directory this run made) is a good copy of shard ``s``: a regular file
    with its size and SHA-256 (old manifests: CRC32; never enough on its own, see the module docstring)."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != s.bytes:
        return False
    name, want = expected_digest(s)
    return _copy_checked(dst, None, name)[0] == want


def stage_marker(manifest: str, run: str) -> str:
    """The marker text of a staging directory: which run staged which manifest."""
    return (
        json.dumps(
            {"format": "pixpro_of.stage", "run": run, "manifest": os.path.realpath(mf.manifest_file(manifest))},
            sort_keys=True,
        )
        + "\n"
    )


def stage(cfg: StageConfig) -> StageResult:
    """Copy node ``cfg.node``'s shards into ``cfg.to`` (see the module docstring)."""
    if cfg.node is None:
        raise ValueError("stage() needs cfg.node; run_stage resolves it from the launch environment")
    m = mf.load_manifest(cfg.manifest, check_files=False)
    num_nodes = m.nodes if cfg.num_nodes is None else cfg.num_nodes
    sets = set(mf.node_sets_for(cfg.node, num_nodes, m.nodes))
    to = private_dir(
        cfg.to, what="staging directory", marker=stage_marker(cfg.manifest, cfg.run), marker_name=MARKER_NAME
    )
    copied = skipped = nbytes = 0
    t0 = time.perf_counter()
    for i, s in enumerate(m.shards):
        if s.node not in sets:
            continue
        src = m.path_of(s)
        dst = os.path.join(to.path, s.file)
        if not to.created and staged_copy_good(dst, s):
            skipped += 1
            continue
        if not os.path.exists(src):
            raise UserError(f"{cfg.manifest}: shard {i} lists a missing file {src}")
        name, want = expected_digest(s)
        with atomic_open(dst, "wb", durable=True) as fo:  # a bad copy is removed, never renamed into place
            got, size = _copy_checked(src, fo, name)
            if got != want or size != s.bytes:
                raise UserError(
                    f"{src}: shard {i} has {name} {got} and {size} bytes, the manifest "
                    f"says {want} and {s.bytes} (changed or damaged; refresh or repack)"
                )
        copied += 1
        nbytes += s.bytes
    src_manifest = cfg.manifest if not os.path.isdir(cfg.manifest) else os.path.join(cfg.manifest, mf.MANIFEST_NAME)
    dst_manifest = os.path.join(to.path, mf.MANIFEST_NAME)
    if os.path.abspath(src_manifest) != os.path.abspath(dst_manifest):
        atomic_copy(src_manifest, dst_manifest)
    return StageResult(
        node=cfg.node,
        num_nodes=num_nodes,
        copied=copied,
        skipped=skipped,
        bytes_copied=nbytes,
        seconds=time.perf_counter() - t0,
    )


def slurm_step_node(job: JobEnvironment) -> Optional[tuple]:
    """``(node index, node count)`` inside an srun step with one task per node, else None."""
    if job.launcher != "srun":
        return None
    if job.world_size != job.nodes:
        raise UserError(
            f"stage runs one copier per node: start it with srun --ntasks-per-node=1 "
            f"(this step has {job.world_size} tasks on {job.nodes} nodes), or give --node"
        )
    return job.node, job.nodes


def stage_mpi(cfg: StageConfig) -> Optional[StageResult]:
    """One copier per node (lowest rank of each shared-memory communicator); returns its result on it."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
    leader = local.rank == 0
    leaders = world.Split(0 if leader else MPI.UNDEFINED, key=world.rank)
    node_info = (leaders.rank, leaders.size) if leader else None
    node, num_nodes = local.bcast(node_info, root=0)
    result, error = None, None
    if leader:
        try:
            result = stage(
                StageConfig(
                    manifest=cfg.manifest,
                    to=cfg.to,
                    node=node,
                    num_nodes=cfg.num_nodes or num_nodes,
                    quiet=cfg.quiet,
                    run=cfg.run,
                )
            )
        except UserError as exc:
            error = str(exc)
        except Exception as exc:  # any failure must reach the waiting ranks, or they hang
            error = f"node {node}: stage failed ({type(exc).__name__}: {exc})"
    error = local.bcast(error, root=0)
    local.Barrier()
    if leaders != MPI.COMM_NULL:
        leaders.Free()
    local.Free()
    if error is not None:
        raise UserError(f"rank {world.rank}: {error}" if not leader else error)
    return result


@cli_command("stage", epilog="Example: mpirun -npernode 1 hdf5_tools stage shards/manifest.json --to $LOCALDIR/data")
@click.argument("manifest", metavar="MANIFEST")
@click.option("--to", required=True, metavar="DIR", help="node-local folder to copy the shards into")
@click.option("--node", type=int, default=None, help="this node's index (not needed under mpirun or srun)")
@click.option(
    "--num-nodes",
    type=int,
    default=None,
    help="nodes in the job (default: the manifest's node count; under mpirun: the job's node count)",
)
@click.option(
    "--run",
    default="",
    metavar="TEXT",
    help="who stages (the job script gives its run directory): "
    "recorded in DIR's marker; an existing DIR is reused only with the same run and manifest",
)
@click.option("--quiet", is_flag=True, help="no summary line")
def command(manifest, to, node, num_nodes, quiet, run) -> int:
    """Copy one node's shards to node-local storage (one copier per node under mpirun or srun).

    MANIFEST is the manifest.json written by pack (or its folder).
    """
    cfg = StageConfig(manifest=manifest, to=to, node=node, num_nodes=num_nodes, quiet=quiet, run=run)
    job = job_environment() if cfg.node is None else None  # --node given: the launch environment is not read
    slurm = slurm_step_node(job) if job is not None else None
    if slurm is not None:
        cfg.node = slurm[0]
        cfg.num_nodes = cfg.num_nodes or slurm[1]
        result: Optional[StageResult] = stage(cfg)
    elif job is not None:  # no --node: mpirun's ranks
        if not job.mpi:
            raise UserError("--node is required outside mpirun and srun")
        result = stage_mpi(cfg)
    else:
        result = stage(cfg)
    if result is not None and not cfg.quiet:
        print(f"stage: {result.line()}", file=sys.stdout, flush=True)
    return 0


def main(argv=None) -> int:
    return call(command, argv, "hdf5_tools stage")
