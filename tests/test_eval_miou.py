"""Cityscapes mIoU: a hand-computed example, agreement with cityscapesScripts, label definitions."""

from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest

from pixpro_of.evaluation import labels as L
from pixpro_of.evaluation.miou import ConfusionMatrix, cityscapes_scripts_iou, iou_from_confusion, score_report

# Two 2x4 images. Ground truth in Cityscapes label ids (0 = unlabeled -> ignored), predictions in train ids.
GT_A = np.array([[7, 7, 8, 0], [26, 26, 23, 23]], np.uint8)  # road road sidewalk ignore / car car sky sky
PRED_A = np.array([[0, 1, 1, 13], [13, 0, 10, 10]], np.uint8)
GT_B = np.array([[7, 7, 7, 7], [21, 21, 0, 0]], np.uint8)  # road x4 / vegetation vegetation ignore ignore
PRED_B = np.array([[0, 0, 13, 2], [8, 0, 5, 5]], np.uint8)  # pole (5) only on ignored pixels

# By hand over both images (ignored pixels dropped), IoU = TP / (TP + FP + FN):
HAND = {
    "road": 3 / 8,  # TP 3; FN 3 (->sidewalk, ->car, ->building); FP 2 (car->road, vegetation->road)
    "sidewalk": 1 / 2,  # TP 1; FP 1 (road->sidewalk)
    "building": 0.0,  # no ground truth, predicted once: TP 0, FP 1
    "vegetation": 1 / 2,  # TP 1; FN 1
    "sky": 1.0,  # TP 2
    "car": 1 / 3,  # TP 1; FN 1; FP 1 (the car prediction on an ignored pixel does not count)
}
HAND_MIOU = sum(HAND.values()) / 6  # pole: no ground truth, predicted only on ignored pixels -> NaN, excluded


def _conf():
    cm = ConfusionMatrix()
    for gt, pred in ((GT_A, PRED_A), (GT_B, PRED_B)):
        cm.update(L.label_ids_to_train_ids(gt), pred)
    return cm.conf


def test_miou_equals_hand_computation():
    iou, miou = iou_from_confusion(_conf())
    names = L.class_names()
    for name, value in zip(names, iou):
        if name in HAND:
            assert value == pytest.approx(HAND[name], abs=1e-12), name
        else:
            assert math.isnan(value), name
    assert miou == pytest.approx(HAND_MIOU, abs=1e-12)
    assert HAND_MIOU == pytest.approx(0.4513888889)
    rep = score_report(_conf())
    assert rep["mIoU"] == pytest.approx(100 * HAND_MIOU, abs=1e-3)
    assert rep["class_iou"]["pole"] is None and rep["class_iou"]["car"] == pytest.approx(33.3333, abs=1e-3)
    assert rep["classes_evaluated"] == 6
    assert rep["evaluator"].startswith("cityscapesscripts")


def test_cityscapes_scripts_functions_agree():
    iou, miou = cityscapes_scripts_iou(_conf())
    ref, ref_m = iou_from_confusion(_conf())
    assert miou == pytest.approx(ref_m, abs=1e-12)
    assert all((math.isnan(a) and math.isnan(b)) or a == pytest.approx(b) for a, b in zip(iou, ref))


def test_cityscapes_scripts_file_evaluation_gives_the_same_miou(tmp_path):
    """Run cityscapesScripts' own evaluateImgLists on label-id PNGs of the same example."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    to_label = np.array(L.train_id_to_label_id(), np.uint8)
    preds, gts = [], []
    for name, gt, pred in (("a", GT_A, PRED_A), ("b", GT_B, PRED_B)):
        g, p = tmp_path / f"{name}_gtFine_labelIds.png", tmp_path / f"{name}_pred.png"
        cv2.imwrite(str(g), gt)
        cv2.imwrite(str(p), to_label[pred])
        gts.append(str(g))
        preds.append(str(p))
    args = copy.copy(ev.args)
    args.quiet, args.JSONOutput, args.evalInstLevelScore, args.evalPixelAccuracy = True, False, False, False
    result = ev.evaluateImgLists(preds, gts, args)
    assert result["averageScoreClasses"] == pytest.approx(HAND_MIOU, abs=1e-12)
    for name, value in HAND.items():
        assert result["classScores"][name] == pytest.approx(value, abs=1e-12)


def test_confusion_matrix_rejects_bad_input():
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match="same shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="prediction holds train id 19"):
        cm.update(np.zeros((1, 1), np.uint8), np.full((1, 1), 19, np.uint8))
    cm.update(np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8))  # all ignored: nothing counted
    assert cm.conf.sum() == 0
    _, miou = iou_from_confusion(cm.conf)
    assert math.isnan(miou)


def test_label_definitions_match_cityscapesscripts_and_fallback():
    from cityscapesscripts.helpers.labels import labels

    assert L.classes() == L.FALLBACK_CLASSES
    lut = L.label_to_train_lut()
    for lab in labels:
        if lab.id < 0:
            continue
        want = lab.trainId if 0 <= lab.trainId < 255 else 255
        assert lut[lab.id] == want, lab.name
    assert lut[7] == 0 and lut[26] == 13 and lut[33] == 18 and lut[0] == 255 and lut[34] == 255
    rgb = L.colorize(np.array([[0, 13, 255]], np.uint8))
    assert rgb.tolist() == [[[128, 64, 128], [0, 0, 142], [0, 0, 0]]]
