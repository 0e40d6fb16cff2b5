"""The training configuration: typed sections, YAML presets and ``key=value`` overrides.

A config is one :class:`TrainConfig` built from the dataclass defaults (the seed's values,
docs/original-system.md §2), then a YAML file (a path or the name of a preset shipped in
``pixpro_of.configs``), then command-line overrides such as ``optim.base_lr=0.5``.
Every value is type-checked and range-checked; a mistake raises :class:`UserError` with a
one-line message naming the key (and the file or override it came from).

This module imports neither torch nor numpy, so ``--help`` and config checks are fast.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from plumbing.errors import UserError
from plumbing.parse import checked, parse_deadline, signal_name

PRESET_PACKAGE = "pixpro_of.configs"
BASE_KEY = "base"  # a config file's ``base: NAME`` names the file or preset it overlays

ARCHS = ("resnet18", "resnet34", "resnet50")
LOSS_NORMS = ("seed", "pixel")
MASK_MODES = ("seed", "unflow", "none")
POSITIVE_RULES = ("pixel", "normalized")
FLOW_RESOLUTIONS = ("coarse", "full")


def need(ok: bool, key: str, what: str, value: Any) -> None:
    """The one shape of a config error: ``config: KEY WHAT (got VALUE)``, a :class:`UserError`."""
    if not ok:
        raise UserError(f"config: {key} {what} (got {value!r})")


def _need_choice(value: Any, key: str, choices: Sequence[str]) -> None:
    need(value in choices, key, f"must be one of {', '.join(choices)}", value)


@dataclass
class RunConfig:
    """Global run settings.

    ``epochs`` counts video epochs (one clip per video, seed §2.3). ``max_steps`` > 0 ends
    training after that many optimizer steps in total (the schedules still span ``epochs``).
    ``device``: ``auto`` (cuda when available), ``cpu`` or ``cuda``. ``deterministic`` turns on
    ``torch.use_deterministic_algorithms`` so a resumed run is bit-identical to an uninterrupted one.
    ``threads`` > 0 sets ``torch.set_num_threads``.
    """
    seed: int = 0
    epochs: int = 2000
    max_steps: int = 0
    device: str = "auto"
    deterministic: bool = False
    threads: int = 0

    def validate(self) -> None:
        _need_choice(self.device, "run.device", ("auto", "cpu", "cuda"))
        need(self.epochs >= 1, "run.epochs", "must be >= 1", self.epochs)
        need(self.max_steps >= 0, "run.max_steps", "must be >= 0", self.max_steps)
        need(self.threads >= 0, "run.threads", "must be >= 0", self.threads)


@dataclass
class SynthDataConfig:
    """The synthetic world packed into ``RUN_DIR/data`` when ``data.shards`` is empty."""
    videos: int = 16
    frames: int = 10
    width: int = 128
    height: int = 64
    seed: int = 0


@dataclass
class PositiveConfig:
    """How positive pairs are found (docs/original-system.md §2.4–2.7); the ``data.*`` keys of these
    names, read by :func:`pixpro_of.positives.compute_positives`.

    ``pos_ratio`` is the positive threshold in units of the larger bin diagonal; ``positive_rule``
    ``pixel`` (the seed fork) or ``normalized`` (original PixPro, for image datasets). ``mask`` is
    the occlusion mask (``seed`` FB check, ``unflow`` or ``none``) with constants
    ``alpha1``/``alpha2`` (seed §2.6; ``unflow``: ``alpha2`` in px² at full resolution);
    ``flow_resolution`` ``coarse`` (chain and mask on the 1/8 grid) or ``full`` (seed-exact, ~64×
    slower).
    """
    pos_ratio: float = 0.7
    positive_rule: str = "pixel"
    mask: str = "seed"
    alpha1: float = 0.01
    alpha2: float = 0.5
    flow_resolution: str = "coarse"

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad key."""
        _need_choice(self.positive_rule, "data.positive_rule", POSITIVE_RULES)
        _need_choice(self.mask, "data.mask", MASK_MODES)
        _need_choice(self.flow_resolution, "data.flow_resolution", FLOW_RESOLUTIONS)
        need(0 < self.pos_ratio, "data.pos_ratio", "must be > 0", self.pos_ratio)
        need(self.alpha1 >= 0, "data.alpha1", "must be >= 0", self.alpha1)
        need(self.alpha2 >= 0, "data.alpha2", "must be >= 0", self.alpha2)


