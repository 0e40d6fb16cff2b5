"""``python -m pixpro_of COMMAND``: every user-facing pixpro_of command."""
import sys

from pixpro_of.cli_util import run_subcommands

# command -> (module with main(argv), one-line help). Modules load lazily.
COMMANDS = {
    "demo": ("pixpro_of.demo", "The main job on the synthetic world, end to end (make demo)"),
    "smoke": ("pixpro_of.smoke", "2-rank Horovod/MPI smoke check of the distributed stack"),
}


def main(argv=None) -> int:
    return run_subcommands("pixpro_of", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
