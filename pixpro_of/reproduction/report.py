"""The reproduction's report: per-run numbers and per-row summaries, the markdown tables and the pictures.

Everything is read from the run directories (``runs/<row>-s<seed>/``: steps, wall time,
``metrics.csv``; ``eval/<row>-s<seed>-<mode>/scores.json``), so the report of a rerun is the
same whatever ran when. A run that failed is shown as failed in its cell, never left out.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pixpro_of.reproduction.plan import FINISHED, ROWS, Job, ReproduceConfig, train_result
from plumbing.atomic import atomic_open
from plumbing.errors import UserError
from plumbing.runs import RunLayout

MODE_TITLES = {
    "linear": "Linear probe mIoU",
    "deeplab": "DeepLabV3 mIoU",
    "propagate": "Label propagation mIoU (mean over distances)",
}


def _mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof = 1; None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


DIAGNOSTICS = ("loss", "positive_pair/avg", "positive_pair/empty", "mask_ratio")


def train_diagnostics(run_dir: Path, tail: float = 0.2) -> Dict[str, float]:
    """Means of :data:`DIAGNOSTICS` over the last ``tail`` fraction of a run's ``metrics.csv`` rows.

    ``positive_pair/avg``: positive pairs per image (view pair and direction);
    ``positive_pair/empty``: fraction of image-directions without any positive pair;
    ``mask_ratio``: fraction of flow pixels the forward-backward check rejects (0 when
    ``data.mask=none`` or k = 1).
    """
    path = RunLayout(run_dir).metrics
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[-max(1, int(len(rows) * tail)) :] if rows else []
    out = {}
    for key in DIAGNOSTICS:
        vals = []
        for r in rows:
            try:
                v = float(r.get(key) or "nan")
            except ValueError:
                continue
            if math.isfinite(v):
                vals.append(v)
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def weights_moved(run_dir: Path, arch: str, seed: int) -> Optional[float]:
    """‖w − w₀‖ / ‖w₀‖ over the encoder's learnt tensors (BatchNorm running statistics left out):
    how far a pretraining took its weights from their random init (``w₀``: the trainer's draw for
    ``seed``, which ``--backbone random`` repeats). 0 for the stats-only floor; None without a checkpoint."""
    import torch

    from pixpro_of.evaluation.backbone import resolve_backbone

    try:
        trained = resolve_backbone(str(run_dir), arch).state
    except (UserError, OSError):
        return None
    init = resolve_backbone("random", arch, seed).state
    num = den = 0.0
    for key, w0 in init.items():
        if key in trained and torch.is_floating_point(w0) and "running_" not in key:
            num += float((trained[key].double() - w0.double()).square().sum())
            den += float(w0.double().square().sum())
    return math.sqrt(num / den) if den > 0 else None


def flow_label(cfg: ReproduceConfig, row_name: str) -> str:
    flow = ROWS[row_name].flow
    if flow is None:
        return "–"
    if flow == "none":
        return "none"
    if flow == "gt" or cfg.flow == "gt":
        return "exact"
    return "DIS"


def _scores(job: Job) -> Optional[Dict]:
    p = job.run_dir / "scores.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def collect(cfg: ReproduceConfig, jobs: List[Job], states: Dict[str, Tuple[str, str]]) -> Dict:
    """Per-run numbers and per-row summaries (mIoU in percent)."""
    runs, rows, failed = [], [], []
    for job in jobs:
        state, detail = states.get(job.name, ("new", ""))
        rec = {
            "name": job.name,
            "kind": job.kind,
            "row": job.row,
            "seed": job.seed,
            "mode": job.mode,
            "state": state,
            "detail": detail,
            "run_dir": str(job.run_dir),
            "command": job.shell(),
        }
        if job.kind == "train":
            rec["train"] = train_result(job.run_dir)
            rec["train"]["diagnostics"] = train_diagnostics(job.run_dir)
            if state in FINISHED:
                moved = weights_moved(job.run_dir, cfg.arch, job.seed)
                if moved is not None:
                    rec["train"]["diagnostics"]["weights_moved"] = moved
        else:
            s = _scores(job)
            if s is not None:
                if job.mode == "propagate":
                    rec["mIoU"] = s.get("mIoU_mean")
                    rec["per_distance"] = s.get("mIoU_per_distance")
                else:
                    rec["mIoU"] = s.get("mIoU")
        if state == "failed":
            failed.append(f"{job.name}: {detail}")
        runs.append(rec)
    for row_name in cfg.rows:
        row = ROWS[row_name]
        mine = [r for r in runs if r["row"] == row_name]
        trains = [r for r in mine if r["kind"] == "train"]
        ok_trains = [r for r in trains if r["state"] in FINISHED]
        steps = [r["train"]["step"] for r in ok_trains if "step" in r["train"]]
        minutes = [r["train"]["seconds"] / 60 for r in ok_trains if "seconds" in r["train"]]
        diags = [r["train"]["diagnostics"] for r in ok_trains if r["train"]["diagnostics"]]
        summary = {
            "row": row_name,
            "label": row.label,
            "k": row.k,
            "mask": row.mask,
            "flow": flow_label(cfg, row_name),
            "seed_miou": row.seed_miou,
            "modes": {},
            "trains": {
                "done": len(ok_trains),
                "failed": sum(r["state"] == "failed" for r in trains),
                "time_boxed": sum(r["state"] == "time-boxed" for r in trains),
                "n": len(trains),
            },
            "steps_mean": sum(steps) / len(steps) if steps else None,
            "pretrain_minutes_mean": sum(minutes) / len(minutes) if minutes else None,
            "diagnostics": {
                k: sum(d[k] for d in diags) / len(diags)
                for k in (*DIAGNOSTICS, "weights_moved")
                if diags and all(k in d for d in diags)
            },
        }
        for mode in cfg.modes_for(row_name):
            evs = [r for r in mine if r["mode"] == mode]
            vals = [r["mIoU"] for r in evs if r.get("mIoU") is not None]
            mean, std = _mean_std(vals)
            m = {
                "mean": mean,
                "std": std,
                "n": len(vals),
                "values": vals,
                "failed": sum(r["state"] == "failed" for r in evs),
                "pending": sum(r["state"] in ("new", "running") for r in evs),
            }
            if mode == "propagate":
                curves = [r["per_distance"] for r in evs if r.get("per_distance")]
                if curves:
                    n = max(len(c) for c in curves)
                    m["per_distance"] = [
                        _mean_std([c[i] for c in curves if i < len(c) and c[i] is not None])[0] for i in range(n)
                    ]
                    m["per_distance_seeds"] = curves
            summary["modes"][mode] = m
        rows.append(summary)
    return {"rows": rows, "runs": runs, "failed": failed}


def _cell(m: Optional[Dict]) -> str:
    if m is None:
        return "–"
    if m["mean"] is None:
        if m["failed"]:
            return f"failed ({m['failed']})"
        return "pending" if m["pending"] else "n/a"
    text = f"{m['mean']:.2f} ± {m['std']:.2f}" if m["std"] is not None else f"{m['mean']:.2f} (n={m['n']})"
    if m["failed"]:
        text += f", {m['failed']} failed"
    if m["pending"]:
        text += f", {m['pending']} pending"
    return text


def markdown_table(cfg: ReproduceConfig, results: Dict) -> str:
    modes = list(cfg.eval_modes)
    views = f"{cfg.image_size} px ({cfg.grid}×{cfg.grid})"
    head = [
        "Method",
        "Frames k",
        "Flow",
        "Mask",
        "Views (C5 grid)",
        "Pretrainings",
        "Steps (mean)",
        "Pretrain min (mean)",
        *[MODE_TITLES[m] for m in modes],
        "Seed's mIoU (BDD→Cityscapes)",
    ]
    lines = [
        f"Profile {cfg.profile}: {cfg.arch}, views {views}, batch {cfg.batch_size}, "
        f"{'peak lr ' + format(cfg.lr, 'g') if cfg.lr > 0 else 'the config' + chr(39) + 's lr rule'}, "
        f"a {cfg.time_box_s / 60:g}-minute box and {cfg.steps} steps per pretraining; mean ± sample std over seeds "
        f"{','.join(map(str, cfg.seeds))}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in results["rows"]:
        t = r["trains"]
        if r["k"] is None:
            pre = "–"
        else:
            pre = f"{t['done']}/{t['n']}"
            if t["time_boxed"]:
                pre += f" ({t['time_boxed']} boxed)"
            if t["failed"]:
                pre += f", {t['failed']} failed"
        cells = [
            r["label"],
            "–" if r["k"] is None else str(r["k"]),
            r["flow"],
            r["mask"] or "–",
            "–" if r["k"] is None else views,
            pre,
            "–" if r["steps_mean"] is None else f"{r['steps_mean']:.0f}",
            "–" if r["pretrain_minutes_mean"] is None else f"{r['pretrain_minutes_mean']:.1f}",
        ]
        cells += [_cell(r["modes"].get(m)) for m in modes]
        cells.append("–" if r["seed_miou"] is None else f"{r['seed_miou']:g}")
        lines.append("| " + " | ".join(cells) + " |")
    # per seed
    lines += [
        "",
        "Per seed (mIoU %: " + " / ".join(modes) + "; – = not evaluated that way):",
        "",
        "| Row | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " |",
        "|---|" + "|".join("---" for _ in cfg.seeds) + "|",
    ]
    for r in results["rows"]:
        cells = []
        for s in cfg.seeds:
            parts = []
            for m in modes:
                run = [x for x in results["runs"] if x["row"] == r["row"] and x["seed"] == s and x["mode"] == m]
                if not run:
                    parts.append("–")  # not evaluated this way on this row
                    continue
                x = run[0]
                parts.append(f"{x['mIoU']:.2f}" if x.get("mIoU") is not None else x["state"])
            train = [x for x in results["runs"] if x["row"] == r["row"] and x["seed"] == s and x["kind"] == "train"]
            if train and train[0]["train"].get("step") is not None and train[0]["state"] == "time-boxed":
                parts.append(f"[{train[0]['train']['step']} steps, boxed]")
            elif train and train[0]["state"] == "failed":
                parts.append("[pretraining failed]")
            cells.append(" / ".join(parts) or "–")
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    # label propagation per distance
    prop = [r for r in results["rows"] if r["modes"].get("propagate", {}).get("per_distance")]
    if prop:
        n = max(len(r["modes"]["propagate"]["per_distance"]) for r in prop)
        lines += [
            "",
            "Label propagation, mIoU by frame distance (mean over seeds):",
            "",
            "| Row | " + " | ".join(str(d) for d in range(1, n + 1)) + " |",
            "|---|" + "|".join("---" for _ in range(n)) + "|",
        ]
        for r in prop:
            pd = r["modes"]["propagate"]["per_distance"]
            lines.append(
                f"| {r['row']} | "
                + " | ".join("–" if i >= len(pd) or pd[i] is None else f"{pd[i]:.1f}" for i in range(n))
                + " |"
            )
    pre = [r for r in results["rows"] if r["diagnostics"]]
    if pre:
        lines += [
            "",
            "Pretraining diagnostics (means over the last 20% of steps, then over seeds):",
            "",
            "| Method | loss | positive pairs per image | images without positives | FB-rejected flow fraction "
            "| weights moved from init (‖w − w₀‖ / ‖w₀‖) |",
            "|---|---|---|---|---|---|",
        ]
        for r in pre:
            d = r["diagnostics"]
            lines.append(
                "| "
                + " | ".join([r["label"]] + [f"{d[k]:.3f}" if k in d else "–" for k in (*DIAGNOSTICS, "weights_moved")])
                + " |"
            )
    if results["failed"]:
        lines += ["", "Failed runs:", ""] + [f"- {f}" for f in results["failed"]]
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def bar_chart(cfg: ReproduceConfig, results: Dict, path: Path) -> None:
    """Bars of mean mIoU per row (one group per metric), sample-std error bars, per-seed dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    modes = list(cfg.eval_modes)
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(1.7 * len(rows) + 2, 4.4))
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(rows))]
        means = [(r["modes"].get(mode) or {}).get("mean") or 0.0 for r in rows]
        errs = [(r["modes"].get(mode) or {}).get("std") or 0.0 for r in rows]
        ax.bar(xs, means, width * 0.9, yerr=errs, capsize=3, label=MODE_TITLES[mode], alpha=0.8)
        for x, r in zip(xs, rows):
            vals = (r["modes"].get(mode) or {}).get("values", [])
            ax.scatter([x] * len(vals), vals, color="black", s=9, zorder=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["row"] for r in rows], fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(
        f"Synthetic world, frozen {cfg.arch}, views {cfg.image_size} px ({cfg.grid}×{cfg.grid} C5); "
        f"seeds {','.join(map(str, cfg.seeds))}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def propagation_chart(cfg: ReproduceConfig, results: Dict, path: Path) -> bool:
    """Label-propagation mIoU against frame distance, one line per row (mean over seeds, seeds faint).

    Returns False (and draws nothing) when no propagation result exists yet."""
    rows = [r for r in results["rows"] if r["modes"].get("propagate", {}).get("per_distance")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for r in rows:
        m = r["modes"]["propagate"]
        xs = list(range(1, len(m["per_distance"]) + 1))
        (line,) = ax.plot(
            xs, [v if v is not None else float("nan") for v in m["per_distance"]], marker="o", ms=3, label=r["row"]
        )
        for c in m.get("per_distance_seeds", []):
            ax.plot(
                range(1, len(c) + 1),
                [v if v is not None else float("nan") for v in c],
                color=line.get_color(),
                alpha=0.25,
                lw=0.8,
            )
    ax.set_xlabel("frame distance from the labelled first frame")
    ax.set_ylabel("propagated label mIoU (%)")
    ax.set_title(
        f"Label propagation through frozen {cfg.arch} features (held-out videos, seed {cfg.prop_seed})", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True