@dataclass
class SampleConfig(PositiveConfig):
    """How a sample is built from a clip (:class:`pixpro_of.data.pipeline.SampleBuilder`): the
    positive settings and the views. ``image_size`` is the side of each square view in pixels;
    ``crop_scale``/``crop_ratio`` the RandomResizedCrop ranges (area, aspect)."""
    image_size: int = 224
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])

    def validate(self) -> None:
        super().validate()
        need(self.image_size >= 32, "data.image_size", "must be at least 32", self.image_size)
        need(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "data.crop_scale",
             "must be [min, max] with 0 < min <= max <= 1", self.crop_scale)
        need(len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1], "data.crop_ratio",
             "must be [min, max] with 0 < min <= max", self.crop_ratio)


POSITIVES_MODES = ("worker", "stored", "raft")


@dataclass
class DataConfig(SampleConfig):
    """Where clips come from and how samples are built (the sample settings: :class:`SampleConfig`).

    ``shards``: HDF5 shard files, directories of ``*.h5`` files, glob patterns, or one
    manifest (``manifest.json`` from ``hdf5_tools pack``, or ``.txt`` with one path a line).
    When ``shards`` is empty and ``synthetic`` is true, the synthetic world (``synth``) is packed
    into ``RUN_DIR/data`` and used. ``k`` is the clip length in frames including both
    ends (1 = same-frame baseline). ``batch_size`` is the *global* batch over all ranks.

    ``positives_on``: ``worker`` (each sample's positives in the DataLoader workers) or ``device``
    (the batch's positives on the training device, from the stored flows the workers pass on).
    ``decode_on``: ``worker`` (the DataLoader workers decode the JPEGs and build both views) or
    ``device`` (the workers only read the JPEG bytes and the stored flows and draw the view
    parameters; the training device decodes the batch, ``decode_chunk`` frames at a time, and
    builds the views there: :mod:`pixpro_of.data.device_views`). Not with ``flow_source=raft``.
    ``flow_source``: ``shards`` (the flows stored in the shards), ``none`` (no flow: the positives
    of zero flow and no occlusion mask, from the crop geometry alone, as if the scene did not move;
    the two views still come from frames t and t+k−1, so this is the reproduction's "k frames
    without flow" control; needs ``mask=none``; positives in the workers) or ``raft`` (estimated on the fly
    on the training device from every frame of the clip, the seed's no-storage mode:
    ``raft_model`` with the local checkpoint ``raft_weights``, ``raft_iters`` refinement steps,
    ``raft_amp`` precision, ``raft_chunk`` frame pairs per RAFT call; see
    ``pixpro_of.data.online_flow``). Together they choose one :meth:`positives_mode`.

    ``on_bad_sample``: what a clip that cannot be read (corrupt JPEG or flow chunk, truncated
    shard) does: ``fail`` ends training with one line naming the shard, video and frame; ``skip``
    logs it, counts it in the metrics and trains on a substitute clip drawn from the sample's
    seed, failing once more than ``bad_sample_budget`` samples were skipped in one epoch (over all
    ranks). A shard that cannot be opened at all always fails.
    """
    shards: List[str] = field(default_factory=list)
    synthetic: bool = True
    k: int = 6
    batch_size: int = 1024
    num_workers: int = 4
    prefetch_factor: int = 2
    positives_on: str = "worker"
    decode_on: str = "worker"
    decode_chunk: int = 64
    flow_source: str = "shards"
    raft_model: str = "raft-small"
    raft_weights: str = ""
    raft_iters: int = 12
    raft_amp: str = "fp32"
    raft_chunk: int = 32
    on_bad_sample: str = "fail"
    bad_sample_budget: int = 100
    synth: SynthDataConfig = field(default_factory=SynthDataConfig)

    def positives_mode(self) -> str:
        """Where positives are computed, chosen once from ``k``, ``flow_source`` and
        ``positives_on``: ``worker`` (in the DataLoader workers, from stored flows; always for
        k = 1), ``stored`` (on the training device from the stored flows the workers pass on) or
        ``raft`` (on the training device from flows estimated there from every frame)."""
        if self.k == 1 or self.flow_source == "none":  # no flow: the crop geometry alone, cheap in the workers
            return "worker"
        if self.flow_source != "shards":
            return "raft"
        return "stored" if self.positives_on == "device" else "worker"

    def validate(self) -> None:
        # training also needs whole C5 cells (the sample builder alone takes any side >= 32)
        need(self.image_size >= 32 and self.image_size % 32 == 0, "data.image_size",
             "must be a multiple of 32, at least 32", self.image_size)
        super().validate()
        for key, choices in (("flow_source", ("shards", "none", "raft")), ("positives_on", ("worker", "device")),
                             ("decode_on", ("worker", "device")),
                             ("on_bad_sample", ("fail", "skip")), ("raft_model", ("raft-small", "raft-large")),
                             ("raft_amp", ("fp32", "bf16", "fp16"))):
            _need_choice(getattr(self, key), "data." + key, choices)
        need(self.k >= 1, "data.k", "must be >= 1", self.k)
        need(self.batch_size >= 1, "data.batch_size", "must be >= 1", self.batch_size)
        need(self.num_workers >= 0, "data.num_workers", "must be >= 0", self.num_workers)
        need(self.prefetch_factor >= 1, "data.prefetch_factor", "must be >= 1", self.prefetch_factor)
        need(self.decode_chunk >= 1, "data.decode_chunk", "must be >= 1", self.decode_chunk)
        need(self.decode_on == "worker" or self.flow_source != "raft" or self.k == 1, "data.decode_on",
             "must be worker when data.flow_source=raft (RAFT needs every frame decoded in the workers)",
             self.decode_on)
        need(self.raft_iters >= 1, "data.raft_iters", "must be >= 1", self.raft_iters)
        need(self.raft_chunk >= 1, "data.raft_chunk", "must be >= 1", self.raft_chunk)
        need(self.flow_source != "raft" or self.k == 1 or bool(self.raft_weights), "data.raft_weights",
             "must name a RAFT checkpoint (a local .pth file) when data.flow_source=raft", self.raft_weights)
        need(self.flow_source != "none" or self.mask == "none", "data.mask",
             "must be none when data.flow_source=none (no flow, so no forward-backward check)", self.mask)
        need(self.bad_sample_budget >= 0, "data.bad_sample_budget", "must be >= 0", self.bad_sample_budget)
        sy = self.synth
        if self.synthetic and not self.shards:  # the synthetic world is used only without shards
            need(sy.videos >= 1, "data.synth.videos", "must be >= 1", sy.videos)
            need(sy.frames >= self.k, "data.synth.frames", f"must be >= data.k = {self.k}", sy.frames)
            need(sy.width >= 16 and sy.height >= 16, "data.synth.width/height", "must be >= 16", (sy.width, sy.height))


