"""``python -m synth``: render the synthetic driving world to disk (the same command as ``pixpro_of synth``)."""

import sys

from plumbing.cli import run


def main(argv=None) -> int:
    from synth.cli import command

    return run(command, argv, "python -m synth")


if __name__ == "__main__":
    sys.exit(main())
