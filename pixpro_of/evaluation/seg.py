"""``python -m pixpro_of eval seg``: frozen-backbone semantic segmentation on a Cityscapes-layout tree."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import click
import numpy as np

from plumbing.atomic import atomic_write_bytes
from plumbing.cli import Converted, call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.parse import parse_hxw

MODES = ("deeplab", "linear")


@dataclass
class SegConfig:
    """Everything ``eval seg`` does. Sizes are (height, width) in pixels."""

    backbone: str = "random"  # random | torchvision:PATH | detectron2:PATH | checkpoint file | run directory
    data: str = ""  # Cityscapes-layout root
    out: str = ""  # output folder
    mode: str = "deeplab"  # deeplab | linear
    arch: str = "resnet50"  # only for --backbone random
    iters: int = 40000
    batch: int = 8
    crop: Tuple[int, int] = (512, 1024)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    poly_power: float = 0.9
    scale_range: Tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    test_scale: float = 1.0
    output_stride: int = 16
    multi_grid: Tuple[int, ...] = (1, 2, 4)
    train_split: str = "train"
    val_split: str = "val"
    max_val: int = 0  # 0 = the whole val split
    vis: int = 4  # images in predictions.png
    save_preds: bool = False  # write val predictions as label-id PNGs under OUT/val_preds/
    workers: int = 8  # capped at the CPU count on the command line
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    log_every: int = 50

    def validate(self) -> "SegConfig":
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("iters", "batch"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise UserError(f"--crop must be HEIGHTxWIDTH with positive sides, got {self.crop}")
        if not (0 < self.scale_range[0] <= self.scale_range[1]):
            raise UserError(f"--scale-range must be 0 < MIN <= MAX, got {self.scale_range}")
        if not self.test_scale > 0:
            raise UserError(f"--test-scale must be > 0, got {self.test_scale}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        for name in ("max_val", "vis", "workers", "warmup_iters"):
            if int(getattr(self, name)) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.out:
            raise UserError("--out is required")
        if not self.data:
            raise UserError("--data is required")
        return self


def lr_at(cfg: SegConfig, it: int) -> float:
    """detectron2's WarmupPolyLR at iteration ``it`` (0-based): linear warmup, then ``(1 − it/iters)^power``."""
    factor = 1.0
    warm = min(cfg.warmup_iters, cfg.iters)
    if it < warm:
        alpha = it / warm
        factor = cfg.warmup_factor * (1 - alpha) + alpha
    return cfg.lr * factor * (1.0 - it / cfg.iters) ** cfg.poly_power


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here")
    return dev


def _param_groups(head, cfg: SegConfig) -> List[Dict]:
    import torch

    norm, other = [], []
    for m in head.modules():
        params = [p for p in m.parameters(recurse=False) if p.requires_grad]
        (norm if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) else other).extend(params)
    return [
        {"params": other, "weight_decay": cfg.weight_decay},
        {"params": norm, "weight_decay": cfg.weight_decay_norm},
    ]


