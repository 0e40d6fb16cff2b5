"""``python -m flow COMMAND`` (console script ``pixpro-flow``): flow pictures (a lazy click group)."""

import sys

from plumbing.cli import group, run

COMMANDS: dict = {
    "viz": ("flow.viz", "PNGs of flows, occlusion masks and composite flows over k frames"),
}

command = group(
    "python -m flow",
    COMMANDS,
    help="Optical-flow tools (computing flows into shards is 'hdf5_tools flow').",
    epilog="Example: python -m flow viz --flo pair.flo --out pics/",
)


def main(argv=None) -> int:
    return run(command, argv, "python -m flow")


if __name__ == "__main__":
    sys.exit(main())
