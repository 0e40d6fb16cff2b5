"""The trainer's counting rules as pure functions: how ranks split the data, how many steps an
epoch and the run take (node sets equalised to the smallest), and when a checkpoint is written.
The trainer gathers the inputs (collectives, clocks); these only turn numbers into numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple


@dataclass(frozen=True)
class DataSplit:
    """Which clips a rank reads: node ``node_index`` of ``num_nodes`` node sets, and its place
    ``sampler_rank`` of ``sampler_world`` in that node set's clip order."""

    node_index: int
    num_nodes: int
    sampler_rank: int
    sampler_world: int


def data_split(node_sets: bool, rank: int, world_size: int, local_rank: int, local_size: int) -> DataSplit:
    """With node sets one node reads its node's shards and its ranks split them; otherwise every
    rank splits the one clip set."""
    if node_sets:
        return DataSplit(rank // local_size, max(world_size // local_size, 1), local_rank, local_size)
    return DataSplit(0, 1, rank, world_size)


def steps_per_epoch(num_videos: int, sampler_world: int, rank_batch: int) -> int:
    """Whole batches of ``rank_batch`` clips in one rank's share of ``num_videos``."""
    return (num_videos // sampler_world) // rank_batch


@dataclass(frozen=True)
class NodeSteps:
    """The steps per epoch every rank takes, from the node set with the fewest (``node``, holding
    ``videos`` videos); ``differ``: the node sets did not all give the same count."""

    steps: int
    videos: int
    node: int
    differ: bool


def equal_steps(per_rank: Sequence[Tuple[float, float]], local_size: int) -> NodeSteps:
    """``per_rank``: each rank's (steps per epoch, videos of its node set), in rank order.

    Node sets may hold different numbers of videos (pack balances frames, not videos): every rank
    takes the fewest steps of any node, or the ranks of a smaller node set would end their epochs
    and the run early while the others wait for them forever."""
    least = min(range(len(per_rank)), key=lambda r: per_rank[r][0])  # the first rank with the fewest
    steps = [int(s) for s, _ in per_rank]
    return NodeSteps(steps[least], int(per_rank[least][1]), least // local_size, min(steps) != max(steps))


def node_videos(per_rank: Sequence[Tuple[float, float]], local_size: int) -> str:
    """``"6/8"``: the videos of each node set (from each node's first rank)."""
    return "/".join(str(int(videos)) for _, videos in per_rank[::local_size])


def end_step(epochs: int, steps_per_epoch: int, max_steps: int) -> int:
    """The last step of the run: all epochs, or ``max_steps`` when that is set (> 0) and fewer."""
    total = epochs * steps_per_epoch
    return min(total, max_steps) if max_steps > 0 else total


def minutes_passed(now: float, last_checkpoint: float, every_minutes: float) -> bool:
    """Whether ``checkpoint.every_minutes`` (0: off) have passed since the last checkpoint (seconds,
    one monotonic clock)."""
    return every_minutes > 0 and now - last_checkpoint >= 60.0 * every_minutes


def checkpoint_after(
    step: int, epochs_done: int, epoch_end: bool, ck, minutes_due: bool, stopping: bool
) -> Tuple[bool, bool]:
    """``(write, milestone)`` after step ``step`` under ``ck`` (``cfg.checkpoint``). A milestone (the
    end of an epoch in ``ck.keep_epochs``) is always written; the other cadences (``every_steps``,
    ``every_epochs``, ``every_minutes`` as ``minutes_due``) are left to the stop's own checkpoint
    when the run is ``stopping``."""
    milestone = epoch_end and epochs_done in ck.keep_epochs
    due = (
        (bool(ck.every_steps) and step % ck.every_steps == 0)
        or minutes_due
        or (epoch_end and bool(ck.every_epochs) and epochs_done % ck.every_epochs == 0)
    )
    return milestone or (due and not stopping), milestone
