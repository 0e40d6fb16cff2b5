"""The training configuration, one :class:`TrainConfig` of typed sections: ``schema`` (every key with
its default, doc and checks; ``fields`` is how a key is declared), ``loader`` (presets, ``base:``
overlays, ``key=value`` overrides), ``resume`` (which changes a resumed run accepts), ``dump`` (JSON).
Callers import from here; nothing in the package imports torch or numpy.
"""

from pixpro_of.config.dump import dump_json
from pixpro_of.config.fields import need
from pixpro_of.config.loader import (
    BASE_KEY,
    PRESET_PACKAGE,
    config_from_dict,
    list_presets,
    load_config,
    resolve_config_path,
)
from pixpro_of.config.resume import RESUMABLE_CHANGES, changed_keys, check_resume_compatible
from pixpro_of.config.schema import (
    ARCHS,
    FLOW_RESOLUTIONS,
    LOSS_NORMS,
    MASK_MODES,
    POSITIVE_RULES,
    POSITIVES_MODES,
    CheckpointConfig,
    DataConfig,
    DistConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    PositiveConfig,
    RunConfig,
    SampleConfig,
    StopConfig,
    SynthDataConfig,
    TrainConfig,
    validate,
)

__all__ = [
    "ARCHS",
    "BASE_KEY",
    "FLOW_RESOLUTIONS",
    "LOSS_NORMS",
    "MASK_MODES",
    "POSITIVE_RULES",
    "POSITIVES_MODES",
    "PRESET_PACKAGE",
    "RESUMABLE_CHANGES",
    "CheckpointConfig",
    "DataConfig",
    "DistConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "PositiveConfig",
    "RunConfig",
    "SampleConfig",
    "StopConfig",
    "SynthDataConfig",
    "TrainConfig",
    "changed_keys",
    "check_resume_compatible",
    "config_from_dict",
    "dump_json",
    "list_presets",
    "load_config",
    "need",
    "resolve_config_path",
    "validate",
]