@dataclass
class ModelConfig:
    """The model (:class:`pixpro_of.model.pixpro.PixPro`); defaults are the seed's
    (docs/original-system.md §2.1, §2.8).

    ``arch``: resnet18 / resnet34 / resnet50 (torchvision; C5 map 7×7 at 224). ``proj_hidden`` /
    ``proj_dim``: projector widths (``--feature-dim``). ``ppm_layers``: the PPM value transform, 0
    identity, 1 conv1×1, 2 MLP (``--pixpro-transform-layer``). ``ppm_gamma``: similarity exponent
    (``--pixpro-p``). ``momentum_base``: EMA momentum at step 0 (``--pixpro-momentum``).
    ``loss_norm``: ``seed`` (the seed code's mean over all positive pairs of an image) or
    ``pixel`` (per query pixel, paper Eq. 2).
    """
    arch: str = "resnet50"
    proj_hidden: int = 4096
    proj_dim: int = 256
    ppm_layers: int = 1
    ppm_gamma: float = 2.0
    momentum_base: float = 0.99
    loss_norm: str = "seed"

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad key."""
        _need_choice(self.arch, "model.arch", ARCHS)
        _need_choice(self.loss_norm, "model.loss_norm", LOSS_NORMS)
        need(self.proj_hidden >= 1, "model.proj_hidden", "must be >= 1", self.proj_hidden)
        need(self.proj_dim >= 1, "model.proj_dim", "must be >= 1", self.proj_dim)
        need(self.ppm_layers in (0, 1, 2), "model.ppm_layers", "must be 0, 1 or 2", self.ppm_layers)
        need(self.ppm_gamma > 0, "model.ppm_gamma", "must be > 0", self.ppm_gamma)
        need(0 <= self.momentum_base <= 1, "model.momentum_base", "must be in [0, 1]", self.momentum_base)


@dataclass
class OptimConfig:
    """LARS and the learning-rate schedule (seed §2.2).

    lr = ``base_lr`` × global batch / 256; linear warm-up over ``warmup_epochs`` from
    lr/``warmup_multiplier``, then per-iteration cosine to ``eta_min``.
    ``precision``: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler; under
    Horovod with its AMP recipe). ``tf32``: with ``fp32`` on a CUDA GPU (Ampere or newer), run the
    matmuls and convolutions on TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation;
    ``torch.backends.cuda.matmul`` and ``cudnn``); on by default, as the GPU presets train; no
    effect on CPU. Set ``false`` for IEEE fp32 throughout.
    """
    base_lr: float = 1.0
    weight_decay: float = 1e-5
    momentum: float = 0.9
    warmup_epochs: int = 5
    warmup_multiplier: float = 100.0
    eta_min: float = 1e-6
    precision: str = "fp32"
    tf32: bool = True
    channels_last: bool = True
    compile: bool = False


@dataclass
class DistConfig:
    """Which backend runs the ranks: ``single`` (one process), ``horovod`` or ``ddp``
    (``pixpro_of.dist``); ``sync_bn`` synchronises BatchNorm statistics over the ranks.
    ``timeout_minutes``: how long a DDP collective waits for the other ranks before failing
    (longer than the slowest legitimate wait: rank 0 packing data, a slow shared file system).
    The backend must match the launch: a trainer started as several ranks (mpirun, srun,
    torchrun) with ``single`` refuses to start."""
    backend: str = "single"
    sync_bn: bool = True
    timeout_minutes: float = 30.0


@dataclass
class CheckpointConfig:
    """Checkpoint cadence and retention.

    A checkpoint is written every ``every_steps`` steps (0 = off), at the end of every
    ``every_epochs``-th epoch (0 = off), at the first step boundary once ``every_minutes`` have
    passed since the last one (0 = off; rank 0's clock decides for every rank), plus whenever
    training stops. Rank 0 writes from a host copy in a background thread; the ranks train on.
    ``keep`` newest are kept; checkpoints written at the end of an epoch listed in
    ``keep_epochs`` are never deleted.
    """
    every_steps: int = 0
    every_epochs: int = 1
    every_minutes: float = 0.0
    keep: int = 3
    keep_epochs: List[int] = field(default_factory=lambda: [10, 100, 200, 500, 1000, 1500, 2000])


@dataclass
class StopConfig:
    """When to stop early with a checkpoint (exit code 75).

    ``deadline``: a point in time (ISO 8601, ``@unix``, clock time ``T10:30``) or a duration
    from start with a unit (``90m``, ``1h30m``, ``4h``; a bare number or ``HH:MM[:SS]`` is
    refused: plumbing/parse.py). Training stops when the time left is below
    ``safety_factor`` × (step time + checkpoint time) + ``margin_s``. ``signals``: names of the
    signals whose handler requests a stop at the next step boundary (SIGINT too: PBS's ``qsig -s
    INT`` is the one signal a PBS job's login shell survives, and Ctrl-C then checkpoints).
    """
    deadline: Optional[str] = None
    margin_s: float = 30.0
    safety_factor: float = 1.5
    signals: List[str] = field(default_factory=lambda: ["SIGUSR2", "SIGTERM", "SIGINT"])


@dataclass
class LogConfig:
    """Metrics every ``every_steps`` steps to ``metrics.csv`` and TensorBoard (rank 0).

    ``wandb``: ``off``, ``offline`` (files in ``RUN_DIR/wandb``, upload later with ``wandb sync``)
    or ``online``; needs the optional ``wandb`` package.
    """
    every_steps: int = 1
    tensorboard: bool = True
    csv: bool = True
    wandb: str = "off"
    wandb_project: str = "pixpro_of"
    wandb_entity: str = ""


@dataclass
class TrainConfig:
    """The whole training configuration; written to ``RUN_DIR/config.json``."""
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def lr(self) -> float:
        """The peak learning rate: base_lr × global batch / 256."""
        return self.optim.base_lr * self.data.batch_size / 256.0


# Keys that may change between a run's jobs without changing the trained weights (shard paths
# change when a job stages them to node-local storage; a different data size is caught by the
# steps-per-epoch check on resume).
RESUMABLE_CHANGES = (
    "stop.", "log.", "data.shards", "data.num_workers", "data.prefetch_factor", "checkpoint.keep",
    "run.threads", "run.device", "run.max_steps", "data.raft_chunk", "data.raft_weights",
    "data.positives_on", "data.decode_chunk", "data.on_bad_sample", "data.bad_sample_budget",
    "checkpoint.every_minutes", "optim.tf32",  # when to write, and fp32 rounding on tensor cores
    # The backend and world size may change between links of a run (see ARCHITECTURE.md,
    # "Resuming with another world size"); the global batch may not.
    "dist.",
)


# ----------------------------------------------------------------------------- building

def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls, prefix: str = "") -> List[str]:
    keys = []
    for f in dataclasses.fields(cls):
        t = _hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown(key: str, cls, where: str) -> UserError:
    close = difflib.get_close_matches(key, _all_keys(TrainConfig), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"{where}: unknown config key {key!r}{hint}")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise a one-line UserError."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        return _coerce(value, args[0], key, where)
    if origin in (list, List):
        (item_t,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: {key} must be a list (got {value!r})")
        return [_coerce(v, item_t, key, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UserError(f"{where}: {key} must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{where}: {key} must be an integer (got {value!r})")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{where}: {key} must be an integer (got {value!r})") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"{where}: {key} must be a number (got {value!r})")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"{where}: {key} must be a number (got {value!r})") from None
        if not math.isfinite(number):
            raise UserError(f"{where}: {key} must be a finite number (got {value!r})")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{where}: {key} must be a string (got {value!r})")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # programming error


def _merge(obj: Any, data: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Overlay nested mapping ``data`` onto dataclass instance ``obj`` in place."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: section {prefix.rstrip('.') or 'top level'} must be a mapping (got {data!r})")
    hints = _hints(type(obj))
    for name, value in data.items():
        key = prefix + str(name)
        if name not in hints:
            raise _unknown(key, type(obj), where)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            _merge(getattr(obj, name), value, where, key + ".")
        else:
            setattr(obj, name, _coerce(value, tp, key, where))


def _set_key(cfg: TrainConfig, key: str, raw: str, where: str) -> None:
    import yaml

    obj: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        hints = _hints(type(obj))
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            raise _unknown(key, TrainConfig, where)
        obj = getattr(obj, part)
    hints = _hints(type(obj))
    name = parts[-1]
    if name not in hints or dataclasses.is_dataclass(hints[name]):
        raise _unknown(key, TrainConfig, where)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if hints[name] is str and not isinstance(value, str):
        value = raw  # keep strings verbatim, e.g. "1e-3" or "07"
    setattr(obj, name, _coerce(value, hints[name], key, where))


def resolve_config_path(name: str) -> Path:
    """A config file path, or the name of a shipped preset (``cpu_small`` → its YAML; a base such
    as ``_seed_bdd100k`` too)."""
    p = Path(name)
    if p.is_file():
        return p
    if os.sep not in name and not p.suffix:
        import importlib.resources

        preset = importlib.resources.files(PRESET_PACKAGE) / f"{name}.yaml"
        if preset.is_file():
            return Path(str(preset))
        raise UserError(f"--config {name}: no such file or preset (presets: {', '.join(list_presets())})")
    raise UserError(f"--config {name}: no such file")


def list_presets() -> List[str]:
    import importlib.resources

    root = importlib.resources.files(PRESET_PACKAGE)
    # ``_name.yaml`` files are bases the presets overlay (``base: _name``), not runs of their own.
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))


def _read_yaml(file: Path) -> Dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" line {line + 1}" if line is not None else ""
        raise UserError(f"config {file}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, Mapping):
        raise UserError(f"config {file}: section top level must be a mapping (got {data!r})")
    return dict(data)


def _merge_file(cfg: TrainConfig, file: Path, seen: Sequence[Path] = ()) -> None:
    """Overlay the YAML ``file`` onto ``cfg``; its ``base: NAME`` (a preset, or a path relative to
    the file) is merged first, so a preset states only where it differs from its base."""
    data = _read_yaml(file)
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise UserError(f"config {file}: {BASE_KEY} must name a config file or preset (got {base!r})")
        near = file.parent / base
        base_file = near if near.is_file() else resolve_config_path(base)
        if base_file.resolve() in seen or base_file.resolve() == file.resolve():
            raise UserError(f"config {file}: {BASE_KEY} {base!r} includes itself")
        _merge_file(cfg, base_file, tuple(seen) + (file.resolve(),))
    _merge(cfg, data, f"config {file}")


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file or preset at ``path`` (after its ``base:`` chain), then
    ``key=value`` overrides; validated."""
    cfg = TrainConfig()
    if path is not None:
        _merge_file(cfg, resolve_config_path(path))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_key(cfg, key.strip(), raw, f"override {item!r}")
    validate(cfg)
    return cfg


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> TrainConfig:
    """Rebuild a config from ``to_dict()`` output (e.g. ``RUN_DIR/config.json``)."""
    cfg = TrainConfig()
    _merge(cfg, data, where)
    validate(cfg)
    return cfg


def _float_values(obj: Any, prefix: str = ""):
    """``(dotted key, value)`` of every float (and float list item) in a config tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from _float_values(value, key + ".")
        elif isinstance(value, float):
            yield key, value
        elif isinstance(value, list):
            yield from ((key, v) for v in value if isinstance(v, float))


def validate(cfg: TrainConfig) -> None:
    """Range and choice checks; raises UserError naming the first bad key. The component sections
    (``run``, ``data``, ``model``) check themselves; the rest, and what spans sections, here."""
    for key, value in _float_values(cfg):
        need(math.isfinite(value), key, "must be a finite number", value)
    cfg.run.validate()
    cfg.data.validate()
    cfg.model.validate()
    r, o, c, s, lg = cfg.run, cfg.optim, cfg.checkpoint, cfg.stop, cfg.log
    for key, value, choices in (("optim.precision", o.precision, ("fp32", "bf16", "fp16")),
                                ("dist.backend", cfg.dist.backend, ("single", "horovod", "ddp")),
                                ("log.wandb", lg.wandb, ("off", "offline", "online"))):
        _need_choice(value, key, choices)
    need(o.base_lr >= 0, "optim.base_lr", "must be >= 0 (0: the weights never move, only BatchNorm statistics do)",
         o.base_lr)
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    need(0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)", o.momentum)
    need(0 <= o.warmup_epochs < r.epochs, "optim.warmup_epochs", f"must be in [0, run.epochs = {r.epochs})", o.warmup_epochs)
    need(o.warmup_multiplier >= 1, "optim.warmup_multiplier", "must be >= 1", o.warmup_multiplier)
    need(0 <= o.eta_min < cfg.lr() or o.eta_min == cfg.lr() == 0, "optim.eta_min",
         f"must be in [0, peak lr = {cfg.lr():g})" if cfg.lr() > 0 else "must be 0 when optim.base_lr is 0", o.eta_min)
    need(c.every_steps >= 0, "checkpoint.every_steps", "must be >= 0", c.every_steps)
    need(c.every_epochs >= 0, "checkpoint.every_epochs", "must be >= 0", c.every_epochs)
    need(c.keep >= 1, "checkpoint.keep", "must be >= 1", c.keep)
    need(c.every_minutes >= 0, "checkpoint.every_minutes", "must be >= 0 (0 = off)", c.every_minutes)
    need(cfg.dist.timeout_minutes > 0, "dist.timeout_minutes", "must be > 0", cfg.dist.timeout_minutes)
    need(s.margin_s >= 0, "stop.margin_s", "must be >= 0", s.margin_s)
    need(s.safety_factor >= 1, "stop.safety_factor", "must be >= 1", s.safety_factor)
    need(lg.every_steps >= 1, "log.every_steps", "must be >= 1", lg.every_steps)
    for name in s.signals:
        try:
            signal_name(str(name), catchable=True)  # USR2, SIGUSR2, usr2: plumbing.parse's one grammar
        except ValueError as exc:
            need(False, "stop.signals", f"must name catchable signals like SIGUSR2: {exc}", name)
    if s.deadline is not None:
        checked(lambda t: parse_deadline(t, now=0.0), str(s.deadline), "config: stop.deadline")


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two ``to_dict()`` trees."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_keys(a, b, prefix + key + ".")
        elif a != b:
            out.append(prefix + key)
    return out


def check_resume_compatible(saved: Mapping[str, Any], cfg: TrainConfig, where: str) -> None:
    """Refuse to resume a run with a config that would change its trained weights."""
    bad = [k for k in changed_keys(saved, cfg.to_dict()) if not k.startswith(RESUMABLE_CHANGES)]
    if bad:
        shown = ", ".join(f"{k}: {_lookup(saved, k)!r} -> {_lookup(cfg.to_dict(), k)!r}" for k in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(f"{where}: this run was started with a different config ({shown}{more}); "
                        "use a new run directory or the same settings")


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def dump_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
