"""Deterministic clip order: one clip per video per epoch, resumable mid-epoch."""

from __future__ import annotations

import zlib
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch.utils.data

from plumbing.errors import UserError

_SALT_ORDER = 0x0F1E2D3C
_SALT_START = 0x5A17E5


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF


class ClipSampler(torch.utils.data.Sampler):
    """Yields ``(video_index, t)`` for one rank; see the module docstring for the exact rules."""

    def __init__(
        self,
        dataset,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        num_samples: Optional[int] = None,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} outside [0, world_size={world_size})")
        self.dataset = dataset
        self.seed, self.epoch = int(seed), int(epoch)
        self.rank, self.world_size = int(rank), int(world_size)
        n = dataset.num_videos
        per_rank = n // world_size if num_samples is None else int(num_samples)
        if per_rank < 0 or (per_rank > 0 and n == 0):
            raise UserError(f"cannot draw {per_rank} clips per rank from {n} videos")
        self.per_rank = per_rank
        if not 0 <= int(start) <= per_rank:
            raise UserError(f"sampler start {start} outside [0, {per_rank}] for rank {rank}")
        self.start = int(start)

    def _order(self) -> np.ndarray:
        n = self.dataset.num_videos
        rng = np.random.default_rng([self.seed, self.epoch, _SALT_ORDER])
        perm = rng.permutation(n)
        mine = perm[self.rank :: self.world_size]
        rounds = 1
        while mine.shape[0] < self.per_rank:  # num_samples larger than one pass: continue
            extra = np.random.default_rng([self.seed, self.epoch, _SALT_ORDER, rounds]).permutation(n)
            mine = np.concatenate([mine, extra[self.rank :: self.world_size]])
            rounds += 1
        return mine[: self.per_rank]

    def clip_start(self, video_index: int, repeat: int = 0) -> int:
        """The start frame t drawn for ``video_index`` in this epoch (uniform in [0, T - k])."""
        n_frames = self.dataset.num_frames(video_index)
        k = self.dataset.k
        if n_frames < k:
            raise UserError(f"video {self.dataset.video_name(video_index)!r} has {n_frames} frames, fewer than k={k}")
        key = _name_key(self.dataset.video_name(video_index))
        rng = np.random.default_rng([self.seed, self.epoch, _SALT_START, key, repeat])
        return int(rng.integers(0, n_frames - k + 1))

    def items(self) -> List[Tuple[int, int]]:
        """This rank's whole list for the epoch, before ``start`` is applied."""
        order = self._order()
        out, seen = [], {}
        for v in order.tolist():
            r = seen.get(v, 0)
            seen[v] = r + 1
            out.append((v, self.clip_start(v, r)))
        return out

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return iter(self.items()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def node_shard_paths(manifest, node_index: int, num_nodes: Optional[int] = None, root=None) -> List[str]:
    """The shard paths node ``node_index`` (of ``num_nodes``) reads; see hdf5_tools.manifest."""
    from hdf5_tools.manifest import shards_for_node

    return shards_for_node(manifest, node_index, num_nodes, root)
