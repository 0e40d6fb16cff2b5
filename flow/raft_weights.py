"""RAFT checkpoints: official princeton-vl layout <-> torchvision's ``raft_small`` / ``raft_large``."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from plumbing.errors import UserError

PathLike = Union[str, os.PathLike]

_ENC = {"fnet": "feature_encoder", "cnet": "context_encoder"}
_ENC_INV = {v: k for k, v in _ENC.items()}
_MOTION = {
    "convc1": "convcorr1.0",
    "convc2": "convcorr2.0",
    "convf1": "convflow1.0",
    "convf2": "convflow2.0",
    "conv": "conv.0",
}
_MOTION_INV = {v: k for k, v in _MOTION.items()}


def _convs_per_block(small: bool) -> int:
    return 3 if small else 2


def _official_key_to_torchvision(key: str, small: bool) -> Union[str, Tuple[str, str]]:
    """Map one official key (without ``module.``) to a torchvision key.

    Returns the torchvision key, or ``("alias", key_it_must_equal)`` for the duplicated
    downsample norm, or raises KeyError for a key that has no place in the model.
    """
    n = _convs_per_block(small)
    m = re.fullmatch(r"(fnet|cnet)\.(conv1|norm1|conv2)\.(\w+)", key)
    if m:
        enc, part, leaf = m.groups()
        target = {"conv1": "convnormrelu.0", "norm1": "convnormrelu.1", "conv2": "conv"}[part]
        return f"{_ENC[enc]}.{target}.{leaf}"
    m = re.fullmatch(r"(fnet|cnet)\.(layer\d+\.\d+)\.(conv|norm)(\d)\.(\w+)", key)
    if m:
        enc, block, kind, idx, leaf = m.groups()
        idx = int(idx)
        if 1 <= idx <= n:
            return f"{_ENC[enc]}.{block}.convnormrelu{idx}.{0 if kind == 'conv' else 1}.{leaf}"
        if kind == "norm" and idx == n + 1:
            return ("alias", f"{_ENC[enc]}.{block}.downsample.1.{leaf}")
        raise KeyError(key)
    m = re.fullmatch(r"(fnet|cnet)\.(layer\d+\.\d+)\.downsample\.([01])\.(\w+)", key)
    if m:
        enc, block, i, leaf = m.groups()
        return f"{_ENC[enc]}.{block}.downsample.{i}.{leaf}"
    m = re.fullmatch(r"update_block\.encoder\.(convc1|convc2|convf1|convf2|conv)\.(\w+)", key)
    if m:
        return f"update_block.motion_encoder.{_MOTION[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"update_block\.gru\.conv([zrq])([12]?)\.(\w+)", key)
    if m:
        gate, which, leaf = m.groups()
        if small != (which == ""):
            raise KeyError(key)
        return f"update_block.recurrent_block.convgru{which or '1'}.conv{gate}.{leaf}"
    m = re.fullmatch(r"update_block\.flow_head\.(conv[12])\.(\w+)", key)
    if m:
        return key
    m = re.fullmatch(r"update_block\.mask\.([02])\.(\w+)", key)
    if m and not small:
        return f"mask_predictor.{'convrelu.0' if m.group(1) == '0' else 'conv'}.{m.group(2)}"
    raise KeyError(key)


def official_to_torchvision(
    state: Mapping[str, torch.Tensor], small: bool, source: str = "checkpoint", origins: Optional[Dict[str, str]] = None
) -> "OrderedDict[str, torch.Tensor]":
    """Convert an official RAFT state dict (keys with or without ``module.``) to torchvision keys.

    Raises UserError for an unknown key, or for a downsample-norm alias that differs from
    ``downsample.1`` (which would mean the file was edited or is not a RAFT checkpoint).
    Completeness against the model is checked by :func:`load_raft_state`. ``origins``, if given,
    receives torchvision key -> source key (for error messages).
    """
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    aliases: Dict[str, Tuple[str, torch.Tensor]] = {}
    for key, value in state.items():
        bare = key[len("module.") :] if key.startswith("module.") else key
        try:
            target = _official_key_to_torchvision(bare, small)
        except KeyError:
            raise UserError(
                f"{source}: key {key!r} is not part of the official {'raft-small' if small else 'raft-large'} layout"
            ) from None
        if isinstance(target, tuple):
            aliases[target[1]] = (key, value)
            continue
        if target in out:
            raise UserError(f"{source}: key {key!r} maps to {target!r}, which is already filled")
        out[target] = value
        if origins is not None:
            origins[target] = key
    for target, (key, value) in aliases.items():
        if target not in out:
            raise UserError(f"{source}: key {key!r} has no matching downsample.1 entry")
        if out[target].shape != value.shape or not torch.equal(out[target], value):
            raise UserError(f"{source}: key {key!r} should equal its downsample norm {target!r}")
    return out


def torchvision_to_official(
    state: Mapping[str, torch.Tensor], small: bool, prefix: str = "module."
) -> "OrderedDict[str, torch.Tensor]":
    """Inverse of :func:`official_to_torchvision`: write torchvision weights in the official layout.

    Includes the official model's duplicated downsample-norm entries (``normN`` next to
    ``downsample.1``) where they carry tensors (raft-large's BatchNorm context encoder), and the
    ``module.`` prefix of a ``DataParallel`` checkpoint. Used to test the loader and to run the
    official code on the same weights.
    """
    n = _convs_per_block(small)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        m = re.fullmatch(r"(feature_encoder|context_encoder)\.(convnormrelu\.[01]|conv)\.(\w+)", key)
        if m:
            enc, part, leaf = m.groups()
            o = {"convnormrelu.0": "conv1", "convnormrelu.1": "norm1", "conv": "conv2"}[part]
            out[f"{prefix}{_ENC_INV[enc]}.{o}.{leaf}"] = value
            continue
        m = re.fullmatch(r"(feature_encoder|context_encoder)\.(layer\d+\.\d+)\.convnormrelu(\d)\.([01])\.(\w+)", key)
        if m:
            enc, block, idx, i, leaf = m.groups()
            out[f"{prefix}{_ENC_INV[enc]}.{block}.{'conv' if i == '0' else 'norm'}{idx}.{leaf}"] = value
            continue
        m = re.fullmatch(r"(feature_encoder|context_encoder)\.(layer\d+\.\d+)\.downsample\.([01])\.(\w+)", key)
        if m:
            enc, block, i, leaf = m.groups()
            if i == "1":
                out[f"{prefix}{_ENC_INV[enc]}.{block}.norm{n + 1}.{leaf}"] = value
            out[f"{prefix}{_ENC_INV[enc]}.{block}.downsample.{i}.{leaf}"] = value
            continue
        m = re.fullmatch(
            r"update_block\.motion_encoder\.(convcorr1\.0|convcorr2\.0|convflow1\.0|convflow2\.0|conv\.0)\.(\w+)", key
        )
        if m:
            out[f"{prefix}update_block.encoder.{_MOTION_INV[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"update_block\.recurrent_block\.convgru([12])\.conv([zrq])\.(\w+)", key)
        if m:
            which, gate, leaf = m.groups()
            out[f"{prefix}update_block.gru.conv{gate}{'' if small else which}.{leaf}"] = value
            continue
        m = re.fullmatch(r"update_block\.flow_head\.(conv[12])\.(\w+)", key)
        if m:
            out[f"{prefix}{key}"] = value
            continue
        m = re.fullmatch(r"mask_predictor\.(convrelu\.0|conv)\.(\w+)", key)
        if m:
            out[f"{prefix}update_block.mask.{'0' if m.group(1) == 'convrelu.0' else '2'}.{m.group(2)}"] = value
            continue
        raise ValueError(f"torchvision RAFT key {key!r} has no official counterpart")
    return out


def is_official_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys follow the official layout (``module.fnet…`` or ``fnet…``)."""
    keys = list(state.keys())
    return any(k.startswith("module.") or k.startswith("fnet.") or k.startswith("cnet.") for k in keys)


def read_checkpoint(path: PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Load a state dict from a local ``.pth`` file (CPU, tensors only). UserError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # several exception types for damaged or foreign files
        raise UserError(
            f"{path}: cannot load weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a RAFT state dict (expected a mapping of tensors)")
    return OrderedDict(obj)


def guess_variant(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``"raft-small"``, ``"raft-large"`` or None, from tell-tale keys of either layout."""
    keys = {k[len("module.") :] if k.startswith("module.") else k for k in state}
    if any(
        k.startswith(
            (
                "mask_predictor.",
                "update_block.mask.",
                "update_block.gru.convz1.",
                "update_block.recurrent_block.convgru2.",
            )
        )
        for k in keys
    ):
        return "raft-large"
    if any(
        k.startswith(("update_block.gru.convz.", "fnet.layer1.0.conv3.", "feature_encoder.layer1.0.convnormrelu3."))
        for k in keys
    ):
        return "raft-small"
    return None


def load_raft_state(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], small: bool, source: str = "checkpoint"
) -> str:
    """Load ``state`` (official or torchvision layout) into a torchvision RAFT, strictly.

    Every source key must be consumed, every model key filled, every shape equal.
    Returns the detected layout, ``"official"`` or ``"torchvision"``.
    """
    name = "raft-small" if small else "raft-large"
    layout = "official" if is_official_layout(state) else "torchvision"
    variant = guess_variant(state)
    hint = f" (this is a {variant} checkpoint)" if variant is not None and variant != name else ""
    if hint:
        raise UserError(f"{source}: {layout}-layout weights for {variant}, but the model is {name}")
    origins: Dict[str, str] = {}
    tv_state = official_to_torchvision(state, small, source, origins) if layout == "official" else OrderedDict(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tv_state]
    unexpected = [k for k in tv_state if k not in expected]
    if unexpected:
        first = origins.get(unexpected[0], unexpected[0])
        raise UserError(f"{source}: {len(unexpected)} key(s) are not part of {name}, first {first!r} ({layout} layout)")
    if missing:
        raise UserError(f"{source}: {len(missing)} {name} weight(s) missing, first {missing[0]!r} ({layout} layout)")
    for k, v in expected.items():
        if tuple(tv_state[k].shape) != tuple(v.shape):
            raise UserError(
                f"{source}: {origins.get(k, k)!r} has shape {tuple(tv_state[k].shape)}, "
                f"{name} needs {tuple(v.shape)} ({layout} layout)"
            )
    model.load_state_dict(tv_state, strict=True)
    return layout
