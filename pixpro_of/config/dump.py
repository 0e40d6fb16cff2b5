"""Writing a config out: the JSON of ``RUN_DIR/config.json`` and ``--print-config`` (sorted keys,
two-space indent), which :func:`pixpro_of.config.config_from_dict` reads back."""

from __future__ import annotations

import json

from pixpro_of.config.schema import TrainConfig


def dump_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
