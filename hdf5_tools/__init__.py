"""Per-node HDF5 shards of video frames and optical flows: pack, verify, info, stage."""
