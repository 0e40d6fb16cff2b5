"""``hdf5_tools COMMAND``: pack, verify, inspect and stage shards."""
import sys

from pixpro_of.cli_util import run_subcommands

COMMANDS: dict = {}


def main(argv=None) -> int:
    return run_subcommands("hdf5_tools", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
