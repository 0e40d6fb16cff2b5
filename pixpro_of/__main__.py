"""``python -m pixpro_of COMMAND``: every user-facing pixpro_of command (a lazy click group)."""

import sys

from plumbing.cli import group, run

# ``viz`` is a group of its own (``viz pairs``); its commands load lazily like the others.
VIZ = group(
    "viz",
    {"pairs": ("pixpro_of.viz_pairs", "Draw the positive cells between a sample's two views")},
    help="Pictures of what the method sees.",
    epilog="Example: python -m pixpro_of viz pairs --synthetic 2 --frames 3 --out pairs.png",
)

# command -> (module whose ``command`` is the click command, one-line help). Modules load lazily.
COMMANDS = {
    "convert": (
        "pixpro_of.transfer.convert",
        "Export a checkpoint's online encoder to detectron2 (.pkl) or torchvision (.pth)",
    ),
    "eval": (
        "pixpro_of.evaluation.cli",
        "Downstream evaluation: 'eval seg' (Cityscapes mIoU), 'eval flow' (flow accuracy)",
    ),
    "demo": ("pixpro_of.demo", "The main job on the synthetic world, end to end (make demo)"),
    "reproduce": ("pixpro_of.reproduction.cli", "The mini-reproduction on the synthetic world (make reproduce)"),
    "smoke": (
        "pixpro_of.smoke.cli",
        "The self-check of a cluster set-up (every rank of launcher submit --smoke); --np N: Horovod/MPI",
    ),
    "synth": ("synth.cli", "Render the synthetic driving world (also 'python -m synth')"),
    "train": ("pixpro_of.train.cli", "Pretrain PixPro(+flow): python -m pixpro_of train --config FILE [key=value ...]"),
    "viz": VIZ,
}

command = group(
    "pixpro_of",
    COMMANDS,
    help="PixPro + optical flow pretraining: train, convert, evaluate, demo.",
    epilog="Example: python -m pixpro_of train --config pixpro_k6 --run-dir runs/k6 optim.base_lr=0.5; "
    "'python -m pixpro_of COMMAND --help' shows a command's options.",
)


def main(argv=None) -> int:
    return run(command, argv, "pixpro_of")


if __name__ == "__main__":
    sys.exit(main())
