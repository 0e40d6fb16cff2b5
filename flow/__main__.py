"""``python -m flow COMMAND``: flow computation and pictures."""
import sys

from pixpro_of.cli_util import run_subcommands

COMMANDS: dict = {
    "compute": ("flow.compute", "Forward and backward flow for every adjacent pair, into the shards (mpirun, resumable)"),
    "viz": ("flow.viz", "PNGs of flows, occlusion masks and composite flows over k frames"),
    "evaluate": ("flow.evaluate", "EPE (adjacent and chained) and FB-mask precision/recall on the synthetic world"),
}


def main(argv=None) -> int:
    return run_subcommands("python -m flow", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
