"""How much GPU memory one rank needs, estimated from the config alone (no torch import)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

GIB = 1 << 30

#: torchvision ResNet parameters without the classifier, and the C5 channels
BACKBONE_PARAMS = {"resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032}
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
#: fp32 bytes saved for backward per input pixel of one view, backbone and loss (heads apart)
ACTIVATION_BYTES_PER_PIXEL = {"resnet18": 446.8, "resnet34": 646.8, "resnet50": 1728.8}
#: the projector's saved bytes per C5 cell (32×32 px) per hidden / output channel
HEAD_BYTES_PER_CELL = (8.0, 24.0)
HALF_ACTIVATION_FACTOR = 0.53
TRANSIENT_FACTOR = 1.05
FIXED_BYTES = 1 * GIB
FRAGMENTATION = 1.05
BDD100K_FRAME = (720, 1280)


@dataclass
class MemoryEstimate:
    """Bytes per GPU, total and by part (``parts``: name -> bytes)."""

    total: int
    rank_batch: int
    parts: Dict[str, int] = field(default_factory=dict)

    def gib(self) -> float:
        return self.total / GIB

    def summary(self) -> str:
        shown = ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items() if v >= GIB / 20)
        return f"about {self.gib():.1f} GiB ({shown} GiB)"


def model_params(arch: str, proj_hidden: int, proj_dim: int, ppm_layers: int) -> Tuple[int, int]:
    """``(online, momentum)`` parameter counts of :class:`~pixpro_of.model.pixpro.PixPro`."""
    f, h, d = FEATURE_DIM[arch], proj_hidden, proj_dim
    projector = f * h + h + 2 * h + h * d + d  # conv1x1 + bias, BN(h), conv1x1 + bias
    ppm = {0: 0, 1: d * d + d, 2: 2 * (d * d + d) + 2 * d}[ppm_layers]
    backbone = BACKBONE_PARAMS[arch]
    return backbone + projector + ppm, backbone + projector


def estimate_bytes(
    cfg, rank_batch: int, frame_hw: Optional[Tuple[int, int]] = None, distributed: bool = True
) -> MemoryEstimate:
    """The per-GPU estimate for ``cfg`` (a :class:`~pixpro_of.config.TrainConfig`) with
    ``rank_batch`` samples per rank; see the module docstring for what is counted."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    half = o.precision in ("bf16", "fp16")
    online, momentum = model_params(m.arch, m.proj_hidden, m.proj_dim, m.ppm_layers)
    parts: Dict[str, int] = {}
    weights = 4 * (online + momentum) + 4 * online + 4 * online  # fp32 weights, gradients, LARS momentum
    if distributed:
        weights += 4 * online  # DDP gradient buckets / Horovod fusion buffer
    if half:
        weights += 2 * online  # autocast's weight copies
    parts["weights+optimizer"] = weights
    pixels = d.image_size * d.image_size
    per_px = (
        ACTIVATION_BYTES_PER_PIXEL[m.arch]
        + (HEAD_BYTES_PER_CELL[0] * m.proj_hidden + HEAD_BYTES_PER_CELL[1] * m.proj_dim) / 1024.0
    )
    act = 2 * rank_batch * pixels * per_px * (HALF_ACTIVATION_FACTOR if half else 1.0)
    parts["activations"] = int(act * TRANSIENT_FACTOR)
    if frame_hw is None:
        frame_hw = (d.synth.height, d.synth.width) if (d.synthetic and not d.shards) else BDD100K_FRAME
    fh, fw = frame_hw
    inputs = 2 * rank_batch * 3 * pixels * 4
    if d.decode_on == "device":
        inputs += 2 * min(d.decode_chunk, 2 * rank_batch) * fh * fw * 3
    parts["input"] = inputs
    if d.positives_mode() == "raft":
        cells = math.ceil(fh / 8) * math.ceil(fw / 8)
        per_pair = cells * cells * 4 * 4 / 3 * (0.5 if d.raft_amp in ("bf16", "fp16") else 1.0)
        pairs = min(d.raft_chunk, 2 * (d.k - 1) * rank_batch)
        parts["raft"] = int(per_pair * pairs + rank_batch * d.k * fh * fw * 3)
    total = int((sum(parts.values())) * FRAGMENTATION) + FIXED_BYTES
    parts["fixed"] = FIXED_BYTES
    return MemoryEstimate(total=total, rank_batch=rank_batch, parts=parts)


def check_fits(cfg, gpu_memory_gib: float, ranks: int) -> MemoryEstimate:
    """Raise a one-line :class:`~plumbing.errors.UserError` when ``data.batch_size`` over
    ``ranks`` GPUs of ``gpu_memory_gib`` cannot fit; the estimate otherwise."""
    from plumbing.errors import UserError

    if ranks < 1:
        raise UserError(f"--ranks {ranks}: must be >= 1")
    if gpu_memory_gib <= 0:
        raise UserError(f"--gpu-memory-gib {gpu_memory_gib:g}: must be > 0")
    batch = cfg.data.batch_size
    if batch % ranks:
        raise UserError(f"data.batch_size={batch} is not divisible by the {ranks} ranks")
    rank_batch = batch // ranks
    est = estimate_bytes(cfg, rank_batch, distributed=ranks > 1)
    if est.total <= gpu_memory_gib * GIB:
        return est
    # the fewest ranks (dividing the batch) whose share fits
    need = next(
        (
            r
            for r in range(ranks + 1, batch + 1)
            if batch % r == 0 and estimate_bytes(cfg, batch // r).total <= gpu_memory_gib * GIB
        ),
        None,
    )
    more = (
        f"use at least {need} GPUs ({batch // need} per GPU)"
        if need is not None
        else "no number of GPUs makes one sample fit"
    )
    raise UserError(
        f"data.batch_size={batch} over {ranks} GPUs is {rank_batch} per GPU and needs {est.summary()} "
        f"but a GPU has {gpu_memory_gib:g} GiB; {more}, or train with gradient accumulation "
        f"(not in this trainer yet) or a smaller data.batch_size (a different recipe)"
    )
