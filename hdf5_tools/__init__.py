"""Per-node HDF5 shards of video frames and optical flows: pack, verify, info, stage.

- :mod:`hdf5_tools.schema`: the shard format (the only module that knows dataset names and the
  schema version) and its read/write API (``open_shard``, ``list_videos``, ``read_frame_jpeg``,
  ``read_flows``, ``write_flow_pair``, ``flow_pair_present``).
- :mod:`hdf5_tools.reader`: ``ShardReader``, the fast read-only access training uses (``os.pread``).
- :mod:`hdf5_tools.manifest`: ``manifest.json`` beside the shards, node sets (``shards_for_node``).
- :mod:`hdf5_tools.sources`: what ``pack`` reads (frame folders, ``.mov`` videos, ``synth:``) and
  ``--flows`` (seed ``.pth`` or ``.flo``).
- Commands (``hdf5_tools COMMAND``): :mod:`~hdf5_tools.pack`, :mod:`~hdf5_tools.verify` (with the
  problem scan, ``iter_problems``), :mod:`~hdf5_tools.info`, :mod:`~hdf5_tools.stage`.
- The training-side reader is :mod:`pixpro_of.data` (``ShardClipDataset``, ``ClipSampler``).
"""
