"""Where a shard's datasets lie in the file: the byte offsets tests flip to inject corruption."""

from __future__ import annotations

import os
from typing import Optional

import h5py

from hdf5_tools import schema


def file_offset(h5_path, video: str, dataset: str, index: Optional[int] = None) -> int:
    """Byte offset in the file of a video's contiguous dataset (or of chunk ``index`` of a chunked one)."""
    with h5py.File(os.fspath(h5_path), "r") as h5:
        ds = h5[schema.VIDEOS][video][dataset]
        if index is None:
            return int(ds.id.get_offset())
        return int(ds.id.get_chunk_info_by_coord((int(index), 0, 0, 0)).byte_offset)
