"""What one rank reads: its node set and its share of the clips, the steps of an epoch (the same on
every node, :func:`pixpro_of.train.cadence.equal_steps`), the sample set, and each epoch's
DataLoader from a start batch (:mod:`pixpro_of.train.data`)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch.utils.data

from pixpro_of.config import TrainConfig
from pixpro_of.train import cadence
from pixpro_of.train.data import EpochBatches, SampleSet, make_loader
from plumbing.errors import UserError

log = logging.getLogger("pixpro_of.train")


class RankData:
    """This rank's data under ``backend``, from ``source`` (a :class:`~pixpro_of.train.components.ClipSource`)
    with the sample builder and collate of ``parts`` (:class:`~pixpro_of.train.components.Components`)."""

    def __init__(self, cfg: TrainConfig, backend, source, positives, views, parts):
        be = backend
        self.cfg, self.backend, self.collate = cfg, backend, parts.collate
        self.split = cadence.data_split(source.node_sets, be.rank, be.world_size, be.local_rank, be.local_size)
        self.clips = source.open(
            self.split.node_index,
            self.split.num_nodes,
            all_frames=positives.reads_frames,
            decode=views.decodes_in_worker,
        )
        if cfg.data.batch_size % be.world_size:
            raise UserError(f"data.batch_size={cfg.data.batch_size} is not divisible by the {be.world_size} ranks")
        self.rank_batch = cfg.data.batch_size // be.world_size
        self.steps_per_epoch = self._equal_node_steps()
        substitutes = cfg.data.bad_sample_budget if cfg.data.on_bad_sample == "skip" else 0
        self.samples = SampleSet(
            self.clips,
            parts.sample_builder(cfg, positives),
            cfg.run.seed,
            self.split.node_index,
            substitutes=substitutes,
        )

    def _equal_node_steps(self) -> int:
        """Steps per epoch: this rank's, or with node sets the smallest node's (every rank agrees)."""
        be, split, num_videos = self.backend, self.split, self.clips.num_videos
        steps = cadence.steps_per_epoch(num_videos, split.sampler_world, self.rank_batch)
        videos, node = num_videos, split.node_index
        if split.num_nodes > 1:
            mine = [0.0] * (2 * be.world_size)
            mine[2 * be.rank], mine[2 * be.rank + 1] = steps, videos
            every = be.allreduce_values(mine, op="sum")
            per_rank = list(zip(every[0::2], every[1::2], strict=True))
            equal = cadence.equal_steps(per_rank, be.local_size)
            if equal.differ and be.is_main:
                log.info(
                    "node sets differ: %s videos on nodes 0..%d; every node takes %d steps per epoch (node %d's)",
                    cadence.node_videos(per_rank, be.local_size),
                    split.num_nodes - 1,
                    equal.steps,
                    equal.node,
                )
            steps, videos, node = equal.steps, equal.videos, equal.node
        if steps < 1:
            where = f" on node {node}" if split.num_nodes > 1 else ""
            raise UserError(
                f"data.batch_size={self.cfg.data.batch_size} needs at least {self.rank_batch} videos "
                f"per rank but the shards hold {videos} videos{where} for {split.sampler_world} "
                f"rank(s); lower the batch size or add data"
            )
        return steps

    def loader(self, epoch: int, start_batch: int, ignore_signals: Sequence[int] = ()) -> torch.utils.data.DataLoader:
        """The DataLoader of ``epoch`` from batch ``start_batch`` (the sampler's order, whole batches);
        ``ignore_signals``: the stop signals, which the workers ignore."""
        from pixpro_of.data.sampler import ClipSampler

        split, d = self.split, self.cfg.data
        order = ClipSampler(
            self.clips, self.cfg.run.seed, epoch, rank=split.sampler_rank, world_size=split.sampler_world
        ).items()
        batches = EpochBatches(
            order[: self.steps_per_epoch * self.rank_batch],
            epoch,
            self.rank_batch,
            start_batch=start_batch,
            sampler_rank=split.sampler_rank,
            sampler_world=split.sampler_world,
        )
        pin_memory = self.backend.device.type == "cuda"
        return make_loader(
            self.samples,
            batches,
            self.collate,
            d.num_workers,
            d.prefetch_factor,
            pin_memory,
            self.cfg.run.seed,
            self.backend.rank,
            ignore_signals=ignore_signals,
        )
