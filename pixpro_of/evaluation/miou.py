"""Cityscapes 19-class IoU, as cityscapesScripts' ``evalPixelLevelSemanticLabeling`` defines it."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np

from pixpro_of.evaluation.labels import IGNORE, NUM_CLASSES, train_id_to_label_id


class ConfusionMatrix:
    """Accumulates ``[num_classes, num_classes]`` pixel counts of (ground truth, prediction)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = int(num_classes)
        self.conf = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image. ``gt``: train ids ``[H, W]`` (255 = ignore); ``pred``: train ids ``[H, W]``."""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} should have the same shape")
        valid = gt != IGNORE
        g = gt[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        if g.size and (g.max() >= self.num_classes or g.min() < 0):
            raise ValueError(f"ground truth holds train id {int(g.max())} outside 0..{self.num_classes - 1} and 255")
        if p.size and (p.max() >= self.num_classes or p.min() < 0):
            raise ValueError(f"prediction holds train id {int(p.max())} outside 0..{self.num_classes - 1}")
        n = self.num_classes
        self.conf += np.bincount(g * n + p, minlength=n * n).reshape(n, n)


def iou_from_confusion(conf: np.ndarray) -> Tuple[List[float], float]:
    """Per-class IoU (fraction, NaN where undefined) and their NaN-skipping mean (see module doc)."""
    conf = np.asarray(conf, np.int64)
    tp = np.diag(conf).astype(np.float64)
    fn = conf.sum(1) - tp
    fp = conf.sum(0) - tp
    denom = tp + fp + fn
    iou = [float(t / d) if d > 0 else float("nan") for t, d in zip(tp, denom)]
    valid = [x for x in iou if not math.isnan(x)]
    return iou, (sum(valid) / len(valid) if valid else float("nan"))


def cityscapes_scripts_iou(conf: np.ndarray) -> Tuple[List[float], float]:
    """The same scores through cityscapesScripts' own functions (needs ``cityscapesscripts``).

    Builds its label-id confusion matrix from the train-id one and calls
    ``getIouScoreForLabel`` for each of the 19 evaluated labels and ``getScoreAverage``.
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    class _Args:  # the attributes those functions read
        pass

    args = _Args()
    big = ev.generateMatrix(args)  # fills args.evalLabels
    ids = train_id_to_label_id()
    conf = np.asarray(conf, np.int64)
    for g in range(conf.shape[0]):
        for p in range(conf.shape[1]):
            big[ids[g], ids[p]] += np.ulonglong(conf[g, p])
    scores = {}
    for t in range(conf.shape[0]):
        scores[t] = ev.getIouScoreForLabel(ids[t], big, args)
    return [float(scores[t]) for t in range(conf.shape[0])], float(ev.getScoreAverage(scores, args))


def score_report(conf: np.ndarray) -> Dict[str, object]:
    """``mIoU`` (percent), per-class IoU (percent, None where NaN), the evaluator used, and checks.

    Uses cityscapesScripts' functions when the package is installed (and asserts they agree with
    :func:`iou_from_confusion`), else the confusion-matrix formula alone.
    """
    from pixpro_of.evaluation.labels import class_names

    iou, miou = iou_from_confusion(conf)
    evaluator = "confusion-matrix (cityscapesscripts not installed)"
    try:
        cs_iou, cs_miou = cityscapes_scripts_iou(conf)
    except ImportError:
        pass
    else:
        same = all((math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12 for a, b in zip(iou, cs_iou))
        if not same or not ((math.isnan(miou) and math.isnan(cs_miou)) or abs(miou - cs_miou) < 1e-12):
            raise RuntimeError("cityscapesScripts and the confusion-matrix IoU disagree")
        evaluator = "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"
    pct = lambda x: None if math.isnan(x) else round(100.0 * x, 4)  # noqa: E731
    return {
        "mIoU": pct(miou),
        "class_iou": {n: pct(x) for n, x in zip(class_names(), iou)},
        "classes_evaluated": sum(not math.isnan(x) for x in iou),
        "evaluator": evaluator,
    }
