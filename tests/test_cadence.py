"""The trainer's counting rules (pixpro_of/train/cadence.py), table by table."""

from __future__ import annotations

import pytest

from pixpro_of.config import CheckpointConfig
from pixpro_of.train import cadence
from pixpro_of.train.cadence import DataSplit, NodeSteps


@pytest.mark.parametrize(
    "node_sets, rank, world, local_rank, local_size, split",
    [
        (False, 0, 1, 0, 1, DataSplit(0, 1, 0, 1)),
        (False, 5, 8, 1, 4, DataSplit(0, 1, 5, 8)),  # one clip set: every rank splits it
        (True, 5, 8, 1, 4, DataSplit(1, 2, 1, 4)),  # node sets: rank 5 is node 1's second rank
        (True, 0, 1, 0, 1, DataSplit(0, 1, 0, 1)),
        (True, 2, 3, 0, 1, DataSplit(2, 3, 0, 1)),  # one rank per node
        (True, 0, 2, 0, 4, DataSplit(0, 1, 0, 4)),  # fewer ranks than a node's slots: still one node
    ],
)
def test_data_split(node_sets, rank, world, local_rank, local_size, split):
    assert cadence.data_split(node_sets, rank, world, local_rank, local_size) == split


@pytest.mark.parametrize(
    "videos, sampler_world, rank_batch, steps",
    [
        (64, 1, 8, 8),
        (63, 1, 8, 7),  # whole batches only
        (64, 4, 8, 2),  # 16 videos per rank
        (66, 4, 8, 2),  # 16 per rank: the 2 left over are not read
        (7, 1, 8, 0),  # fewer videos than a batch: no step (the trainer refuses)
        (3, 4, 1, 0),  # fewer videos than ranks
    ],
)
def test_steps_per_epoch(videos, sampler_world, rank_batch, steps):
    assert cadence.steps_per_epoch(videos, sampler_world, rank_batch) == steps


@pytest.mark.parametrize(
    "per_rank, local_size, expected, node_videos",
    [
        ([(6, 6), (8, 8)], 1, NodeSteps(6, 6, 0, True), "6/8"),  # node 0 is the smaller
        ([(8, 8), (6, 6)], 1, NodeSteps(6, 6, 1, True), "8/6"),  # node 1 is
        ([(3, 12), (3, 12), (2, 9), (2, 9)], 2, NodeSteps(2, 9, 1, True), "12/9"),
        ([(4, 8), (4, 8), (4, 9), (4, 9)], 2, NodeSteps(4, 8, 0, False), "8/9"),  # same steps: the first node's
        ([(5, 5)], 1, NodeSteps(5, 5, 0, False), "5"),
        ([(0, 3), (4, 8)], 1, NodeSteps(0, 3, 0, True), "3/8"),  # a node with too few videos wins
    ],
)
def test_equal_steps_takes_the_smallest_node(per_rank, local_size, expected, node_videos):
    assert cadence.equal_steps([(float(s), float(v)) for s, v in per_rank], local_size) == expected
    assert cadence.node_videos(per_rank, local_size) == node_videos


@pytest.mark.parametrize(
    "epochs, steps_per_epoch, max_steps, end",
    [
        (10, 5, 0, 50),
        (10, 5, 12, 12),
        (10, 5, 80, 50),  # max_steps past the epochs: the epochs end the run
        (0, 5, 0, 0),
    ],
)
def test_end_step(epochs, steps_per_epoch, max_steps, end):
    assert cadence.end_step(epochs, steps_per_epoch, max_steps) == end


@pytest.mark.parametrize(
    "now, last, every_minutes, passed",
    [
        (1000.0, 1000.0, 0.0, False),  # off
        (5000.0, 0.0, 0.0, False),
        (1059.9, 1000.0, 1.0, False),
        (1060.0, 1000.0, 1.0, True),
        (1000.001, 1000.0, 0.00001, True),
    ],
)
def test_minutes_passed(now, last, every_minutes, passed):
    assert cadence.minutes_passed(now, last, every_minutes) is passed


CK = dict(every_steps=0, every_epochs=1, keep_epochs=[10, 100])


@pytest.mark.parametrize(
    "step, epochs_done, epoch_end, ck, minutes_due, stopping, decision",
    [
        (7, 0, False, {}, False, False, (False, False)),  # mid-epoch, nothing due
        (8, 1, True, {}, False, False, (True, False)),  # every epoch
        (8, 1, True, {}, False, True, (False, False)),  # ... left to the stop
        (80, 10, True, {}, False, False, (True, True)),  # a kept epoch
        (80, 10, True, {}, False, True, (True, True)),  # written even when stopping
        (80, 10, True, {"keep_epochs": []}, False, False, (True, False)),
        (16, 2, True, {"every_epochs": 2}, False, False, (True, False)),
        (24, 3, True, {"every_epochs": 2}, False, False, (False, False)),
        (24, 3, True, {"every_epochs": 0}, False, False, (False, False)),  # every_epochs off
        (6, 0, False, {"every_steps": 3}, False, False, (True, False)),
        (7, 0, False, {"every_steps": 3}, False, False, (False, False)),
        (7, 0, False, {"every_steps": 3}, False, True, (False, False)),
        (7, 0, False, {}, True, False, (True, False)),  # every_minutes passed
        (7, 0, False, {}, True, True, (False, False)),
    ],
)
def test_checkpoint_after(step, epochs_done, epoch_end, ck, minutes_due, stopping, decision):
    cfg = CheckpointConfig(**{**CK, **ck})
    assert cadence.checkpoint_after(step, epochs_done, epoch_end, cfg, minutes_due, stopping) == decision
