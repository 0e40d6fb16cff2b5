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

PRESET_PACKAGE = "pixpro_of.configs"


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


@dataclass
class SynthDataConfig:
    """The synthetic world packed into ``RUN_DIR/data`` when ``data.shards`` is empty."""
    videos: int = 16
    frames: int = 10
    width: int = 128
    height: int = 64
    seed: int = 0


@dataclass
class DataConfig:
    """Where clips come from and how samples are built.

    ``shards``: HDF5 shard files, directories of ``*.h5`` files, glob patterns, or one
    manifest (``manifest.json`` from ``hdf5_tools pack``, or ``.txt`` with one path a line).
    When ``shards`` is empty and ``synthetic`` is true, the synthetic world (``synth``) is packed
    into ``RUN_DIR/data`` and used. ``k`` is the clip length in frames including both
    ends (1 = same-frame baseline). ``batch_size`` is the *global* batch over all ranks.
    ``image_size`` is the side of each square view in pixels; ``crop_scale``/``crop_ratio`` the
    RandomResizedCrop ranges. ``pos_ratio`` is the positive threshold in units of the larger bin
    diagonal; ``positive_rule`` ``pixel`` (the seed fork) or ``normalized`` (original PixPro, for
    image datasets). ``mask`` is the occlusion mask (``seed`` FB check, ``unflow`` or ``none``)
    with constants ``alpha1``/``alpha2`` (seed §2.6); ``flow_resolution`` ``coarse`` (1/8 grid) or
    ``full`` (seed-exact, slower). These are passed to ``pixpro_of.data.pipeline.SampleConfig``.

    ``positives_on``: ``worker`` (each sample's positives in the DataLoader workers) or ``device``
    (the batch's positives on the training device, from the stored flows the workers pass on).
    ``flow_source``: ``shards`` (the flows stored in the shards) or ``raft`` (estimated on the fly
    on the training device from every frame of the clip, the seed's no-storage mode:
    ``raft_model`` with the local checkpoint ``raft_weights``, ``raft_iters`` refinement steps,
    ``raft_amp`` precision, ``raft_chunk`` frame pairs per RAFT call; see
    ``pixpro_of.data.online_flow``).

    ``on_bad_sample``: what a clip that cannot be read (corrupt JPEG or flow chunk, truncated
    shard) does: ``fail`` ends training with one line naming the shard, video and frame; ``skip``
    logs it, counts it in the metrics and trains on a substitute clip drawn from the sample's
    seed, failing once more than ``bad_sample_budget`` samples were skipped in one epoch (over all
    ranks). A shard that cannot be opened at all always fails.
    """
    shards: List[str] = field(default_factory=list)
    synthetic: bool = True
    k: int = 6
    image_size: int = 224
    batch_size: int = 1024
    num_workers: int = 4
    prefetch_factor: int = 2
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    pos_ratio: float = 0.7
    positive_rule: str = "pixel"
    mask: str = "seed"
    alpha1: float = 0.01
    alpha2: float = 0.5
    flow_resolution: str = "coarse"
    positives_on: str = "worker"
    flow_source: str = "shards"
    raft_model: str = "raft-small"
    raft_weights: str = ""
    raft_iters: int = 12
    raft_amp: str = "fp32"
    raft_chunk: int = 32
    on_bad_sample: str = "fail"
    bad_sample_budget: int = 100
    synth: SynthDataConfig = field(default_factory=SynthDataConfig)


