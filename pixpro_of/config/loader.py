"""Building a :class:`TrainConfig`: defaults, then a YAML file or shipped preset (after its ``base:``
chain), then dotted ``key=value`` overrides; each value coerced to its field's type, an unknown key
answered with the closest known one, and the result validated. Every mistake is one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from pixpro_of.config.schema import TrainConfig, validate
from plumbing.errors import UserError

PRESET_PACKAGE = "pixpro_of.configs"
BASE_KEY = "base"  # a config file's ``base: NAME`` names the file or preset it overlays


def _hints(cls) -> Dict[str, Any]:
    """The annotated type of each field of ``cls`` (class-level constants such as ``KEY`` are not keys)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _all_keys(cls, prefix: str = "") -> List[str]:
    keys = []
    for name, t in _hints(cls).items():
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys


def _unknown(key: str, where: str) -> UserError:
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
            raise _unknown(key, where)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            _merge(getattr(obj, name), value, where, key + ".")
        else:
            setattr(obj, name, _coerce(value, tp, key, where))


def _set_key(cfg: TrainConfig, key: str, raw: str, where: str) -> None:
    """One dotted override: ``raw`` read as YAML (a string field keeps the text verbatim)."""
    import yaml

    obj: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        hints = _hints(type(obj))
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            raise _unknown(key, where)
        obj = getattr(obj, part)
    hints = _hints(type(obj))
    name = parts[-1]
    if name not in hints or dataclasses.is_dataclass(hints[name]):
        raise _unknown(key, where)
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
