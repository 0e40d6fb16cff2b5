"""Resolve ``--backbone`` into ResNet weights under torchvision key names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from pixpro_of.transfer.encoder_state import (
    ARCH_LAYOUTS,
    complete_trunk_state,
    extract_encoder,
    infer_arch,
    load_encoder_state,
    read_torch_file,
)
from plumbing.errors import UserError


@dataclass
class Backbone:
    arch: str
    state: Dict[str, object]
    description: str  # for scores.json


def resolve_backbone(spec: str, arch: str = "resnet50", seed: int = 0) -> Backbone:
    """Weights for ``spec`` (see the module docstring); UserError for a bad spec or file."""
    if spec == "random":
        import torch

        from pixpro_of.model.encoder import ARCHS, build_encoder

        if arch not in ARCHS:
            raise UserError(f"--arch must be one of {', '.join(ARCHS)} for --backbone random, got {arch!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = build_encoder(arch).state_dict()
        return Backbone(arch, complete_trunk_state(state, arch, "random"), f"random init ({arch}, seed {seed})")
    if spec.startswith("torchvision:"):
        path = Path(spec[len("torchvision:") :])
        obj = read_torch_file(path)
        enc, kind = extract_encoder(obj, str(path))
        if kind != "torchvision":
            raise UserError(
                f"{path}: not a torchvision ResNet state dict (holds '{kind}' encoder keys; "
                f"pass it without 'torchvision:')"
            )
        a = infer_arch(enc, str(path))
        return Backbone(a, complete_trunk_state(enc, a, str(path)), f"torchvision state dict {path}")
    if spec.startswith("detectron2:"):
        from pixpro_of.transfer.convert import read_detectron2

        path = spec[len("detectron2:") :]
        enc = read_detectron2(path)
        a = infer_arch(enc, path)
        return Backbone(a, complete_trunk_state(enc, a, path), f"detectron2 weights {path}")
    if ":" in spec and not Path(spec).exists() and spec.split(":", 1)[0].isalpha() and len(spec.split(":", 1)[0]) > 1:
        raise UserError(
            f"--backbone {spec!r}: unknown scheme (use random, torchvision:PATH, detectron2:PATH or a checkpoint path)"
        )
    enc = load_encoder_state(spec)
    return Backbone(enc.arch, enc.state, f"{enc.kind} checkpoint {enc.source} (online encoder)")


__all__ = ["Backbone", "resolve_backbone", "ARCH_LAYOUTS"]
