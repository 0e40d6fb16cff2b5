"""``python -m pixpro_of eval propagate``: video label propagation through frozen features."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import click
import numpy as np

from plumbing.atomic import atomic_write_text
from plumbing.cli import Converted, call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.parse import parse_wxh


@dataclass
class PropagateConfig:
    """Options of ``eval propagate``; ``size`` is (W, H) in pixels."""

    backbone: str = "random"
    out: str = "propagate_out"
    arch: str = "resnet50"
    videos: int = 4
    video_frames: int = 12
    size: Tuple[int, int] = (320, 192)
    seed: int = 1
    init_seed: int = 0  # the seed of a --backbone random (its weights)
    topk: int = 10
    temperature: float = 0.07
    radius: int = 6
    context: int = 20
    output_stride: int = 16
    device: str = "cpu"

    def validate(self) -> None:
        if self.videos < 1:
            raise UserError(f"--videos should be >= 1, got {self.videos}")
        if self.video_frames < 2:
            raise UserError(
                f"--video-frames should be >= 2 (a first frame and one to propagate to), got {self.video_frames}"
            )
        if self.topk < 1:
            raise UserError(f"--topk should be >= 1, got {self.topk}")
        if not self.temperature > 0:
            raise UserError(f"--temperature should be > 0, got {self.temperature}")
        if self.radius < 0:
            raise UserError(f"--radius should be >= 0 cells, got {self.radius}")
        if self.context < 0:
            raise UserError(f"--context should be >= 0 frames, got {self.context}")
        if self.output_stride not in (16, 32):
            raise UserError(f"--output-stride must be 16 or 32, got {self.output_stride}")
        w, h = self.size
        if w < self.output_stride or h < self.output_stride:
            raise UserError(f"--size {w}x{h}: smaller than one feature cell at --output-stride {self.output_stride}")


# --------------------------------------------------------------------------- the propagation


def cell_labels(labels, num_classes: int, grid_hw: Tuple[int, int]):
    """Train ids ``[H, W]`` (255 = ignore) -> area-averaged one-hot ``[K, h, w]`` on a ``grid_hw`` grid.

    Pixel (y, x) belongs to cell (y·h // H, x·w // W); a cell's vector sums to the fraction of its
    pixels that are labelled.
    """
    import torch

    lab = torch.as_tensor(np.asarray(labels)).long()
    H, W = lab.shape
    h, w = grid_hw
    cy = (torch.arange(H) * h) // H
    cx = (torch.arange(W) * w) // W
    cell = (cy[:, None] * w + cx[None, :]).reshape(-1)
    flat = lab.reshape(-1)
    keep = flat != 255
    if bool(((flat[keep] < 0) | (flat[keep] >= num_classes)).any()):
        raise ValueError(f"labels hold train ids outside 0..{num_classes - 1} and 255")
    out = torch.zeros(num_classes, h * w, dtype=torch.float32)
    out.index_put_((flat[keep], cell[keep]), torch.ones(int(keep.sum())), accumulate=True)
    count = torch.bincount(cell, minlength=h * w).clamp(min=1).float()
    return (out / count).reshape(num_classes, h, w)


def propagate_labels(
    feats, first, topk: int = 10, temperature: float = 0.07, radius: Optional[int] = None, context: int = 20
):
    """Label distributions of every frame, propagated from the first.

    ``feats`` float ``[T, C, h, w]`` (normalised here over C), ``first`` float ``[K, h, w]`` (frame
    0's cell labels, :func:`cell_labels`). Returns ``[T, K, h, w]`` with frame 0 = ``first``.
    ``radius=None`` lets every context cell count.
    """
    import torch
    import torch.nn.functional as F

    T, C, h, w = feats.shape
    K = first.shape[0]
    if tuple(first.shape[1:]) != (h, w):
        raise ValueError(f"first-frame labels are {tuple(first.shape[1:])}, features {(h, w)}")
    f = F.normalize(feats.float(), dim=1).reshape(T, C, h * w)
    out = torch.empty(T, K, h * w, dtype=torch.float32, device=feats.device)
    out[0] = first.reshape(K, h * w).to(out)
    near = None
    if radius is not None:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.reshape(-1).to(feats.device), xs.reshape(-1).to(feats.device)
        near = ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
    for t in range(1, T):
        ctx = [0] + [j for j in range(max(1, t - context), t)]
        keys = f[ctx]  # [n, C, hw]
        aff = torch.einsum("cq,ncp->qnp", f[t], keys) / temperature  # [hw_q, n, hw_p]
        if near is not None:
            aff = aff.masked_fill(~near[:, None, :], float("-inf"))
        aff = aff.reshape(h * w, -1)
        k = min(topk, aff.shape[1])
        top, idx = aff.topk(k, dim=1)
        weight = torch.softmax(top, dim=1)  # -inf entries (outside the radius) get 0
        values = out[ctx].permute(0, 2, 1).reshape(-1, K)  # [n·hw_p, K]
        out[t] = (weight[:, :, None] * values[idx]).sum(1).T
    return out.reshape(T, K, h, w)


def predict(probs, frame_hw: Tuple[int, int]) -> np.ndarray:
    """Cell distributions ``[K, h, w]`` -> train ids ``[H, W]`` (bilinear upsampling, argmax)."""
    import torch.nn.functional as F

    up = F.interpolate(probs[None].float(), size=tuple(frame_hw), mode="bilinear", align_corners=True)[0]
    return up.argmax(0).cpu().numpy().astype(np.uint8)


def miou_per_distance(confusions: Sequence[np.ndarray]) -> Tuple[List[Optional[float]], Optional[float]]:
    """mIoU (percent) of each frame distance's pooled confusion, and their mean over distances."""
    from pixpro_of.evaluation.miou import iou_from_confusion

    per = []
    for conf in confusions:
        _, miou = iou_from_confusion(conf)
        per.append(None if miou is None or np.isnan(miou) else round(100.0 * float(miou), 3))
    scored = [m for m in per if m is not None]
    return per, (round(float(np.mean(scored)), 3) if scored else None)


# --------------------------------------------------------------------------- the run


def _features(backbone, frames: np.ndarray, device):
    """Frozen features ``[T, C, h, w]`` of uint8 frames ``[T, H, W, 3]``, one frame at a time."""
    import torch

    from pixpro_of.evaluation.data import normalize

    return torch.cat([backbone(torch.from_numpy(normalize(fr))[None].to(device)) for fr in frames]).float()


def run(cfg: PropagateConfig, log=print) -> Dict[str, object]:
    """Propagate and score every video; writes ``OUT/scores.json`` and returns its content."""
    import torch

    from pixpro_of.evaluation.backbone import resolve_backbone
    from pixpro_of.evaluation.deeplab import FrozenBackbone
    from pixpro_of.evaluation.labels import label_ids_to_train_ids
    from pixpro_of.evaluation.miou import NUM_CLASSES, ConfusionMatrix
    from synth import render_video, video_seed

    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    device = torch.device(cfg.device)
    bb = resolve_backbone(cfg.backbone, cfg.arch, cfg.init_seed)
    backbone = FrozenBackbone(bb.arch, bb.state, output_stride=cfg.output_stride, multi_grid=(1, 1, 1)).to(device)
    log(
        f"eval propagate: frozen {bb.description}; {cfg.videos} held-out videos x {cfg.video_frames} frames at "
        f"{cfg.size[0]}x{cfg.size[1]} (world seed {cfg.seed}), stride {cfg.output_stride}, top-{cfg.topk}, "
        f"radius {cfg.radius}, context {cfg.context}"
    )
    start = time.time()
    conf = [ConfusionMatrix(NUM_CLASSES) for _ in range(cfg.video_frames - 1)]
    with torch.no_grad():
        for i in range(cfg.videos):
            video = render_video(video_seed(cfg.seed, i), cfg.video_frames, cfg.size)
            truth = label_ids_to_train_ids(video.labels)
            feats = _features(backbone, video.rgb, device)
            first = cell_labels(truth[0], NUM_CLASSES, tuple(feats.shape[2:])).to(device)
            probs = propagate_labels(feats, first, cfg.topk, cfg.temperature, cfg.radius, cfg.context)
            for t in range(1, cfg.video_frames):
                conf[t - 1].update(truth[t], predict(probs[t], truth.shape[1:]))
    per, mean = miou_per_distance([c.conf for c in conf])
    scores = {
        "mIoU_per_distance": per,
        "mIoU_mean": mean,
        "distances": list(range(1, cfg.video_frames)),
        "backbone": {"spec": cfg.backbone, "arch": bb.arch, "description": bb.description},
        "seconds": round(time.time() - start, 3),
        "config": asdict(cfg),
    }
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=1) + "\n")
    shown = ", ".join("n/a" if m is None else f"{m:.1f}" for m in per)
    log(
        f"mIoU by frame distance 1..{cfg.video_frames - 1}: {shown}; mean "
        f"{'n/a' if mean is None else f'{mean:.2f}'} -> {out / 'scores.json'}"
    )
    return scores


