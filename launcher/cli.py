"""``launcher COMMAND``: render (dry run), submit, status, cancel, logs, resume, list."""
import sys

from pixpro_of.cli_util import run_subcommands

COMMANDS: dict = {}


def main(argv=None) -> int:
    return run_subcommands("launcher", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
