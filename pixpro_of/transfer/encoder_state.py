"""Find the online encoder in a checkpoint and return it under torchvision ResNet key names."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

from plumbing.errors import UserError
from plumbing.runs import RunLayout

# arch -> (block type, blocks per layer1..layer4), torchvision's definitions.
ARCH_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ENCODER_PREFIX = "encoder."


@dataclass
class EncoderState:
    """An online encoder's weights. ``state``: torchvision key -> CPU tensor (no ``fc``)."""

    state: Dict[str, "object"]
    arch: str
    source: str  # the file it came from
    kind: str  # "pixpro_of" | "seed" | "torchvision"


@lru_cache(maxsize=None)
def _trunk_shapes(arch: str) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    import torch
    import torchvision

    with torch.device("meta"):
        net = getattr(torchvision.models, arch)(weights=None)
    return tuple((k, tuple(v.shape)) for k, v in net.state_dict().items() if not k.startswith("fc."))


def trunk_keys(arch: str) -> List[str]:
    """Keys of ``torchvision.models.<arch>().state_dict()`` without ``fc.*``, in module order."""
    if arch not in ARCH_LAYOUTS:
        raise UserError(f"unknown arch {arch!r} (choose from {', '.join(ARCH_LAYOUTS)})")
    return [k for k, _ in _trunk_shapes(arch)]


def strip_wrappers(key: str) -> str:
    """Remove stacked ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile)."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def infer_arch(state: Mapping[str, object], source: str = "state dict") -> str:
    """The torchvision ResNet whose trunk has exactly these blocks (from the key names)."""
    bottleneck = "layer1.0.conv3.weight" in state
    counts = []
    for layer in range(1, 5):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf"layer{layer}\.(\d+)\.", k)] if m}
        counts.append(max(idx) + 1 if idx else 0)
    kind = "bottleneck" if bottleneck else "basic"
    for arch, layout in ARCH_LAYOUTS.items():
        if layout == (kind, tuple(counts)):
            return arch
    raise UserError(
        f"{source}: encoder keys match no ResNet ({kind} blocks {counts} per layer; known: {', '.join(ARCH_LAYOUTS)})"
    )


def read_torch_file(path: Path) -> object:
    """``torch.load`` on CPU with weights only; UserError (one line) when it is not a checkpoint."""
    import torch

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {first[:200]})") from None


def read_run_directory(path: Path) -> Tuple[object, Path]:
    """The newest valid checkpoint of a run directory (or its ``checkpoints/`` folder), and its file.

    A ``pixpro_of`` run is read through the trainer's :class:`CheckpointStore` (manifest and sha256
    verified, falling back past damaged checkpoints); a seed output folder through its ``current.pth``.
    """
    from pixpro_of.train.checkpoint import CheckpointStore

    checkpoints = RunLayout(path).checkpoints
    ckdir = checkpoints if checkpoints.is_dir() else path
    store = CheckpointStore(ckdir)
    if store.entries():
        found = store.load_latest()
        if found is not None:
            return found[0], found[1].path
    if (path / "current.pth").is_file():  # the seed's output_dir
        return read_torch_file(path / "current.pth"), path / "current.pth"
    raise UserError(f"{path}: a directory without checkpoints (no checkpoints/step_*.json, no current.pth)")


def _model_dict(obj: object, source: str) -> Tuple[Mapping[str, object], bool]:
    """The mapping that holds the weights, and whether the file carried a seed ``opt`` entry."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{source}: not a checkpoint (a {type(obj).__name__}, expected a dict)")
    seed = "opt" in obj
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner, seed
    return obj, seed


def extract_encoder(obj: object, source: str) -> Tuple[Dict[str, object], str]:
    """Online-encoder weights (torchvision names) out of a loaded checkpoint, and its kind."""
    import torch

    model, seed = _model_dict(obj, source)
    keys = {strip_wrappers(str(k)): v for k, v in model.items()}
    enc = {k[len(ENCODER_PREFIX) :]: v for k, v in keys.items() if k.startswith(ENCODER_PREFIX)}
    kind = "seed" if seed else "pixpro_of"
    if not enc:
        if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
            enc = {k: v for k, v in keys.items() if not k.startswith("fc.")}
            kind = "torchvision"
        else:
            sample = ", ".join(sorted(keys)[:3]) or "no keys"
            raise UserError(
                f"{source}: no online-encoder weights (no 'encoder.*' or torchvision ResNet keys; "
                f"found {sample}{', ...' if len(keys) > 3 else ''})"
            )
    bad = [k for k, v in enc.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{source}: encoder entry {bad[0]!r} is not a tensor")
    return enc, kind


def complete_trunk_state(enc: Dict[str, object], arch: str, source: str) -> Dict[str, object]:
    """Check ``enc`` against torchvision's ``arch`` trunk (keys and shapes); fill missing counters.

    Returns a new dict in torchvision's key order with contiguous CPU tensors.
    """
    import torch

    shapes = dict(_trunk_shapes(arch))
    out = {}
    for key, shape in shapes.items():
        if key not in enc:
            if key.endswith("num_batches_tracked"):
                out[key] = torch.tensor(0, dtype=torch.long)
                continue
            raise UserError(f"{source}: encoder weight {key!r} missing for {arch}")
        v = enc[key].detach().cpu().contiguous()
        if tuple(v.shape) != shape:
            raise UserError(f"{source}: encoder weight {key!r} has shape {tuple(v.shape)}, {arch} needs {shape}")
        out[key] = v
    extra = sorted(set(enc) - set(shapes))
    if extra:
        raise UserError(f"{source}: unexpected encoder entry {extra[0]!r} for {arch}")
    return out


def load_encoder_state(path) -> EncoderState:
    """Read the online encoder from a checkpoint file or run directory (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        obj, src = read_run_directory(path)
    else:
        obj, src = read_torch_file(path), path
    enc, kind = extract_encoder(obj, str(src))
    arch = infer_arch(enc, str(src))
    return EncoderState(complete_trunk_state(enc, arch, str(src)), arch, str(src), kind)
