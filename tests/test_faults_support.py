"""Fault injection for the fail-fast tests (tests/test_faults_*.py) and bench/bench_faults.py.

- :func:`make_shards`: the synthetic world (16 videos x 8 frames, 128x64, exact flows) packed
  into one shard with its manifest, as the ``cpu_small`` preset trains on.
- Faults on a shard, applied to a running job or before it: :func:`corrupt_jpegs` (one byte of
  every frame flipped), :func:`corrupt_flows` (one byte of every flow_fwd chunk),
  :func:`truncate` (cut to half its size), :func:`delete`; :func:`kill_worker` SIGKILLs one
  DataLoader worker (what the OOM killer does).
- :func:`run_with_fault`: start a training job, wait for a step, inject, and time the job's exit;
  every process of the job carries a token in its environment, so :func:`job_processes` finds
  any left behind (orphaned workers, ranks).

Driver: ``python tests/test_faults_support.py train ARGS...`` is ``python -m pixpro_of train
ARGS...`` with a tiny PixPro double (:class:`FaultPixPro`: stride-32 encoder, real loss, momentum
branch) in place of ResNet, so a step takes milliseconds and the real CLI, trainer, reader,
pipeline, DataLoader and backends are what is tested.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
DRIVER = Path(__file__).resolve()
ERROR_LINE = "pixpro_of train: error: "
# The cpu_small preset with the tiny model: global batch 4, 16 videos -> 4 steps per epoch.
BASE = [
    "--config",
    "cpu_small",
    "run.deterministic=true",
    "log.tensorboard=false",
    "data.num_workers=1",
    "checkpoint.every_epochs=0",
    "checkpoint.every_steps=2",
    "run.epochs=40",
]


# --------------------------------------------------------------------------- the model double


def _tiny_pixpro_class():
    import torch.nn.functional as F
    from torch import nn

    class FaultPixPro(nn.Module):
        """Encoder with stride 32 (as ResNet's C5) + 1x1 projector, momentum copies, real pixpro_loss."""

        def __init__(self, cfg=None, width: int = 8, dim: int = 4):
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=4, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, stride=8, padding=1),
            )
            self.projector = nn.Sequential(
                nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, dim, 1)
            )
            self.encoder_k = copy.deepcopy(self.encoder)
            self.projector_k = copy.deepcopy(self.projector)
            for p in list(self.encoder_k.parameters()) + list(self.projector_k.parameters()):
                p.requires_grad_(False)

        @staticmethod
        def feature_size(image_size: int) -> int:
            return image_size // 32

        def online_modules(self):
            return [self.encoder, self.projector]

        def momentum_update(self, m: float) -> None:
            import torch

            with torch.no_grad():
                for q, k in ((self.encoder, self.encoder_k), (self.projector, self.projector_k)):
                    for pq, pk in zip(q.parameters(), k.parameters()):
                        pk.mul_(m).add_(pq.detach(), alpha=1 - m)

        def forward(self, view1, view2, pos12, pos21):
            import torch

            from pixpro_of.losses.pixpro_loss import pixpro_loss

            p1 = F.normalize(self.projector(self.encoder(view1)), dim=1)
            p2 = F.normalize(self.projector(self.encoder(view2)), dim=1)
            with torch.no_grad():
                t1 = F.normalize(self.projector_k(self.encoder_k(view1)), dim=1)
                t2 = F.normalize(self.projector_k(self.encoder_k(view2)), dim=1)
            l1, n1 = pixpro_loss(p1, t2, pos12)
            l2, n2 = pixpro_loss(p2, t1, pos21)
            return l1 + l2, {"positive_pair/num": n1.sum() + n2.sum()}

    return FaultPixPro


def _driver(argv: List[str]) -> int:
    import pixpro_of.model.pixpro as real

    real.PixPro = _tiny_pixpro_class()  # build_model and the sample builder look it up at call time
    from pixpro_of.__main__ import main

    return main(argv)


# --------------------------------------------------------------------------- data and faults


def make_shards(root: Path, videos: int = 16, frames: int = 8) -> Path:
    """Pack the synthetic world into ``root`` (one shard); returns the manifest path."""
    from hdf5_tools.pack import PackConfig, pack

    root = Path(root)
    pack(
        PackConfig(
            src=f"synth:videos={videos},frames={frames},size=128x64,seed=0", out=str(root), nodes=1, progress=False
        )
    )
    return root / "manifest.json"


def shard_of(manifest: Path) -> Path:
    return next(Path(manifest).parent.glob("shard-*.h5"))


def _flip(path: Path, offsets) -> None:
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0x5A]))
        f.flush()
        os.fsync(f.fileno())


def video_names(shard: Path) -> List[str]:
    import h5py

    from hdf5_tools import schema

    with h5py.File(shard, "r") as h5:
        return sorted(h5[schema.VIDEOS].keys())


def corrupt_jpegs(shard: Path, videos: Optional[List[str]] = None) -> None:
    """Flip a byte in the middle of every frame of ``videos`` (default: all): CRC failures."""
    import h5py
    from shard_bytes import file_offset

    from hdf5_tools import schema

    offsets = []
    with h5py.File(shard, "r") as h5:
        for v in videos or sorted(h5[schema.VIDEOS].keys()):
            g = h5[schema.VIDEOS][v]
            base = file_offset(shard, v, schema.JPEG)
            offsets += [
                base + int(o) + int(n) // 2 for o, n in zip(g[schema.JPEG_OFFSET][()], g[schema.JPEG_LENGTH][()])
            ]
    _flip(shard, offsets)


