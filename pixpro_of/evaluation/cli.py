"""``python -m pixpro_of eval TASK ...``: downstream evaluations, loaded lazily."""
from __future__ import annotations

from typing import Sequence

from plumbing.cli import run_subcommands

TASKS = {
    "flow": ("pixpro_of.evaluation.flow_accuracy", "Flow EPE (adjacent and chained) and FB-mask precision/recall on the synthetic world"),
    "seg": ("pixpro_of.evaluation.seg", "Frozen backbone + DeepLabV3 head or linear probe on Cityscapes; mIoU"),
}


def main(argv: Sequence[str]) -> int:
    return run_subcommands("pixpro_of eval", TASKS, argv)
