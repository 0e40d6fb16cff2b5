"""``python -m flow COMMAND``: flow computation and pictures."""
import sys

from plumbing.cli import run_subcommands

COMMANDS: dict = {
    "viz": ("flow.viz", "PNGs of flows, occlusion masks and composite flows over k frames"),
}


def main(argv=None) -> int:
    return run_subcommands("python -m flow", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
