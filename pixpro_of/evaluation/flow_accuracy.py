"""``python -m pixpro_of eval flow``: flow accuracy and FB-mask quality on the synthetic driving world."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import click
import numpy as np
import torch

from plumbing.atomic import atomic_write_text
from plumbing.cli import call
from plumbing.cli import command as cli_command
from plumbing.errors import UserError
from plumbing.parse import checked, parse_wxh


@dataclass
class EvalConfig:
    """Options of ``pixpro_of eval flow``; ``size`` is (W, H) in pixels."""

    model: str = "dis"
    weights: Optional[str] = None
    dis_preset: str = "medium"
    iters: int = 12
    device: str = "cpu"
    videos: int = 2
    frames: int = 7
    size: Tuple[int, int] = (320, 192)
    seed: int = 0
    kmax: int = 6
    modes: List[str] = field(default_factory=lambda: ["seed", "unflow"])
    batch: int = 4


def chain_validity(flows: torch.Tensor, valids: torch.Tensor) -> torch.Tensor:
    """Ground-truth validity of a chain: ``flows`` [B, n, 2, H, W], ``valids`` bool [B, n, H, W] -> [B, H, W].

    A pixel is valid when, at every step, all bilinear neighbours of its moving position are valid
    (sampled validity >= 0.999) — so the chained reference flow there is not mixed across a boundary.
    """
    from flow.ops import _sample_grid, pixel_grid

    b, n, _, h, w = flows.shape
    pos = pixel_grid(h, w, flows.device, torch.float32).unsqueeze(0).expand(b, -1, -1, -1).clone()
    ok = torch.ones(b, h, w, dtype=torch.bool)
    for s in range(n):
        v = _sample_grid(valids[:, s : s + 1].float(), pos)[:, 0]
        ok &= v >= 0.999
        pos = pos + _sample_grid(flows[:, s].float(), pos)
    return ok


def _estimate(est, rgb: np.ndarray, batch: int):
    """Adjacent flows of a video: full-res fwd/bwd [T-1, 2, H, W] and 1/8-res fwd/bwd."""
    a = np.concatenate([rgb[:-1], rgb[1:]])
    b = np.concatenate([rgb[1:], rgb[:-1]])
    full, low = [], []
    for s in range(0, len(a), batch):
        r = est(a[s : s + batch], b[s : s + batch])
        full.append(r.full.cpu())
        low.append(r.low.cpu())
    full, low = torch.cat(full), torch.cat(low)
    n = rgb.shape[0] - 1
    return full[:n], full[n:], low[:n], low[n:]


def evaluate(cfg: EvalConfig, log=print) -> Dict:
    """Run the evaluation and return the figures (see the module docstring) as a dict."""
    from flow.estimators import make_estimator
    from flow.ops import chain_backward, chain_flows, fb_consistency, in_frame, shard_flow_to_full
    from synth import render_video

    if cfg.kmax < 2:
        raise UserError(f"--kmax should be >= 2, got {cfg.kmax}")
    if cfg.frames < cfg.kmax:
        raise UserError(f"--kmax {cfg.kmax} is larger than the video (--video-frames {cfg.frames})")
    if cfg.videos < 1:
        raise UserError(f"--videos should be >= 1, got {cfg.videos}")
    est = make_estimator(cfg.model, weights=cfg.weights, device=cfg.device, iters=cfg.iters, dis_preset=cfg.dis_preset)
    w, h = cfg.size
    epe = defaultdict(lambda: [0.0, 0])  # key -> [sum of errors, pixels]
    conf = defaultdict(lambda: np.zeros(4, np.int64))  # (k, mode, flow) -> tp, fp, fn, total
    for vi in range(cfg.videos):
        v = render_video(cfg.seed + vi, cfg.frames, size=(w, h))
        gt_f, gt_b = torch.from_numpy(v.fwd), torch.from_numpy(v.bwd)
        val_f = torch.from_numpy(v.valid_fwd)
        full_f, full_b, low_f, low_b = _estimate(est, v.rgb, cfg.batch)
        # What the trainer sees: float16 shard values, up-sampled x8.
        st_f = shard_flow_to_full(low_f.half().float(), (h, w))
        st_b = shard_flow_to_full(low_b.half().float(), (h, w))
        m = val_f
        for key, pred in (("full", full_f), ("stored", st_f)):
            err = torch.linalg.vector_norm(pred - gt_f, dim=1)
            epe[(2, key)][0] += float(err[m].sum())
            epe[(2, key)][1] += int(m.sum())
        for k in range(2, cfg.kmax + 1):
            n = k - 1
            for t in range(0, cfg.frames - n):
                gfc = chain_flows(gt_f[None, t : t + n])
                gbc = chain_backward(gt_b[None, t : t + n])
                valid = chain_validity(gt_f[None, t : t + n], val_f[None, t : t + n])
                efc = chain_flows(st_f[None, t : t + n])
                ebc = chain_backward(st_b[None, t : t + n])
                if k > 2:
                    err = torch.linalg.vector_norm(efc - gfc, dim=1)
                    epe[(k, "stored")][0] += float(err[valid].sum())
                    epe[(k, "stored")][1] += int(valid.sum())
                gt_invalid = ~valid[0] if k > 2 else ~val_f[t]
                inside = in_frame(gfc)[0]  # ground-truth target inside the frame: only occlusion can hide it
                for mode in cfg.modes:
                    for flow_name, (fc, bc) in (("est", (efc, ebc)), ("gt", (gfc, gbc))):
                        pred_invalid = ~fb_consistency(fc, bc, mode)[0]
                        for subset, sel in (("all", None), ("in-frame", inside)):
                            p_, g_ = (pred_invalid, gt_invalid) if sel is None else (pred_invalid[sel], gt_invalid[sel])
                            c = conf[(k, mode, flow_name, subset)]
                            c[0] += int((p_ & g_).sum())
                            c[1] += int((p_ & ~g_).sum())
                            c[2] += int((~p_ & g_).sum())
                            c[3] += g_.numel()
        log(f"video {vi + 1}/{cfg.videos} done", flush=True)
    result = {"config": asdict(cfg), "epe": [], "masks": []}
    for (k, key), (s, n) in sorted(epe.items()):
        result["epe"].append({"k": k, "flow": key, "epe_px": s / max(n, 1), "pixels": n})
    for (k, mode, flow_name, subset), (tp, fp, fn, total) in sorted(conf.items()):
        result["masks"].append(
            {
                "k": k,
                "mode": mode,
                "flow": flow_name,
                "pixels": subset,
                "precision": tp / (tp + fp) if tp + fp else float("nan"),
                "recall": tp / (tp + fn) if tp + fn else float("nan"),
                "flagged": (tp + fp) / total,
                "gt_invalid": (tp + fn) / total,
            }
        )
    return result


def format_result(r: Dict) -> str:
    c = r["config"]
    lines = [
        f"model {c['model']}{' ' + c['dis_preset'] if c['model'] == 'dis' else ''}, {c['videos']} synthetic video(s) "
        f"x {c['frames']} frames at {c['size'][0]}x{c['size'][1]}",
        "end-point error (px, over ground-truth-valid pixels)",
        f"{'k':>3} {'flow':<8} {'EPE':>8} {'pixels':>10}",
    ]
    for e in r["epe"]:
        lines.append(f"{e['k']:>3} {e['flow']:<8} {e['epe_px']:>8.3f} {e['pixels']:>10}")
    lines += [
        "FB masks (positive = invalid: occluded or leaving the frame; in-frame = pixels whose true target is "
        "inside the frame, i.e. occlusion only)",
        f"{'k':>3} {'mode':<7} {'flow':<5} {'pixels':<8} {'precision':>9} {'recall':>7} {'flagged':>8} {'gt':>7}",
    ]
    for m in r["masks"]:
        lines.append(
            f"{m['k']:>3} {m['mode']:<7} {m['flow']:<5} {m['pixels']:<8} {m['precision']:>9.3f} {m['recall']:>7.3f} "
            f"{m['flagged']:>8.3f} {m['gt_invalid']:>7.3f}"
        )
    return "\n".join(lines)


def frame_size(text: str) -> Tuple[int, int]:
    """``--size`` as (width, height), at least 16x16."""
    w, h = checked(parse_wxh, text, "--size")
    if w < 16 or h < 16:
        raise UserError(f"--size should be at least 16x16, got {text!r}")
    return w, h


@cli_command(
    "flow",
    epilog="Example: python -m pixpro_of eval flow --model dis --videos 2 --video-frames 7 "
    "--size 320x192 --kmax 6 --json flow.json",
)
@click.option("--model", type=click.Choice(["raft-small", "raft-large", "dis"]), default="dis", show_default=True)
@click.option("--weights", default=None, help="RAFT checkpoint (official or torchvision layout)")
@click.option("--dis-preset", type=click.Choice(["ultrafast", "fast", "medium"]), default="medium", show_default=True)
@click.option("--iters", type=int, default=12, show_default=True, help="RAFT refinement iterations")
@click.option("--device", default="cpu", show_default=True)
@click.option("--videos", type=int, default=2, show_default=True, help="synthetic videos to evaluate on")
@click.option("--video-frames", type=int, default=7, show_default=True, help="frames per video")
@click.option("--size", default="320x192", show_default=True, help="frame size WIDTHxHEIGHT")
@click.option("--seed", type=int, default=0, show_default=True, help="first video's seed")
@click.option("--kmax", type=int, default=6, show_default=True, help="longest clip, in frames")
@click.option("--json", "json_out", default=None, help="also write the figures to this JSON file")
def command(model, weights, dis_preset, iters, device, videos, video_frames, size, seed, kmax, json_out) -> int:
    """End-point error (adjacent and chained) and FB-mask precision/recall on the synthetic driving world.

    \b
    The estimator runs on every adjacent pair of each rendered video, both directions; every figure
    is pooled over videos and clip starts and compared with the world's exact flow and validity.
    - EPE (pixels, over truly valid pixels): adjacent pairs from the estimator's full-resolution
      output (full) and from what a shard stores (stored: 1/8 resolution in float16, up-sampled x8
      as the trainer does); clips of k = 3..--kmax frames: the chain of stored flows against the
      chain of exact flows, over pixels that stay valid at every step.
    - FB masks (seed, unflow) on the chained estimated flows: precision and recall with "invalid"
      (occluded or leaving the frame) as the positive class; flagged = fraction a mode rejects,
      gt = true fraction. in-frame rows keep only pixels whose true target is inside the frame
      (occlusion alone); flow=gt rows apply the rules to the exact flows.
    """
    if model != "dis" and weights is None:
        raise UserError(f"--weights is required for {model}")
    if weights is not None and not os.path.isfile(weights):
        raise UserError(f"{weights}: weights file not found")
    cfg = EvalConfig(
        model=model,
        weights=weights,
        dis_preset=dis_preset,
        iters=iters,
        device=device,
        videos=videos,
        frames=video_frames,
        size=frame_size(size),
        seed=seed,
        kmax=kmax,
    )
    r = evaluate(cfg)
    print(format_result(r))
    if json_out:
        atomic_write_text(json_out, json.dumps(r, indent=1))
    return 0


def main(argv=None) -> int:
    return call(command, argv, "pixpro_of eval flow")