def train_head(model, cfg: SegConfig, pairs, device, log) -> Dict[str, object]:
    """SGD on the head for ``cfg.iters`` iterations; returns losses and timings."""
    import torch
    import torch.nn.functional as F

    from pixpro_of.evaluation.data import TrainSegDataset

    ds = TrainSegDataset(pairs, cfg.crop, cfg.scale_range, cfg.flip, cfg.seed, length=cfg.iters * cfg.batch)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch,
        shuffle=False,
        num_workers=cfg.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    opt = torch.optim.SGD(_param_groups(model.head, cfg), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    rows, t0, loss_val = [], time.perf_counter(), float("nan")
    for it, (x, y) in enumerate(loader):
        lr = lr_at(cfg, it)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        n_valid = int((y != 255).sum())
        # Mean over non-ignored pixels (detectron2's ignore_index=255 mean); 0 when a batch has none.
        loss = F.cross_entropy(logits, y, ignore_index=255, reduction="sum") / max(n_valid, 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise RuntimeError(f"eval seg: loss became {loss_val} at iteration {it}")
        rows.append((it, lr, loss_val))
        if cfg.log_every and (it % cfg.log_every == 0 or it == cfg.iters - 1):
            log(
                f"iter {it + 1}/{cfg.iters}  lr {lr:.5f}  loss {loss_val:.4f}  "
                f"{(time.perf_counter() - t0) / (it + 1):.3f} s/iter"
            )
    return {"rows": rows, "final_loss": loss_val, "seconds": time.perf_counter() - t0}


def evaluate(
    model, cfg: SegConfig, pairs, device, log, preds_dir: Optional[Path] = None
) -> Tuple[np.ndarray, List[Tuple[np.ndarray, ...]], float]:
    """Confusion matrix over the val images, the first ``cfg.vis`` (image, gt, pred) triples, seconds.

    With ``preds_dir``, each prediction is also written as a label-id PNG
    ``preds_dir/<city>/<stem>_pred_labelIds.png``.
    """
    import cv2
    import torch
    import torch.nn.functional as F

    from pixpro_of.evaluation.data import IMG_SUFFIX, ValSegDataset
    from pixpro_of.evaluation.labels import train_id_to_label_id
    from pixpro_of.evaluation.miou import ConfusionMatrix

    ds = ValSegDataset(pairs, cfg.test_scale)
    conf = ConfusionMatrix()
    shown, t0 = [], time.perf_counter()
    to_label = np.array(train_id_to_label_id(), np.uint8)
    model.eval()
    with torch.no_grad():
        for i in range(len(ds)):
            x, y, _ = ds[i]
            logits = model(x[None].to(device))
            if logits.shape[-2:] != y.shape:
                logits = F.interpolate(logits, size=tuple(y.shape), mode="bilinear", align_corners=False)
            pred = logits.argmax(1)[0].to("cpu", torch.uint8).numpy()
            gt = y.numpy().astype(np.uint8)
            conf.update(gt, pred)
            if preds_dir is not None:
                img = pairs[i].image
                dest = preds_dir / img.parent.name / (img.name[: -len(IMG_SUFFIX)] + "_pred_labelIds.png")
                dest.parent.mkdir(parents=True, exist_ok=True)
                ok, png = cv2.imencode(".png", to_label[pred])
                if not ok:
                    raise RuntimeError(f"could not encode {dest}")
                atomic_write_bytes(dest, png.tobytes())
            if len(shown) < cfg.vis:
                rgb, _ = ds.raw(i)
                shown.append((rgb, gt, pred))
    log(f"evaluated {len(ds)} val images in {time.perf_counter() - t0:.1f} s")
    return conf.conf, shown, time.perf_counter() - t0


def prediction_picture(shown: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]], max_width: int = 512) -> np.ndarray:
    """Rows of (image | ground truth | prediction), Cityscapes colours, each panel ≤ ``max_width`` wide.

    Returns uint8 RGB ``[H, W, 3]``; panels are separated by 4 white pixels.
    """
    import cv2

    from pixpro_of.evaluation.labels import colorize

    rows = []
    for rgb, gt, pred in shown:
        h, w = gt.shape
        s = min(1.0, max_width / w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        panels = [
            cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
            cv2.resize(colorize(gt), size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(colorize(pred), size, interpolation=cv2.INTER_NEAREST),
        ]
        gap = np.full((size[1], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    width = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        pad = np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)
        out += [np.concatenate([r, pad], axis=1), np.full((4, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def run(cfg: SegConfig, log=print) -> Dict[str, object]:
    """Train the head, evaluate, write the outputs; returns the scores dict (also in scores.json)."""
    import cv2
    import torch

    from pixpro_of.evaluation.backbone import resolve_backbone
    from pixpro_of.evaluation.data import list_pairs
    from pixpro_of.evaluation.deeplab import build_model
    from pixpro_of.evaluation.miou import score_report

    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    train_pairs = list_pairs(cfg.data, cfg.train_split)
    val_pairs = list_pairs(cfg.data, cfg.val_split)
    if cfg.max_val:
        val_pairs = val_pairs[: cfg.max_val]
    device = _device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the seed; fixed crop and val sizes on Cityscapes
    bb = resolve_backbone(cfg.backbone, cfg.arch, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(
        bb.arch, bb.state, cfg.mode, crop=tuple(cfg.crop), output_stride=cfg.output_stride, multi_grid=cfg.multi_grid
    ).to(device)
    log(
        f"eval seg: {cfg.mode} head on frozen {bb.description}; {len(train_pairs)} train / "
        f"{len(val_pairs)} val images; {cfg.iters} iters x batch {cfg.batch}, crop {cfg.crop[0]}x{cfg.crop[1]}, "
        f"device {device}"
    )
    trained = train_head(model, cfg, train_pairs, device, log)
    out.mkdir(parents=True, exist_ok=True)
    conf, shown, eval_s = evaluate(model, cfg, val_pairs, device, log, out / "val_preds" if cfg.save_preds else None)
    report = score_report(conf)
    scores = dict(report)
    scores.update(
        {
            "n_val_images": len(val_pairs),
            "n_train_images": len(train_pairs),
            "backbone": {"spec": cfg.backbone, "arch": bb.arch, "description": bb.description},
            "train": {"iters": cfg.iters, "final_loss": trained["final_loss"], "seconds": round(trained["seconds"], 3)},
            "eval_seconds": round(eval_s, 3),
            "device": str(device),
            "confusion": conf.tolist(),
            "config": asdict(cfg),
        }
    )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["iter", "lr", "loss"])
    w.writerows([(i, f"{lr:.8g}", f"{loss:.6g}") for i, lr, loss in trained["rows"]])
    atomic_write_bytes(out / "train_log.csv", buf.getvalue().encode())
    if shown:
        ok, png = cv2.imencode(".png", cv2.cvtColor(prediction_picture(shown), cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("could not encode predictions.png")
        atomic_write_bytes(out / "predictions.png", png.tobytes())
    atomic_write_bytes(out / "scores.json", (json.dumps(scores, indent=1) + "\n").encode())
    miou = "n/a" if scores["mIoU"] is None else f"{scores['mIoU']:.2f}"
    log(
        f"mIoU {miou} over {report['classes_evaluated']} classes -> {out / 'scores.json'}"
        + (f", {out / 'predictions.png'}" if shown else "")
    )
    return scores


def _options(f):
    """The options of ``eval seg``; defaults are :class:`SegConfig`'s (the seed's)."""
    d = SegConfig()
    options = [
        click.option(
            "--backbone",
            required=True,
            help="checkpoint file or run directory, 'torchvision:PATH' (a torchvision ResNet state dict), "
            "'detectron2:PATH' (a detectron2 ResNet .pkl), "
            "or 'random' (pretraining initialisation, see --arch)",
        ),
        click.option("--data", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)"),
        click.option("--out", required=True, help="output folder (scores.json, predictions.png, train_log.csv)"),
        click.option(
            "--mode",
            type=click.Choice(MODES),
            default=d.mode,
            show_default=True,
            help="head: DeepLabV3 (ASPP) or a 1x1 linear probe",
        ),
        click.option("--arch", default=d.arch, show_default=True, help="architecture for --backbone random"),
        click.option("--iters", type=int, default=d.iters, show_default=True, help="training iterations"),
        click.option("--batch", type=int, default=d.batch, show_default=True, help="images per iteration"),
        click.option(
            "--crop",
            type=Converted(parse_hxw, "HEIGHTxWIDTH"),
            default="x".join(map(str, d.crop)),
            show_default=True,
            help="training crop HEIGHTxWIDTH, height first as in the seed's 512x1024 "
            "(frame sizes elsewhere are WIDTHxHEIGHT)",
        ),
        click.option("--lr", type=float, default=d.lr, show_default=True, help="base learning rate"),
        click.option("--weight-decay", type=float, default=d.weight_decay, show_default=True),
        click.option("--warmup-iters", type=int, default=d.warmup_iters, show_default=True, help="linear warmup"),
        click.option(
            "--scale-range",
            type=float,
            nargs=2,
            default=d.scale_range,
            show_default=True,
            metavar="MIN MAX",
            help="random resize factor range",
        ),
        click.option("--no-flip", is_flag=True, help="no random horizontal flip"),
        click.option("--test-scale", type=float, default=d.test_scale, show_default=True, help="val resize factor"),
        click.option(
            "--output-stride",
            type=click.Choice(["16", "32"]),
            default=str(d.output_stride),
            show_default=True,
            help="16: dilated res5 with multi-grid 1-2-4 (the seed); 32: plain ResNet",
        ),
        click.option(
            "--max-val",
            type=int,
            default=d.max_val,
            show_default=True,
            help="score only the first N val images (0 = all)",
        ),
        click.option("--vis", type=int, default=d.vis, show_default=True, help="val images drawn in predictions.png"),
        click.option(
            "--save-preds",
            is_flag=True,
            help="also write every val prediction as OUT/val_preds/<city>/<stem>_pred_labelIds.png",
        ),
        click.option(
            "--workers",
            type=int,
            default=min(d.workers, os.cpu_count() or 1),
            show_default=True,
            help="data loader workers",
        ),
        click.option("--device", default=d.device, show_default=True, help="auto, cpu, cuda or cuda:N"),
        click.option("--seed", type=int, default=d.seed, show_default=True, help="random seed"),
        click.option(
            "--log-every", type=int, default=d.log_every, show_default=True, help="print every N iterations (0 = never)"
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def config_from_args(args) -> SegConfig:
    """The SegConfig of parsed options (an object with one attribute per option)."""
    return SegConfig(
        backbone=args.backbone,
        data=args.data,
        out=args.out,
        mode=args.mode,
        arch=args.arch,
        iters=args.iters,
        batch=args.batch,
        crop=tuple(args.crop),
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_iters=args.warmup_iters,
        scale_range=tuple(args.scale_range),
        flip=not args.no_flip,
        test_scale=args.test_scale,
        output_stride=int(args.output_stride),
        max_val=args.max_val,
        vis=args.vis,
        save_preds=args.save_preds,
        workers=args.workers,
        device=args.device,
        seed=args.seed,
        log_every=args.log_every,
    )


@cli_command(
    "seg",
    epilog="Examples: python -m pixpro_of eval seg --backbone runs/k6 --data data/cityscapes --out eval/k6; "
    "python -m pixpro_of eval seg --backbone random --mode linear --data data/synth --out eval/rand",
)
@_options
def command(**opts) -> int:
    """Frozen-backbone semantic segmentation on a Cityscapes-layout tree; 19-class mIoU.

    The head is the seed's DeepLabV3 transfer or a linear probe; mIoU as cityscapesScripts computes it.
    Defaults are the seed's.
    """
    args = SimpleNamespace(**opts)
    # Frozen pretrained features can be subnormal floats, which run ~10x slower on x86 CPUs.
    import torch

    torch.set_flush_denormal(True)
    run(config_from_args(args))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return call(command, argv, "pixpro_of eval seg")
