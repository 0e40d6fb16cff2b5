"""The trainer's data feed: per-sample RNG, the sample set with its bad-sample records, resumable
epoch batches, the DataLoader and its workers (which die with the trainer). Every sample is a pure
function of ``(seed, epoch, node, position)``; ARCHITECTURE.md "The trainer" says why and how bad
samples travel. Shard paths: :func:`hdf5_tools.manifest.resolve_shards`.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data

from pixpro_of.train.failures import TrainingFailure, dead_workers, stop_worker_watch
from plumbing.errors import UserError


def sample_rng(seed: int, epoch: int, node: int, position: int) -> np.random.Generator:
    """The augmentation RNG of one sample: ``default_rng([seed, epoch, node, position])``."""
    return np.random.default_rng([int(seed), int(epoch), int(node), int(position)])


_SALT_SUBSTITUTE = 0x5B5717


@dataclass
class BadSample:
    """One sample that could not be built. ``message`` is one line naming the shard, video and
    frame (from the reader); ``skippable`` is false for errors that are not about one sample's data
    (a shard that cannot be opened, a bug in the sample pipeline), whose traceback is ``detail``.
    ``when`` is the Unix time of the failed read (for the fail-fast measurements)."""

    epoch: int
    position: int
    video_index: int
    t: int
    message: str
    skippable: bool = True
    when: float = 0.0
    detail: str = ""

    def describe(self) -> str:
        return f"epoch {self.epoch} sample {self.position}: {self.message}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(exc).__name__


def is_unavailable_shard(exc: BaseException) -> bool:
    """A whole shard is missing or cannot be opened: never skipped sample by sample."""
    from pixpro_of.data.shards import ShardUnavailableError

    return isinstance(exc, ShardUnavailableError)


class SampleSet(torch.utils.data.Dataset):
    """Maps a key ``(epoch, position, video_index, t)`` to a built sample dict.

    ``clips[(video_index, t)]`` gives the clip dict; ``build(clip, rng)`` augments it.
    ``substitutes``: with ``data.on_bad_sample=skip``, how many substitute clips to try for a clip
    that cannot be read (0: fail on the first bad read). A sample that cannot be built comes back
    as ``{"_failed": BadSample, "_bad": [...]}``; one built after skipping bad clips carries
    their records in ``"_bad"`` (see the module docstring).
    """

    def __init__(self, clips, build: Callable, seed: int, node: int = 0, substitutes: int = 0):
        self.clips = clips
        self.build = build
        self.seed = int(seed)
        self.node = int(node)
        self.substitutes = int(substitutes)

    def __len__(self) -> int:
        return len(self.clips)

    def substitute(self, epoch: int, position: int, attempt: int) -> Tuple[int, int, np.random.Generator]:
        """The ``attempt``-th substitute ``(video_index, t, rng)`` for the sample at ``position``: a
        pure function of (seed, epoch, node, position, attempt), like every sample."""
        rng = np.random.default_rng([self.seed, int(epoch), self.node, int(position), _SALT_SUBSTITUTE, int(attempt)])
        v = int(rng.integers(0, self.clips.num_videos))
        t = int(rng.integers(0, self.clips.num_frames(v) - self.clips.k + 1))
        return v, t, rng

    def __getitem__(self, key: Tuple[int, int, int, int]) -> dict:
        epoch, position, video_index, t = (int(x) for x in key)
        skipped: List[BadSample] = []
        rng = sample_rng(self.seed, epoch, self.node, position)
        attempt = 0
        while True:
            try:
                clip = self.clips[(video_index, t)]
            except Exception as exc:  # noqa: BLE001 - every read error becomes a record, see above
                bad = BadSample(
                    epoch,
                    position,
                    video_index,
                    t,
                    _one_line(exc),
                    skippable=not is_unavailable_shard(exc),
                    when=time.time(),
                )
                if not isinstance(exc, (UserError, OSError)) and not is_unavailable_shard(exc):
                    bad.detail = traceback.format_exc()
                if not bad.skippable or attempt >= self.substitutes:
                    return {"_failed": bad, "_bad": skipped}
                skipped.append(bad)
                attempt += 1
                video_index, t, rng = self.substitute(epoch, position, attempt)
                continue
            try:
                sample = self.build(clip, rng)
            except Exception as exc:  # noqa: BLE001 - a bug in the pipeline: fail with its traceback
                where = f"video {clip.get('video', video_index)!r} frame {t}" if isinstance(clip, dict) else ""
                return {
                    "_failed": BadSample(
                        epoch,
                        position,
                        video_index,
                        t,
                        f"building the sample of {where}: {type(exc).__name__}: {_one_line(exc)}",
                        skippable=False,
                        when=time.time(),
                        detail=traceback.format_exc(),
                    ),
                    "_bad": skipped,
                }
            if skipped:
                sample = dict(sample)
                sample["_bad"] = skipped
            return sample


@dataclass
class LoadedBatch:
    """What the trainer's loader yields: the collated ``batch`` (a
    :class:`~pixpro_of.data.pipeline.Batch`; None when a sample could not be built), the records
    of the samples skipped to make it (``bad``) and the first sample that could not be built
    (``failed``)."""

    batch: Any
    bad: List[BadSample]
    failed: Optional[BadSample] = None

    def pin_memory(self) -> "LoadedBatch":
        """Pins the batch (the DataLoader's ``pin_memory=True`` calls this; a batch without a
        ``pin_memory`` method, e.g. a test double's, stays as it is)."""
        pin = getattr(self.batch, "pin_memory", None)
        return LoadedBatch(pin() if pin is not None else self.batch, self.bad, self.failed)


class SafeCollate:
    """Wraps a collate function: strips the bad-sample records from the samples, collates the
    rest and returns a :class:`LoadedBatch` with the records; when a sample could not be built at
    all, its ``failed`` is the first such record and it holds no batch."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, samples: List[dict]) -> LoadedBatch:
        bad = [r for s in samples for r in s.get("_bad", ())]
        failed = [s["_failed"] for s in samples if "_failed" in s]
        if failed:
            return LoadedBatch(None, bad, failed[0])
        out = self.collate([{k: v for k, v in s.items() if k != "_bad"} if "_bad" in s else s for s in samples])
        return LoadedBatch(out, bad)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of sample keys for one rank and one epoch, starting at batch ``start_batch``.

    ``order`` is the rank's ``(video_index, t)`` list for the epoch (from ClipSampler, before
    any start offset); item ``i`` of it has node position ``i * sampler_world + sampler_rank``.
    Incomplete last batches are dropped (as the seed's ``drop_last=True``).
    """

    def __init__(
        self,
        order: Sequence[Tuple[int, int]],
        epoch: int,
        batch_size: int,
        start_batch: int = 0,
        sampler_rank: int = 0,
        sampler_world: int = 1,
    ):
        self.order = list(order)
        self.epoch = int(epoch)
        self.batch_size = int(batch_size)
        self.start_batch = int(start_batch)
        self.sampler_rank, self.sampler_world = int(sampler_rank), int(sampler_world)
        self.num_batches = len(self.order) // self.batch_size
        if not 0 <= self.start_batch <= self.num_batches:
            raise ValueError(f"start batch {self.start_batch} outside [0, {self.num_batches}]")

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def __iter__(self) -> Iterator[List[Tuple[int, int, int, int]]]:
        b = self.batch_size
        for batch in range(self.start_batch, self.num_batches):
            keys = []
            for i in range(batch * b, (batch + 1) * b):
                v, t = self.order[i]
                keys.append((self.epoch, i * self.sampler_world + self.sampler_rank, int(v), int(t)))
            yield keys


def _seed_worker(seed: int, epoch: int, rank: int, worker_id: int) -> None:
    # Samples draw from their own generator; this only keeps library code that touches the
    # global RNGs from repeating the same numbers in every worker (docs/original-system.md §4, bug 9).
    s = np.random.SeedSequence([seed, epoch, rank, worker_id]).generate_state(2)
    np.random.seed(int(s[0]))
    random.seed(int(s[1]))
    torch.manual_seed(int(s[0]) << 32 | int(s[1]))


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; no-op elsewhere).

    A DataLoader worker otherwise outlives a trainer killed by ``kill -9`` or the OOM killer for
    up to torch's 5 s watchdog interval, and may print tracebacks (``ConnectionResetError``) into
    the job's log while it notices."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    sys.excepthook = _OrphanQuiet(parent_pid, sys.excepthook)


