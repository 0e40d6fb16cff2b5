"""Crash-safe checkpoints: atomic writes, a ``latest`` pointer, retention, validated loading.

Layout of ``RUN_DIR/checkpoints/``::

    step_00001234.pt     torch.save of the training state (only tensors and plain Python types,
                         so it loads with ``weights_only=True``)
    step_00001234.json   manifest: file name, size, crc32, step, epoch, time, milestone flag
    latest               one line: the file name of the newest complete checkpoint

A checkpoint counts only once its manifest exists and its size and CRC32 match, and it
unpickles (CRC32, as the shards use: it catches damage, not tampering, at ~3x sha256's speed).
The payload is streamed to a temporary name in the same folder (CRC computed on the way),
flushed, fsync'ed, renamed into place, and the folder is fsync'ed, so a ``kill -9`` at any
moment leaves either the old or the new checkpoint, never a half one that would be trusted. Loading tries the
newest checkpoint first and falls back to older ones when it is damaged.

A save that fails (a full disk, a quota, a read-only file system) removes what it wrote, so the
previous checkpoint stays the newest valid one, and raises
:class:`~plumbing.atomic.DiskWriteError`: one line naming the path and the bytes needed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from plumbing.atomic import atomic_open, atomic_write_bytes, disk_error, fsync_dir, remove_temporaries
from plumbing.errors import UserError
from plumbing.runs import LATEST, latest_in

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8,})\.json$")
REQUIRED_KEYS = ("format", "step", "epoch")
FORMAT = "pixpro_of.checkpoint/1"


class _HashingWriter:
    """A write-only file wrapper that computes the CRC32 and size of what passes through."""

    def __init__(self, f):
        self.f = f
        self.crc = 0
        self.size = 0
        self.error: Optional[OSError] = None  # torch.save reports a failed write as a RuntimeError

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


@dataclass
class CheckpointInfo:
    """One checkpoint on disk, as described by its manifest."""

    step: int
    epoch: int
    path: Path
    manifest: Path
    crc32: str
    size: int
    milestone: bool
    save_seconds: float


class CheckpointStore:
    """Saves and loads training states in one run's ``checkpoints/`` folder.

    ``keep``: how many of the newest checkpoints to keep; milestone checkpoints are never deleted.
    Only the rank that owns the run directory (rank 0) should call :meth:`save`.
    """

    def __init__(self, directory: os.PathLike, keep: int = 3):
        self.dir = Path(directory)
        self.keep = int(keep)

    # ------------------------------------------------------------------ listing
    def entries(self) -> List[CheckpointInfo]:
        """All checkpoints with a readable manifest, newest (highest step) first."""
        out = []
        if not self.dir.is_dir():
            return out
        for p in self.dir.iterdir():
            if not _NAME.match(p.name):
                continue
            try:
                m = json.loads(p.read_text())
                out.append(
                    CheckpointInfo(
                        step=int(m["step"]),
                        epoch=int(m["epoch"]),
                        path=self.dir / m["file"],
                        manifest=p,
                        crc32=str(m["crc32"]),
                        size=int(m["size"]),
                        milestone=bool(m.get("milestone", False)),
                        save_seconds=float(m.get("save_seconds", 0.0)),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("checkpoint manifest %s is damaged (%s); ignoring it", p, exc)
        out.sort(key=lambda e: e.step, reverse=True)
        return out

    def latest_name(self) -> Optional[str]:
        """The file name the ``latest`` pointer names, or None."""
        latest = latest_in(self.dir)
        return latest.name if latest is not None else None

    def clean_temporaries(self) -> None:
        """Remove temp files left by a writer that was killed mid-write."""
        remove_temporaries(self.dir)

    # ------------------------------------------------------------------ saving
    def save(self, state: Dict[str, Any], milestone: bool = False) -> Tuple[CheckpointInfo, float]:
        """Write ``state`` (must hold ``step`` and ``epoch``) atomically; update ``latest``; prune.

        Returns the new checkpoint's info and the seconds the whole save took.
        """
        import torch

        t0 = time.perf_counter()
        step, epoch = int(state["step"]), int(state["epoch"])
        state = dict(state, format=FORMAT)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:08d}.pt"
        final = self.dir / name
        mpath = self.dir / f"step_{step:08d}.json"
        writer = None
        target, counted = final, False
        try:
            with atomic_open(final, "wb", durable=True) as f:  # a failed write leaves no temporary file
                writer = _HashingWriter(f)
                torch.save(state, writer)  # streamed: no second copy of the state in memory
            digest, size = f"{writer.crc:08x}", writer.size
            seconds = time.perf_counter() - t0
            manifest = {
                "file": name,
                "size": size,
                "crc32": digest,
                "step": step,
                "epoch": epoch,
                "milestone": bool(milestone),
                "time": time.time(),
                "save_seconds": seconds,
            }
            target = mpath
            atomic_write_bytes(mpath, (json.dumps(manifest, indent=1) + "\n").encode(), durable=True)
            counted = True  # payload + manifest: a valid checkpoint from here on
            target = self.dir / LATEST
            atomic_write_bytes(target, (name + "\n").encode(), durable=True)
        except (OSError, RuntimeError) as exc:
            cause = exc if isinstance(exc, OSError) else (writer.error if writer is not None else None)
            if not counted:  # a payload without a manifest only holds space
                try:
                    final.unlink(missing_ok=True)
                except OSError:
                    pass  # a read-only file system: nothing could be written there either
            if cause is None:
                raise  # not a failed write (e.g. a bug in what is saved)
            raise disk_error(
                cause, target, needed=state_nbytes(state), what=f"writing the checkpoint of step {step}"
            ) from None
        self.prune()
        seconds = time.perf_counter() - t0
        info = CheckpointInfo(step, epoch, final, mpath, digest, size, bool(milestone), seconds)
        return info, seconds

    def prune(self) -> List[Path]:
        """Delete all but the ``keep`` newest non-milestone checkpoints; returns what was deleted."""
        entries = self.entries()
        latest = self.latest_name()
        regular = [e for e in entries if not e.milestone]
        removed = []
        for e in regular[self.keep :]:
            if e.path.name == latest:
                continue
            e.manifest.unlink(missing_ok=True)  # manifest first: a checkpoint without one is ignored
            e.path.unlink(missing_ok=True)
            removed += [e.manifest, e.path]
        # Payload files whose manifest never got written (killed between the two renames).
        named = {e.path.name for e in entries}
        newest = entries[0].step if entries else -1
        for p in self.dir.glob("step_*.pt"):
            m = re.match(r"^step_(\d+)\.pt$", p.name)
            if m and p.name not in named and int(m.group(1)) < newest:
                p.unlink(missing_ok=True)
                removed.append(p)
        if removed:
            fsync_dir(self.dir)
        return removed

    # ------------------------------------------------------------------ loading
    def verify(self, info: CheckpointInfo) -> Optional[str]:
        """None when the payload matches its manifest, else why not."""
        try:
            size = info.path.stat().st_size
        except OSError:
            return "file missing"
        if size != info.size:
            return f"size {size} != {info.size} in manifest"
        crc = 0
        with open(info.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                crc = zlib.crc32(chunk, crc)
        if f"{crc:08x}" != info.crc32:
            return "crc32 mismatch"
        return None

    def load(self, info: CheckpointInfo, map_location: Any = "cpu") -> Dict[str, Any]:
        """Load one checkpoint after verifying it; raises ValueError when damaged."""
        import torch

        why = self.verify(info)
        if why:
            raise ValueError(why)
        try:
            state = torch.load(info.path, map_location=map_location, weights_only=True)
        except Exception as exc:  # any unpickling failure means a damaged file
            raise ValueError(f"cannot unpickle: {exc}".splitlines()[0]) from None
        if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS) or state["format"] != FORMAT:
            raise ValueError("not a pixpro_of checkpoint")
        if int(state["step"]) != info.step:
            raise ValueError(f"holds step {state['step']}, manifest says {info.step}")
        return state

    def load_latest(self, map_location: Any = "cpu") -> Optional[Tuple[Dict[str, Any], CheckpointInfo]]:
        """The newest valid checkpoint, falling back past damaged ones; None when there is none.

        Raises UserError when checkpoints exist but every one is damaged (starting over would
        silently discard the run).
        """
        entries = self.entries()
        damaged = []
        for info in entries:
            try:
                state = self.load(info, map_location)
            except ValueError as exc:
                log.warning("checkpoint %s is damaged (%s); falling back to the previous one", info.path, exc)
                damaged.append(f"{info.path.name}: {exc}")
                continue
            if damaged:
                log.warning("resuming from %s after skipping %d damaged checkpoint(s)", info.path.name, len(damaged))
            return state, info
        if damaged:
            raise UserError(f"{self.dir}: every checkpoint is damaged ({'; '.join(damaged)})")
        return None


def state_nbytes(state: Any) -> int:
    """About the bytes ``torch.save(state)`` writes: every distinct tensor storage, plus 64 KiB."""
    import torch

    seen, total = set(), 1 << 16
    stack = [state]
    while stack:
        x = stack.pop()
        if torch.is_tensor(x):
            st = x.untyped_storage()
            key = (st.data_ptr(), st.nbytes())
            if key not in seen:
                seen.add(key)
                total += st.nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total


def host_copy(state: Any) -> Any:
    """A copy of ``state`` whose tensors are in host memory and owned by the copy (training may
    change the originals in place at once). GPU tensors are copied into pinned memory without a
    wait each, then synchronised once; containers are copied, plain values shared."""
    import torch

    pending = []

    def copy(x):
        if torch.is_tensor(x):
            x = x.detach()
            if x.device.type == "cpu":
                return x.clone()
            out = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
            out.copy_(x, non_blocking=True)
            pending.append(x.device)
            return out
        if isinstance(x, dict):
            return type(x)((k, copy(v)) for k, v in x.items())
        if isinstance(x, list):
            return [copy(v) for v in x]
        if isinstance(x, tuple):
            return tuple(copy(v) for v in x)
        return x

    out = copy(state)
    for device in set(pending):
        torch.cuda.synchronize(device)
    return out


class BackgroundWriter:
    """One checkpoint write at a time, in a thread, for rank 0 (ranks keep training meanwhile).

    :meth:`start` takes a state already copied to host memory (:func:`host_copy`); :meth:`join`
    waits for the write and returns ``(info, seconds)`` (None when nothing was pending) or
    re-raises its error (:class:`~plumbing.atomic.DiskWriteError` for a failed write). A write is
    :meth:`CheckpointStore.save`: the ``latest`` pointer moves only once the payload and its
    manifest are complete, so a process killed mid-write leaves the previous checkpoint as the
    newest. The thread is not a daemon: an interpreter exiting normally finishes the write.
    """

    def __init__(self, store: CheckpointStore):
        self.store = store
        self._thread = None
        self._result: Optional[Tuple[bool, Any]] = None

    @property
    def pending(self) -> bool:
        return self._thread is not None

    def start(self, state: Dict[str, Any], milestone: bool = False) -> None:
        import threading

        if self._thread is not None:
            raise RuntimeError("a checkpoint write is still pending: join() it first")

        def work():
            try:
                self._result = (True, self.store.save(state, milestone=milestone))
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self._result = (False, exc)

        self._result = None
        self._thread = threading.Thread(target=work, name=f"checkpoint-step-{int(state['step'])}", daemon=False)
        self._thread.start()

    def join(self) -> Optional[Tuple[CheckpointInfo, float]]:
        if self._thread is None:
            return None
        self._thread.join()
        self._thread, (ok, value) = None, self._result
        self._result = None
        if not ok:
            raise value
        return value
