"""``python -m pixpro_of eval TASK ...``: downstream evaluations (a lazy click group)."""

from __future__ import annotations

from typing import Optional, Sequence

from plumbing.cli import group, run

TASKS = {
    "flow": (
        "pixpro_of.evaluation.flow_accuracy",
        "Flow EPE (adjacent and chained) and FB-mask precision/recall on the synthetic world",
    ),
    "propagate": (
        "pixpro_of.evaluation.propagate",
        "Video label propagation through frozen features on held-out synthetic videos; mIoU per frame distance",
    ),
    "seg": ("pixpro_of.evaluation.seg", "Frozen backbone + DeepLabV3 head or linear probe on Cityscapes; mIoU"),
}

command = group(
    "eval",
    TASKS,
    help="Downstream evaluations: segmentation mIoU, label propagation, flow accuracy.",
    epilog="Example: python -m pixpro_of eval seg --backbone runs/k6 --data data/cityscapes --out eval/k6",
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(command, argv, "pixpro_of eval")