@dataclass
class ModelSection:
    """Model settings; passed to ``pixpro_of.model.pixpro.ModelConfig`` field by field.

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


@dataclass
class OptimConfig:
    """LARS and the learning-rate schedule (seed §2.2).

    lr = ``base_lr`` × global batch / 256; linear warm-up over ``warmup_epochs`` from
    lr/``warmup_multiplier``, then per-iteration cosine to ``eta_min``.
    ``precision``: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler).
    """
    base_lr: float = 1.0
    weight_decay: float = 1e-5
    momentum: float = 0.9
    warmup_epochs: int = 5
    warmup_multiplier: float = 100.0
    eta_min: float = 1e-6
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False


@dataclass
class DistConfig:
    """Which backend runs the ranks (``single`` here; ``horovod``/``ddp`` come later)."""
    backend: str = "single"
    sync_bn: bool = True


@dataclass
class CheckpointConfig:
    """Checkpoint cadence and retention.

    A checkpoint is written every ``every_steps`` steps (0 = off) and at the end of every
    ``every_epochs``-th epoch (0 = off), plus whenever training stops. ``keep`` newest are kept;
    checkpoints written at the end of an epoch listed in ``keep_epochs`` are never deleted.
    """
    every_steps: int = 0
    every_epochs: int = 1
    keep: int = 3
    keep_epochs: List[int] = field(default_factory=lambda: [10, 100, 200, 500, 1000, 1500, 2000])


@dataclass
class StopConfig:
    """When to stop early with a checkpoint (exit code 75).

    ``deadline``: a clock time (``HH:MM``, ISO 8601, ``@unix``) or a duration from start
    (``90m``, ``1h30m``, ``3600``). Training stops when the time left is below
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
    model: ModelSection = field(default_factory=ModelSection)
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


