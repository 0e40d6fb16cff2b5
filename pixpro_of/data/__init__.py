"""Training data: the clip reader over HDF5 shards and its deterministic sampler.

- :class:`ShardClipDataset` (``pixpro_of.data.shards``): item = the ARCHITECTURE.md clip dict.
- :class:`ClipSampler` (``pixpro_of.data.sampler``): ``(video_index, t)`` per rank, from (seed, epoch).
- :func:`node_shard_paths`: the shards one node reads, from the pack manifest.
"""

from pixpro_of.data.sampler import ClipSampler, node_shard_paths
from pixpro_of.data.shards import ShardClipDataset, decode_jpeg

__all__ = ["ShardClipDataset", "ClipSampler", "node_shard_paths", "decode_jpeg"]
