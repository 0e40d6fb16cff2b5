"""The trainer's data feed: shard resolution, per-sample RNG, resumable epoch batches.

Every sample is a pure function of ``(seed, epoch, node, position)``: the clip comes from the
:class:`~pixpro_of.data.sampler.ClipSampler` order, and the augmentation RNG is
``np.random.default_rng([seed, epoch, node, position])`` where ``position`` is the clip's index in
the node's (world-size-independent for one node) epoch order. So batches do not depend on the
number of DataLoader workers, and a run resumed at batch ``b`` of an epoch sees exactly the
batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import glob
import os
import random
import signal
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data

from pixpro_of.errors import UserError

SHARD_SUFFIXES = (".h5", ".hdf5")


def resolve_shards(entries: Sequence[str], node_index: int = 0, num_nodes: int = 1) -> List[str]:
    """Shard file paths from ``data.shards`` entries.

    An entry is a shard file, a directory (its ``manifest.json`` if present, else its ``*.h5``
    files), a glob pattern, a ``manifest.json`` written by ``hdf5_tools pack`` (the shards of node
    ``node_index`` of ``num_nodes``), or a ``.txt`` list with one path a line (relative to the list).
    """
    out: List[str] = []
    for entry in entries:
        p = Path(os.path.expanduser(entry))
        if any(c in entry for c in "*?["):
            hits = sorted(glob.glob(os.path.expanduser(entry)))
            if not hits:
                raise UserError(f"data.shards: pattern {entry!r} matches no file")
            out += hits
        elif p.is_dir():
            if (p / "manifest.json").is_file():
                out += _from_manifest(p / "manifest.json", node_index, num_nodes)
            else:
                hits = sorted(str(q) for q in p.iterdir() if q.suffix in SHARD_SUFFIXES)
                if not hits:
                    raise UserError(f"data.shards: directory {entry} holds no .h5 shard and no manifest.json")
                out += hits
        elif not p.is_file():
            raise UserError(f"data.shards: {entry} does not exist")
        elif p.suffix == ".json":
            out += _from_manifest(p, node_index, num_nodes)
        elif p.suffix == ".txt":
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            for ln in lines:
                if ln and not ln.startswith("#"):
                    q = Path(ln) if os.path.isabs(ln) else p.parent / ln
                    if not q.is_file():
                        raise UserError(f"data.shards: {p} lists a missing shard {q}")
                    out.append(str(q))
        elif p.suffix in SHARD_SUFFIXES:
            out.append(str(p))
        else:
            raise UserError(f"data.shards: {entry} is not a shard (.h5), manifest (.json) or list (.txt)")
    if not out:
        raise UserError("data.shards: no shard files found")
    return out


def _from_manifest(path: Path, node_index: int, num_nodes: int) -> List[str]:
    from hdf5_tools.errors import UserError as ShardError
    from hdf5_tools.manifest import shards_for_node

    try:
        return shards_for_node(str(path), node_index, num_nodes)
    except ShardError as exc:
        raise UserError(f"data.shards: {exc}") from None


def sample_rng(seed: int, epoch: int, node: int, position: int) -> np.random.Generator:
    """The augmentation RNG of one sample (see the module docstring)."""
    return np.random.default_rng([int(seed), int(epoch), int(node), int(position)])


class SampleSet(torch.utils.data.Dataset):
    """Maps a key ``(epoch, position, video_index, t)`` to a built sample dict.

    ``clips[(video_index, t)]`` gives the clip dict; ``build(clip, rng)`` augments it.
    """

    def __init__(self, clips, build: Callable, seed: int, node: int = 0):
        self.clips = clips
        self.build = build
        self.seed = int(seed)
        self.node = int(node)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: Tuple[int, int, int, int]) -> dict:
        epoch, position, video_index, t = key
        clip = self.clips[(int(video_index), int(t))]
        return self.build(clip, sample_rng(self.seed, epoch, self.node, position))


class EpochBatches(torch.utils.data.Sampler):
    """Batches of sample keys for one rank and one epoch, starting at batch ``start_batch``.

    ``order`` is the rank's ``(video_index, t)`` list for the epoch (from ClipSampler, before
    any start offset); item ``i`` of it has node position ``i * sampler_world + sampler_rank``.
    Incomplete last batches are dropped (as the seed's ``drop_last=True``).
    """

    def __init__(self, order: Sequence[Tuple[int, int]], epoch: int, batch_size: int, start_batch: int = 0,
                 sampler_rank: int = 0, sampler_world: int = 1):
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
    # global RNGs from repeating the same numbers in every worker (seed-system.md §4, bug 9).
    s = np.random.SeedSequence([seed, epoch, rank, worker_id]).generate_state(2)
    np.random.seed(int(s[0]))
    random.seed(int(s[1]))
    torch.manual_seed(int(s[0]) << 32 | int(s[1]))


class _WorkerInit:
    def __init__(self, seed: int, epoch: int, rank: int, ignore_signals: Sequence[int] = ()):
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.ignore_signals = tuple(int(s) for s in ignore_signals)

    def __call__(self, worker_id: int) -> None:
        # A scheduler signals the whole process group; torch's worker handler would kill the
        # worker (and with it the step). The main process handles the stop and ends its workers.
        for num in self.ignore_signals:
            signal.signal(num, signal.SIG_IGN)
        _seed_worker(self.seed, self.epoch, self.rank, worker_id)


def make_loader(samples: SampleSet, batches: EpochBatches, collate: Callable, num_workers: int,
                prefetch_factor: int, pin_memory: bool, seed: int, rank: int,
                ignore_signals: Sequence[int] = ()) -> torch.utils.data.DataLoader:
    """A DataLoader over ``batches`` (one epoch, from its start batch).

    ``ignore_signals``: signal numbers the worker processes ignore (the trainer's stop signals).
    """
    # The loader draws its workers' base seed from ``generator``; a private one keeps the global
    # torch RNG untouched, so its state does not depend on how many loaders a resumed run made.
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence([seed, batches.epoch, rank, 0x10AD]).generate_state(1)[0]))
    kw = {}
    if num_workers > 0:
        kw = dict(prefetch_factor=prefetch_factor,
                  worker_init_fn=_WorkerInit(seed, batches.epoch, rank, ignore_signals))
    return torch.utils.data.DataLoader(samples, batch_sampler=batches, collate_fn=collate,
                                       num_workers=num_workers, pin_memory=pin_memory, generator=gen, **kw)