ARCHS = ("resnet18", "resnet34", "resnet50")
CHOICES = {
    "run.device": ("auto", "cpu", "cuda"),
    "model.arch": ARCHS,
    "data.positive_rule": ("pixel", "normalized"),
    "data.mask": ("seed", "unflow", "none"),
    "data.flow_resolution": ("coarse", "full"),
    "data.flow_source": ("shards", "raft"),
    "data.positives_on": ("worker", "device"),
    "data.on_bad_sample": ("fail", "skip"),
    "data.raft_model": ("raft-small", "raft-large"),
    "data.raft_amp": ("fp32", "bf16", "fp16"),
    "model.loss_norm": ("seed", "pixel"),
    "optim.precision": ("fp32", "bf16", "fp16"),
    "dist.backend": ("single", "horovod", "ddp"),
    "log.wandb": ("off", "offline", "online"),
}
# Keys that may change between a run's jobs without changing the trained weights (shard paths
# change when a job stages them to node-local storage; a different data size is caught by the
# steps-per-epoch check on resume).
RESUMABLE_CHANGES = (
    "stop.", "log.", "data.shards", "data.num_workers", "data.prefetch_factor", "checkpoint.keep",
    "run.threads", "run.device", "run.max_steps", "data.raft_chunk", "data.raft_weights",
    "data.positives_on", "data.on_bad_sample", "data.bad_sample_budget",
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
    """A config file path, or the name of a shipped preset (``cpu_small`` → its YAML)."""
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
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file or preset at ``path``, then ``key=value`` overrides; validated."""
    import yaml

    cfg = TrainConfig()
    if path is not None:
        file = resolve_config_path(path)
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            at = f" line {line + 1}" if line is not None else ""
            raise UserError(f"config {file}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        _merge(cfg, data, f"config {file}")
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
    """Range and choice checks; raises UserError naming the first bad key."""
    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise UserError(f"config: {key} {what} (got {value!r})")

    for key, value in _float_values(cfg):
        need(math.isfinite(value), key, "must be a finite number", value)
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        need(value in choices, key, f"must be one of {', '.join(choices)}", value)
    r, d, m, o, c, s, lg = cfg.run, cfg.data, cfg.model, cfg.optim, cfg.checkpoint, cfg.stop, cfg.log
    need(r.epochs >= 1, "run.epochs", "must be >= 1", r.epochs)
    need(r.max_steps >= 0, "run.max_steps", "must be >= 0", r.max_steps)
    need(r.threads >= 0, "run.threads", "must be >= 0", r.threads)
    need(d.k >= 1, "data.k", "must be >= 1", d.k)
    need(d.image_size >= 32 and d.image_size % 32 == 0, "data.image_size", "must be a multiple of 32, at least 32", d.image_size)
    need(d.batch_size >= 1, "data.batch_size", "must be >= 1", d.batch_size)
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0", d.num_workers)
    need(d.prefetch_factor >= 1, "data.prefetch_factor", "must be >= 1", d.prefetch_factor)
    need(0 < d.pos_ratio, "data.pos_ratio", "must be > 0", d.pos_ratio)
    need(d.alpha1 >= 0, "data.alpha1", "must be >= 0", d.alpha1)
    need(d.alpha2 >= 0, "data.alpha2", "must be >= 0", d.alpha2)
    need(len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, "data.crop_scale",
         "must be [min, max] with 0 < min <= max <= 1", d.crop_scale)
    need(len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1], "data.crop_ratio",
         "must be [min, max] with 0 < min <= max", d.crop_ratio)
    sy = d.synth
    need(d.raft_iters >= 1, "data.raft_iters", "must be >= 1", d.raft_iters)
    need(d.raft_chunk >= 1, "data.raft_chunk", "must be >= 1", d.raft_chunk)
    need(d.flow_source != "raft" or d.k == 1 or bool(d.raft_weights), "data.raft_weights",
         "must name a RAFT checkpoint (a local .pth file) when data.flow_source=raft", d.raft_weights)
    need(d.bad_sample_budget >= 0, "data.bad_sample_budget", "must be >= 0", d.bad_sample_budget)
    if d.synthetic and not d.shards:  # the synthetic world is used only without shards
        need(sy.videos >= 1, "data.synth.videos", "must be >= 1", sy.videos)
        need(sy.frames >= d.k, "data.synth.frames", f"must be >= data.k = {d.k}", sy.frames)
        need(sy.width >= 16 and sy.height >= 16, "data.synth.width/height", "must be >= 16", (sy.width, sy.height))
    need(m.proj_hidden >= 1, "model.proj_hidden", "must be >= 1", m.proj_hidden)
    need(m.proj_dim >= 1, "model.proj_dim", "must be >= 1", m.proj_dim)
    need(m.ppm_layers in (0, 1, 2), "model.ppm_layers", "must be 0, 1 or 2", m.ppm_layers)
    need(m.ppm_gamma > 0, "model.ppm_gamma", "must be > 0", m.ppm_gamma)
    need(0 <= m.momentum_base <= 1, "model.momentum_base", "must be in [0, 1]", m.momentum_base)
    need(o.base_lr > 0, "optim.base_lr", "must be > 0", o.base_lr)
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    need(0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)", o.momentum)
    need(0 <= o.warmup_epochs < r.epochs, "optim.warmup_epochs", f"must be in [0, run.epochs = {r.epochs})", o.warmup_epochs)
    need(o.warmup_multiplier >= 1, "optim.warmup_multiplier", "must be >= 1", o.warmup_multiplier)
    need(0 <= o.eta_min < cfg.lr(), "optim.eta_min", f"must be in [0, peak lr = {cfg.lr():g})", o.eta_min)
    need(c.every_steps >= 0, "checkpoint.every_steps", "must be >= 0", c.every_steps)
    need(c.every_epochs >= 0, "checkpoint.every_epochs", "must be >= 0", c.every_epochs)
    need(c.keep >= 1, "checkpoint.keep", "must be >= 1", c.keep)
    need(s.margin_s >= 0, "stop.margin_s", "must be >= 0", s.margin_s)
    need(s.safety_factor >= 1, "stop.safety_factor", "must be >= 1", s.safety_factor)
    need(lg.every_steps >= 1, "log.every_steps", "must be >= 1", lg.every_steps)
    import signal as _signal

    for name in s.signals:
        need(isinstance(getattr(_signal, name.upper(), None), _signal.Signals)
             and name.upper() not in ("SIGKILL", "SIGSTOP"), "stop.signals", "must name catchable signals like SIGUSR2", name)
    if s.deadline is not None:
        from pixpro_of.train.stopping import parse_deadline

        parse_deadline(s.deadline, now=0.0)  # raises UserError when malformed


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
