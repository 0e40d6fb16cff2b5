"""``python -m pixpro_of convert CKPT --to {detectron2,torchvision} OUT``: export the online encoder."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Optional, Sequence

import click

from pixpro_of.transfer.encoder_state import complete_trunk_state, infer_arch, load_encoder_state
from plumbing.atomic import atomic_open
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError

TARGETS = ("detectron2", "torchvision")
D2_AUTHOR = "PixPro"  # the seed's value; detectron2 only reads matching_heuristics

_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def detectron2_key(key: str) -> Optional[str]:
    """detectron2 ResNet name for a torchvision trunk key; None for ``num_batches_tracked``.

    Raises ValueError for a key that is not part of a torchvision ResNet trunk.
    """
    if key.endswith(".num_batches_tracked"):
        return None
    if key == "conv1.weight":
        return "stem.conv1.weight"
    m = re.match(r"^bn1\.(\w+)$", key)
    if m and m.group(1) in _BN_FIELDS:
        return f"stem.conv1.norm.{m.group(1)}"
    m = _BLOCK.match(key)
    if m:
        stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
        prefix = f"res{stage}.{block}."
        c = re.match(r"^conv(\d)\.weight$", rest)
        if c:
            return prefix + rest
        b = re.match(r"^bn(\d)\.(\w+)$", rest)
        if b and b.group(2) in _BN_FIELDS:
            return prefix + f"conv{b.group(1)}.norm.{b.group(2)}"
        if rest == "downsample.0.weight":
            return prefix + "shortcut.weight"
        d = re.match(r"^downsample\.1\.(\w+)$", rest)
        if d and d.group(1) in _BN_FIELDS:
            return prefix + f"shortcut.norm.{d.group(1)}"
    raise ValueError(f"not a torchvision ResNet trunk key: {key!r}")


def to_detectron2(state: Dict[str, object]) -> Dict[str, object]:
    """The detectron2 checkpoint dict (numpy values) for a torchvision-named trunk state."""
    model = {}
    for k, v in state.items():
        d2 = detectron2_key(k)
        if d2 is not None:
            model[d2] = v.detach().cpu().numpy()
    return {"model": model, "__author__": D2_AUTHOR, "matching_heuristics": True}


_INV_STEM = re.compile(r"^stem\.conv1\.(weight|norm\.(\w+))$")
_INV_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv(\d)|shortcut)\.(weight|norm\.(\w+))$")


def torchvision_key(d2: str) -> str:
    """Inverse of :func:`detectron2_key`; ValueError for a name outside detectron2's ResNet trunk."""
    m = _INV_STEM.match(d2)
    if m:
        if m.group(1) == "weight":
            return "conv1.weight"
        if m.group(2) in _BN_FIELDS:
            return f"bn1.{m.group(2)}"
    m = _INV_BLOCK.match(d2)
    if m:
        layer = f"layer{int(m.group(1)) - 1}.{m.group(2)}."
        conv, bn = (f"conv{m.group(4)}", f"bn{m.group(4)}") if m.group(4) else ("downsample.0", "downsample.1")
        if m.group(5) == "weight":
            return layer + conv + ".weight"
        if m.group(6) in _BN_FIELDS:
            return layer + bn + "." + m.group(6)
    raise ValueError(f"not a detectron2 ResNet trunk key: {d2!r}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else (no arbitrary code from a .pkl)."""

    _NUMPY_MODULES = {
        "numpy",
        "numpy.core.multiarray",
        "numpy._core.multiarray",
        "numpy.core.numeric",
        "numpy._core.numeric",
    }
    _NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}

    def find_class(self, module, name):
        if (module in self._NUMPY_MODULES and name in self._NUMPY_NAMES) or (module, name) in (
            ("collections", "OrderedDict"),
            ("_codecs", "encode"),
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_detectron2(path) -> Dict[str, object]:
    """A detectron2 ResNet ``.pkl`` (this module's output, or detectron2's torchvision R-50.pkl) as a
    torchvision-named state dict of tensors; ``stem.fc.*`` (a converted classifier) is dropped."""
    import numpy as np
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a detectron2 weights pickle ({type(exc).__name__}: {first[:200]})") from None
    model = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(model, dict):
        raise UserError(f"{path}: not a detectron2 weights pickle (expected a dict with 'model')")
    out = {}
    for k, v in model.items():
        if str(k).startswith("stem.fc."):
            continue
        try:
            tv = torchvision_key(str(k))
        except ValueError:
            raise UserError(
                f"{path}: {k!r} is not a detectron2 ResNet key (caffe2-named weights are not supported)"
            ) from None
        out[tv] = torch.from_numpy(np.array(v, copy=True))
    if not out:
        raise UserError(f"{path}: no ResNet weights in 'model'")
    return out


def write_detectron2(state: Dict[str, object], out: Path) -> Dict[str, object]:
    """Write the detectron2 ``.pkl`` atomically; returns the pickled dict."""
    obj = to_detectron2(state)
    with atomic_open(out, "wb", durable=True) as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return obj


def write_torchvision(state: Dict[str, object], out: Path) -> None:
    """Write the torchvision state dict (no ``fc``) atomically with ``torch.save``."""
    import torch

    with atomic_open(out, "wb", durable=True) as f:
        torch.save(dict(state), f)


def load_torchvision_backbone(path_or_state, arch: Optional[str] = None):
    """A torchvision ResNet with ``fc = Identity`` loaded strictly from a torchvision export.

    ``path_or_state``: a ``.pth`` written by ``convert --to torchvision`` (or any torchvision trunk
    state dict). ``arch`` is inferred from the keys when not given. The model's forward returns the
    pooled C5 features ``[B, C5]``; ``features_c5(model, x)`` gives the map before pooling.
    """
    import torch
    import torchvision

    from pixpro_of.transfer.encoder_state import read_torch_file

    if isinstance(path_or_state, (str, os.PathLike)):
        source = str(path_or_state)
        state = read_torch_file(Path(path_or_state))
        if not isinstance(state, dict):
            raise UserError(f"{source}: not a state dict")
    else:
        source, state = "state dict", path_or_state
    arch = arch or infer_arch(state, source)
    state = complete_trunk_state(dict(state), arch, source)
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = torch.nn.Identity()
    net.load_state_dict(state, strict=True)
    return net


def features_c5(net, x):
    """C5 map ``[B, C5, H/32, W/32]`` of a torchvision ResNet (stem, layer1..layer4; no pooling)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


@cli_command(
    "convert",
    epilog="Examples: python -m pixpro_of convert runs/k6 --to detectron2 k6.pkl; "
    "python -m pixpro_of convert runs/k6/checkpoints/step_000500.pt --to torchvision k6.pth",
)
@click.argument("checkpoint")
@click.option("--to", required=True, type=click.Choice(TARGETS), help="output format")
@click.argument("out")
def command(checkpoint, to, out) -> int:
    """Export a checkpoint's online encoder for detectron2 (.pkl) or torchvision (.pth).

    CHECKPOINT is a pixpro_of or seed checkpoint file, a run directory (uses checkpoints/latest) or a
    torchvision state dict; OUT is the output file (.pkl for detectron2, the seed's DeepLab transfer;
    .pth for torchvision, loads into torchvision.models.resnetXX without fc).
    """
    args = SimpleNamespace(checkpoint=checkpoint, to=to, out=out)
    enc = load_encoder_state(args.checkpoint)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory (give an output file name)")
    if args.to == "detectron2":
        obj = write_detectron2(enc.state, out)
        n = len(obj["model"])
    else:
        write_torchvision(enc.state, out)
        n = len(enc.state)
    print(f"{out}: {args.to} {enc.arch} online encoder, {n} tensors (from {enc.kind} checkpoint {enc.source})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "pixpro_of convert")