class _OrphanQuiet:
    """A worker's ``sys.excepthook`` that stays silent about a lost connection when its parent is dying.

    The parent's death closes its sockets before the kernel's death signal reaches this worker, so
    the thread that passes tensors' file descriptors to the parent (``multiprocessing``'s resource
    sharer, which reports its errors through ``sys.excepthook``) may meet ``ConnectionResetError``
    first. Such an error waits up to ``wait_s`` for the parent to be gone, then ends the worker
    without a word; anything else, or with the parent alive, goes to the usual hook.
    """

    def __init__(self, parent_pid: int, hook, wait_s: float = 2.0):
        self.parent_pid, self.hook, self.wait_s = parent_pid, hook, wait_s

    def __call__(self, kind, value, tb):
        if issubclass(kind, (ConnectionError, EOFError)):
            end = time.monotonic() + self.wait_s
            while time.monotonic() < end:
                if os.getppid() != self.parent_pid:
                    os._exit(1)
                time.sleep(0.05)
        self.hook(kind, value, tb)


class _WorkerInit:
    def __init__(
        self, seed: int, epoch: int, rank: int, ignore_signals: Sequence[int] = (), parent_pid: Optional[int] = None
    ):
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.ignore_signals = tuple(int(s) for s in ignore_signals)
        self.parent_pid = os.getpid() if parent_pid is None else int(parent_pid)

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.parent_pid)
        # A scheduler signals the whole process group; torch's worker handler would kill the
        # worker (and with it the step). The main process handles the stop and ends its workers.
        for num in self.ignore_signals:
            signal.signal(num, signal.SIG_IGN)
        _seed_worker(self.seed, self.epoch, self.rank, worker_id)


