"""``python -m pixpro_of COMMAND``: every user-facing pixpro_of command."""
import sys

from plumbing.cli import run_subcommands

# command -> (module with main(argv), one-line help). Modules load lazily.
COMMANDS = {
    "convert": ("pixpro_of.transfer.convert", "Export a checkpoint's online encoder to detectron2 (.pkl) or torchvision (.pth)"),
    "eval": ("pixpro_of.evaluation.cli", "Downstream evaluation: 'eval seg' (frozen backbone, DeepLabV3 or linear probe, Cityscapes mIoU)"),
    "demo": ("pixpro_of.demo", "The main job on the synthetic world, end to end (make demo)"),
    "reproduce": ("pixpro_of.reproduce", "The mini-reproduction on the synthetic world (make reproduce)"),
    "smoke": ("pixpro_of.smoke", "2-rank Horovod/MPI smoke check of the distributed stack"),
    "synth": ("synth.cli", "Render the synthetic driving world (videos, frames, GT flow, Cityscapes layout)"),
    "train": ("pixpro_of.train.cli", "Pretrain PixPro(+flow): python -m pixpro_of train --config FILE [key=value ...]"),
    "viz": ("pixpro_of.viz_pairs", "Pictures: 'viz pairs' draws positive cells between two views"),
}


def main(argv=None) -> int:
    return run_subcommands("pixpro_of", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