def corrupt_flows(shard: Path, videos: Optional[List[str]] = None) -> None:
    """Flip a byte in every stored flow_fwd chunk of ``videos`` (default: all)."""
    import h5py
    from shard_bytes import file_offset

    from hdf5_tools import schema

    offsets = []
    with h5py.File(shard, "r") as h5:
        for v in videos or sorted(h5[schema.VIDEOS].keys()):
            pairs = h5[schema.VIDEOS][v][schema.FLOW_FWD].shape[0]
            offsets += [file_offset(shard, v, schema.FLOW_FWD, i) + 7 for i in range(pairs)]
    _flip(shard, offsets)


def truncate(shard: Path, fraction: float = 0.5) -> None:
    with open(shard, "r+b") as f:
        f.truncate(int(os.path.getsize(shard) * fraction))


def delete(shard: Path) -> None:
    os.unlink(shard)


# --------------------------------------------------------------------------- processes


def _environ(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def job_processes(token: str) -> List[int]:
    """Live (not zombie) processes whose environment holds ``FAULT_TOKEN=token``."""
    key = f"FAULT_TOKEN={token}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and key in _environ(entry).split(b"\0"):
            try:
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.append(int(entry))
    return out


def loader_workers(token: str) -> List[int]:
    """The job's DataLoader worker processes (torch names them ``pt_data_worker``)."""
    out = []
    for pid in job_processes(token):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pt_data_worker":
                out.append(pid)
        except OSError:
            pass
    return out


def kill_worker(token: str, timeout: float = 30.0) -> int:
    """SIGKILL one DataLoader worker of the job (the OOM killer's way); returns its pid."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        workers = loader_workers(token)
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            return workers[0]
        time.sleep(0.05)
    raise AssertionError("no DataLoader worker appeared")


def train_cmd(run_dir: Path, shards: Path, ranks: int = 1, backend: str = "horovod", extra=()) -> List[str]:
    py = [sys.executable, str(DRIVER), "train", "--run-dir", str(run_dir), *BASE, f"data.shards=[{shards}]", *extra]
    if ranks == 1:
        return py + ["dist.backend=single"]
    return ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + py + [f"dist.backend={backend}"]


def mpi_env(env: Optional[dict] = None) -> dict:
    e = dict(os.environ if env is None else env)
    e.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        OMPI_MCA_mpi_yield_when_idle="1",
        PYTHONUNBUFFERED="1",
    )
    e["PATH"] = f"{Path(sys.executable).parent}:{e.get('PATH', '')}"
    e["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    return e


def last_step(run_dir: Path) -> int:
    csv = Path(run_dir) / "metrics.csv"
    try:
        lines = csv.read_text().splitlines()[1:]
        return int(lines[-1].split(",")[0]) if lines else 0
    except (OSError, ValueError, IndexError):
        return 0


def first_bad_read(run_dir: Path) -> Optional[float]:
    """The Unix time of the first bad read a rank logged when it failed (earliest over ranks)."""
    times = []
    for log in (Path(run_dir) / "logs").glob("train*.log"):
        times += [float(x) for x in re.findall(r"first bad read at ([0-9.]+) \(Unix time\)", log.read_text())]
    return min(times) if times else None


def run_with_fault(
    cmd: List[str],
    run_dir: Path,
    inject: Optional[Callable[[str], None]],
    at_step: int = 2,
    env: Optional[dict] = None,
    timeout: float = 120.0,
) -> Dict[str, object]:
    """Run ``cmd``, call ``inject(token)`` once step ``at_step`` is logged (None: no injection),
    and wait for the job to end. Returns rc, output, the injection and exit times, the first bad
    read the trainer logged, and the job's processes still alive 2 s after the exit."""
    token = uuid.uuid4().hex
    e = mpi_env(env)
    e["FAULT_TOKEN"] = token
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, start_new_session=True
    )
    t_inject = None
    try:
        if inject is not None:
            t0 = time.time()
            while last_step(run_dir) < at_step:
                if proc.poll() is not None:
                    raise AssertionError(f"the job ended before step {at_step}: {proc.stdout.read()[-3000:]}")
                if time.time() - t0 > timeout:
                    raise AssertionError(f"step {at_step} not reached in {timeout} s")
                time.sleep(0.05)
            t_inject = time.time()
            inject(token)
        out, _ = proc.communicate(timeout=timeout)
        t_exit = time.time()
    finally:
        if proc.poll() is None:  # hung: end it and everything it started
            for pid in job_processes(token) + [proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=30)
    time.sleep(2.0)
    left = job_processes(token)
    for pid in left:  # do not leak them into the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {
        "rc": proc.returncode,
        "output": out,
        "t_inject": t_inject,
        "t_exit": t_exit,
        "first_bad_read": first_bad_read(run_dir),
        "left": left,
    }


def error_lines(output: str) -> List[str]:
    return [ln for ln in output.splitlines() if ln.startswith(ERROR_LINE)]


def test_fault_pixpro_matches_the_pipeline_feature_size():
    import torch

    m = _tiny_pixpro_class()()
    pos = torch.ones(2, 4, 4, dtype=torch.bool)
    loss, _ = m(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), pos, pos)
    assert m.feature_size(64) == 2 and torch.isfinite(loss)


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))