def make_loader(
    samples: SampleSet,
    batches: EpochBatches,
    collate: Callable,
    num_workers: int,
    prefetch_factor: int,
    pin_memory: bool,
    seed: int,
    rank: int,
    ignore_signals: Sequence[int] = (),
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``batches`` (one epoch, from its start batch).

    ``collate`` is wrapped in :class:`SafeCollate` (it yields :class:`LoadedBatch` items, see the module
    docstring). ``ignore_signals``: signal numbers the worker processes ignore (the trainer's stop
    signals). End an iterator over it with :func:`close_loader_iter`.
    """
    # The loader draws its workers' base seed from ``generator``; a private one keeps the global
    # torch RNG untouched, so its state does not depend on how many loaders a resumed run made.
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence([seed, batches.epoch, rank, 0x10AD]).generate_state(1)[0]))
    kw = {}
    if num_workers > 0:
        kw = dict(
            prefetch_factor=prefetch_factor, worker_init_fn=_WorkerInit(seed, batches.epoch, rank, ignore_signals)
        )
    return torch.utils.data.DataLoader(
        samples,
        batch_sampler=batches,
        collate_fn=SafeCollate(collate),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=gen,
        **kw,
    )


def close_loader_iter(it, kill: bool = False, timeout: float = 5.0) -> str:
    """End a DataLoader iterator's workers now, leaving no process behind.

    ``kill=True`` (after an error): SIGKILL the workers first, without waiting for them to finish
    what they read. Otherwise they are asked to exit (torch's own shutdown) and killed only if they
    have not within ``timeout`` seconds. Workers ignore the stop signals (SIGTERM among them), so
    torch's ``terminate()`` alone would leave them running and Python's exit would wait for them
    forever. Returns, without ``kill``, the workers that died of something else before they were
    asked to exit or while they did (:func:`dead_workers`' words; "" when none).
    """
    if it is None:
        return ""
    workers = list(getattr(it, "_workers", ()))
    if kill and workers:
        stop_worker_watch(it)  # first: these deaths are ours, not a failure to report
        for w in workers:
            _kill(w.pid)
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - a queue broken by a killed worker; the kill below still runs
            pass
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(timeout=max(0.0, deadline - time.monotonic()))
    # before the kill below: these deaths are not ours (nor a SIGTERM from torch's shutdown)
    died = "" if kill else dead_workers(it, ignore=(-signal.SIGTERM,))
    for w in workers:
        if w.is_alive():
            _kill(w.pid)
            w.join(timeout=timeout)
    return died


class EpochLoader:
    """One epoch's DataLoader on one rank, with the views of batch N+1 built on the device during
    step N (:func:`pixpro_of.data.prefetch.prefetch_views`), and its workers checked at each batch:
    torch's SIGCHLD handler would raise a worker's death anywhere in the main thread (inside a
    checkpoint write, inside logging, which swallows it), so it is turned off. ``who``: the
    failures' prefix (``"rank R: "``)."""

    def __init__(self, who: str = ""):
        self.who = who
        self.it = None  # the DataLoader's iterator: its workers
        self.batches: Optional[Iterator] = None
        self.ahead = None  # the views prefetcher over ``it`` (data.decode_on=device)

    def open(
        self, loader: torch.utils.data.DataLoader, views, device: torch.device, channels_last: bool, epoch: int
    ) -> None:
        self.it = iter(loader)
        stop_worker_watch(self.it)
        from pixpro_of.data.prefetch import prefetch_views  # views of batch N+1 built during step N

        self.batches = prefetch_views(self.it, views, device, channels_last, epoch)
        self.ahead = self.batches if self.batches is not self.it else None

    def check_workers(self, when: str) -> None:
        """Fail with one line if a worker died (``when``: where that was found)."""
        dead = dead_workers(self.it)
        if dead:
            raise TrainingFailure(f"{self.who}{dead} ({when})")

    def next_batch(self, doing: str, epoch: int) -> Optional[LoadedBatch]:
        """The next batch, or None at the end of the epoch."""
        self.check_workers(f"found before {doing}")
        try:
            return next(self.batches)
        except StopIteration:
            # A worker killed after it had read its share lost nothing, but whatever killed it
            # (the OOM killer) will strike again: the rule stays one, a killed worker ends the job.
            self.check_workers(f"found at the end of epoch {epoch}")
            return None

    def close(self, kill: bool, check: bool = False) -> None:
        """End the workers (at once with ``kill``, after an error), leaving no process behind.
        ``check`` (at an epoch's end): fail with one line if a worker died while they ended, which
        :meth:`check_workers` just before could not see yet."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            ahead.close(wait=not kill)
        it, self.it, self.batches = self.it, None, None
        died = close_loader_iter(it, kill=kill)
        if check and died:
            raise TrainingFailure(f"{self.who}{died} (found when the epoch's workers ended)")


def _kill(pid: Optional[int]) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
