"""The embedded default data: the synthetic world packed into ``RUN_DIR/data`` for training.

Used when ``data.shards`` is empty and ``data.synthetic`` is true. ``hdf5_tools pack`` renders
``data.synth.videos`` videos of ``data.synth.frames`` frames at ``width``×``height`` with their
exact flows into one node set; the pack is resumable, so a killed first job simply finishes it.
"""

from __future__ import annotations

from pathlib import Path

from pixpro_of.config import TrainConfig
from plumbing.errors import UserError


def synth_spec(cfg: TrainConfig) -> str:
    s = cfg.data.synth
    return f"synth:videos={s.videos},frames={s.frames},size={s.width}x{s.height},seed={s.seed}"


def synthetic_manifest(run_dir: Path) -> Path:
    return Path(run_dir) / "data" / "manifest.json"


def ensure_synthetic_shards(cfg: TrainConfig, run_dir: Path) -> Path:
    """Pack the synthetic world into ``run_dir/data`` unless done already; returns the manifest path."""
    from hdf5_tools.pack import PackConfig, pack

    manifest = synthetic_manifest(run_dir)
    if manifest.exists():
        return manifest
    try:
        pack(PackConfig(src=synth_spec(cfg), out=str(manifest.parent), nodes=1, progress=False))
    except UserError as exc:  # name the setting
        raise UserError(f"data.synth: {exc}") from None
    return manifest


def data_entries(cfg: TrainConfig, run_dir: Path) -> list:
    """``data.shards``, or the synthetic manifest when it is empty and ``data.synthetic`` is on."""
    if cfg.data.shards:
        return list(cfg.data.shards)
    if not cfg.data.synthetic:
        raise UserError(
            "data.shards is empty: give shard files, folders or a manifest.json "
            "(data.shards=[PATH,...]), or set data.synthetic=true for the synthetic world"
        )
    return [str(synthetic_manifest(run_dir))]
