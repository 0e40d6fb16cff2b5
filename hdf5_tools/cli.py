"""``hdf5_tools COMMAND``: pack, verify, inspect and stage shards."""
import sys

from plumbing.cli import run_subcommands

COMMANDS: dict = {
    "pack": ("hdf5_tools.pack", "Pack frame folders, .mov videos or the synthetic world into per-node shards"),
    "verify": ("hdf5_tools.verify", "Check shards: schema, counts, CRCs (--deep decodes every JPEG)"),
    "info": ("hdf5_tools.info", "Summarise shards or a manifest: videos, frames, flows, bytes, nodes"),
    "flow": ("hdf5_tools.flows", "Forward and backward flow for every adjacent pair, into the shards (mpirun, resumable)"),
    "viz": ("hdf5_tools.viz", "PNGs of a shard clip's flows chained over k frames and its FB masks"),
    "stage": ("hdf5_tools.stage", "Copy one node's shards to node-local storage (one copier per node under mpirun)"),
}


def main(argv=None) -> int:
    return run_subcommands("hdf5_tools", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