_D = PropagateConfig()


@cli_command(
    "propagate",
    epilog="Examples: python -m pixpro_of eval propagate --backbone runs/k6 --out eval/k6-prop; "
    "python -m pixpro_of eval propagate --backbone random --arch resnet18 "
    "--videos 2 --video-frames 8 --out /tmp/prop",
)
@click.option(
    "--backbone",
    required=True,
    help="checkpoint file or run directory, 'torchvision:PATH', 'detectron2:PATH', or 'random'",
)
@click.option("--out", required=True, help="output folder (scores.json)")
@click.option("--arch", default=_D.arch, show_default=True, help="architecture for --backbone random")
@click.option("--videos", type=int, default=_D.videos, show_default=True, help="held-out synthetic videos")
@click.option("--video-frames", type=int, default=_D.video_frames, show_default=True, help="frames per video")
@click.option(
    "--size",
    type=Converted(parse_wxh, "WIDTHxHEIGHT"),
    default="x".join(map(str, _D.size)),
    show_default=True,
    help="frame size WIDTHxHEIGHT",
)
@click.option(
    "--seed",
    type=int,
    default=_D.seed,
    show_default=True,
    help="the world's seed for the held-out videos (the pretraining world uses data.synth.seed, 0)",
)
@click.option(
    "--init-seed",
    type=int,
    default=_D.init_seed,
    show_default=True,
    help="seed of the random weights of --backbone random (the pretraining seed of the row it stands for)",
)
@click.option("--topk", type=int, default=_D.topk, show_default=True, help="context cells kept per target cell")
@click.option("--temperature", type=float, default=_D.temperature, show_default=True, help="softmax temperature")
@click.option("--radius", type=int, default=_D.radius, show_default=True, help="neighbourhood in feature cells")
@click.option(
    "--context", type=int, default=_D.context, show_default=True, help="previous frames used besides the first"
)
@click.option(
    "--output-stride",
    type=click.Choice(["16", "32"]),
    default=str(_D.output_stride),
    show_default=True,
    help="16: dilated res5; 32: plain ResNet",
)
@click.option("--device", default=_D.device, show_default=True, help="cpu, cuda or cuda:N")
def command(**o) -> int:
    """Video label propagation through frozen features on held-out synthetic videos; mIoU per frame distance.

    \b
    No training: the first frame's true labels are carried to every later frame t by the affinities
    of the frozen, L2-normalised features alone (the DAVIS / JHMDB protocol).
    - context of frame t: the first frame (true labels) and the --context frames before t (their
      predicted label distributions);
    - affinity of a target cell to a context cell within --radius cells (Chebyshev): their feature
      dot product / --temperature; the --topk largest over all context cells are soft-maxed, and
      the target's labels are the weighted sum of those cells' label distributions;
    - predictions are upsampled to the frame and scored against the world's exact labels with the
      Cityscapes 19-class IoU: mIoU per frame distance t = 1..T-1 (pooled over videos), and the mean.
    """
    import torch

    torch.set_flush_denormal(True)
    run(
        PropagateConfig(
            backbone=o["backbone"],
            out=o["out"],
            arch=o["arch"],
            videos=o["videos"],
            video_frames=o["video_frames"],
            size=tuple(o["size"]),
            seed=o["seed"],
            init_seed=o["init_seed"],
            topk=o["topk"],
            temperature=o["temperature"],
            radius=o["radius"],
            context=o["context"],
            output_stride=int(o["output_stride"]),
            device=o["device"],
        )
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "pixpro_of eval propagate")
