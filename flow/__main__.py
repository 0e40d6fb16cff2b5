"""``python -m flow COMMAND``: flow computation and pictures."""
import sys

from pixpro_of.cli_util import run_subcommands

COMMANDS: dict = {}


def main(argv=None) -> int:
    return run_subcommands("python -m flow", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
