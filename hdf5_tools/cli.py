"""``hdf5_tools COMMAND``: pack, verify, inspect and stage shards (a lazy click group)."""

import sys

from plumbing.cli import group, run

COMMANDS: dict = {
    "pack": ("hdf5_tools.pack", "Pack frame folders, .mov videos or the synthetic world into per-node shards"),
    "verify": ("hdf5_tools.verify", "Check shards: schema, counts, CRCs (--deep decodes every JPEG)"),
    "info": ("hdf5_tools.info", "Summarise shards or a manifest: videos, frames, flows, bytes, nodes"),
    "flow": (
        "hdf5_tools.flows",
        "Forward and backward flow for every adjacent pair, into the shards (mpirun, resumable)",
    ),
    "viz": ("hdf5_tools.viz", "PNGs of a shard clip's flows chained over k frames and its FB masks"),
    "stage": ("hdf5_tools.stage", "Copy one node's shards to node-local storage (one copier per node under mpirun)"),
}

command = group(
    "hdf5_tools",
    COMMANDS,
    help="Pack, verify, inspect and stage HDF5 video shards.",
    epilog="Example: hdf5_tools pack data/synth shards --nodes 2; 'hdf5_tools COMMAND --help' "
    "shows a command's options.",
)


def main(argv=None) -> int:
    return run(command, argv, "hdf5_tools")


if __name__ == "__main__":
    sys.exit(main())
