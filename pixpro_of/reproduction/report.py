"""The reproduction's report: per-run numbers and per-row summaries, the markdown table and the bar chart."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from plumbing.atomic import atomic_open
from plumbing.runs import RunLayout
from pixpro_of.reproduction.plan import ROWS, ReproduceConfig
from pixpro_of.reproduction.runner import Task


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
    import csv

    path = RunLayout(run_dir).metrics
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[-max(1, int(len(rows) * tail)):] if rows else []
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


def collect(cfg: ReproduceConfig, out: Path, tasks: List[Task]) -> Dict:
    """Per-run numbers and per-row summaries (mIoU in percent)."""
    by_name = {t.name: t for t in tasks}
    runs, rows = [], []
    for row_name in cfg.rows:
        row = ROWS[row_name]
        summary = {"row": row_name, "label": row.label, "k": row.k, "mask": row.mask, "seed_miou": row.seed_miou,
                   "modes": {}}
        steps, minutes, diags = [], [], []
        for seed in cfg.seeds:
            rid = f"{row_name}-s{seed}"
            train = dict(by_name[rid].result) if rid in by_name else {}
            if train.get("step") is not None:
                steps.append(train["step"])
                minutes.append(train["seconds"] / 60)
                train["diagnostics"] = train_diagnostics(out / "runs" / rid)
                diags.append(train["diagnostics"])
            for mode in cfg.eval_modes:
                eid = f"{rid}-{mode}"
                scores_file = out / "eval" / eid / "scores.json"
                miou = None
                if scores_file.is_file():
                    miou = json.loads(scores_file.read_text()).get("mIoU")
                runs.append({"row": row_name, "seed": seed, "mode": mode, "mIoU": miou,
                             "train": train or None, "scores": str(scores_file) if miou is not None else None})
        for mode in cfg.eval_modes:
            vals = [r["mIoU"] for r in runs if r["row"] == row_name and r["mode"] == mode and r["mIoU"] is not None]
            mean, std = _mean_std(vals)
            summary["modes"][mode] = {"mean": mean, "std": std, "n": len(vals), "values": vals}
        summary["diagnostics"] = {k: sum(d[k] for d in diags) / len(diags)
                                  for k in DIAGNOSTICS if diags and all(k in d for d in diags)}
        summary["steps_mean"] = sum(steps) / len(steps) if steps else None
        summary["pretrain_minutes_mean"] = sum(minutes) / len(minutes) if minutes else None
        rows.append(summary)
    return {"rows": rows, "runs": runs}


def _fmt(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} (n={n})"


def markdown_table(cfg: ReproduceConfig, results: Dict) -> str:
    mode_cols = [f"mIoU {m} (mean ± std)" for m in cfg.eval_modes]
    head = ["Method", "Frames k", "Mask", "Seeds", "Steps (mean)", "Pretrain min (mean)", *mode_cols,
            "Seed's mIoU (BDD→Cityscapes)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results["rows"]:
        cells = [r["label"], "–" if r["k"] is None else str(r["k"]), r["mask"] or "–",
                 str(max(m["n"] for m in r["modes"].values())),
                 "–" if r["steps_mean"] is None else f"{r['steps_mean']:.0f}",
                 "–" if r["pretrain_minutes_mean"] is None else f"{r['pretrain_minutes_mean']:.1f}"]
        cells += [_fmt(r["modes"][m]["mean"], r["modes"][m]["std"], r["modes"][m]["n"]) for m in cfg.eval_modes]
        cells.append("–" if r["seed_miou"] is None else f"{r['seed_miou']:g}")
        lines.append("| " + " | ".join(cells) + " |")
    pre = [r for r in results["rows"] if r["diagnostics"]]
    if pre:
        lines += ["", "Pretraining diagnostics (means over the last 20% of steps, then over seeds):", "",
                  "| Method | loss | positive pairs per image | images without positives | FB-rejected flow fraction |",
                  "|---|---|---|---|---|"]
        for r in pre:
            d = r["diagnostics"]
            lines.append("| " + " | ".join([r["label"]] + [f"{d[k]:.3f}" if k in d else "–" for k in DIAGNOSTICS])
                         + " |")
    return "\n".join(lines) + "\n"


def bar_chart(cfg: ReproduceConfig, results: Dict, path: Path) -> None:
    """Bars of mean mIoU per row (one group per eval mode), sample-std error bars, per-seed dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    n_modes = len(cfg.eval_modes)
    width = 0.8 / n_modes
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.2))
    for j, mode in enumerate(cfg.eval_modes):
        xs = [i + (j - (n_modes - 1) / 2) * width for i in range(len(rows))]
        means = [r["modes"][mode]["mean"] or 0.0 for r in rows]
        errs = [r["modes"][mode]["std"] or 0.0 for r in rows]
        ax.bar(xs, means, width * 0.9, yerr=errs, capsize=4, label=f"{mode} head", alpha=0.8)
        for x, r in zip(xs, rows):
            vals = r["modes"][mode]["values"]
            ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"].replace(", ", "\n", 1) for r in rows], fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"Synthetic world, frozen backbone; mean ± std over seeds {','.join(map(str, cfg.seeds))}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
