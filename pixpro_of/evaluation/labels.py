"""Cityscapes label definitions: label id -> train id lookup, the 19 class names, their colours.

Taken from the ``cityscapesscripts`` package (``cityscapesscripts.helpers.labels``) when it is
installed; otherwise from :data:`FALLBACK_CLASSES`, a copy of its 19 evaluated classes (a test
checks the two agree). Every label id that is not one of the 19 maps to train id 255 (ignore),
as do negative train ids (``license plate``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import numpy as np

NUM_CLASSES = 19
IGNORE = 255

# (train id, name, label id, colour RGB) for the 19 evaluated Cityscapes classes.
FALLBACK_CLASSES = (
    (0, "road", 7, (128, 64, 128)),
    (1, "sidewalk", 8, (244, 35, 232)),
    (2, "building", 11, (70, 70, 70)),
    (3, "wall", 12, (102, 102, 156)),
    (4, "fence", 13, (190, 153, 153)),
    (5, "pole", 17, (153, 153, 153)),
    (6, "traffic light", 19, (250, 170, 30)),
    (7, "traffic sign", 20, (220, 220, 0)),
    (8, "vegetation", 21, (107, 142, 35)),
    (9, "terrain", 22, (152, 251, 152)),
    (10, "sky", 23, (70, 130, 180)),
    (11, "person", 24, (220, 20, 60)),
    (12, "rider", 25, (255, 0, 0)),
    (13, "car", 26, (0, 0, 142)),
    (14, "truck", 27, (0, 0, 70)),
    (15, "bus", 28, (0, 60, 100)),
    (16, "train", 31, (0, 80, 100)),
    (17, "motorcycle", 32, (0, 0, 230)),
    (18, "bicycle", 33, (119, 11, 32)),
)


@lru_cache(maxsize=None)
def classes() -> Tuple[Tuple[int, str, int, Tuple[int, int, int]], ...]:
    """The 19 evaluated classes as (train id, name, label id, colour), in train-id order."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        return FALLBACK_CLASSES
    found = sorted(
        (l.trainId, l.name, l.id, tuple(l.color)) for l in labels if 0 <= l.trainId < IGNORE and not l.ignoreInEval
    )
    return tuple(found)


def class_names() -> List[str]:
    return [c[1] for c in classes()]


def train_id_to_label_id() -> List[int]:
    """Label id of each train id 0..18."""
    return [c[2] for c in classes()]


@lru_cache(maxsize=None)
def label_to_train_lut() -> np.ndarray:
    """uint8 ``[256]`` lookup: label id -> train id (255 for ignored labels)."""
    lut = np.full(256, IGNORE, np.uint8)
    for train_id, _, label_id, _ in classes():
        lut[label_id] = train_id
    return lut


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``*_gtFine_labelIds.png`` array (uint8 ``[H, W]``) to train ids."""
    if label_ids.dtype != np.uint8:
        if label_ids.min() < 0 or label_ids.max() > 255:
            raise ValueError(f"label ids should be in 0..255, got {label_ids.min()}..{label_ids.max()}")
        label_ids = label_ids.astype(np.uint8)
    return label_to_train_lut()[label_ids]


@lru_cache(maxsize=None)
def palette() -> np.ndarray:
    """uint8 ``[256, 3]`` RGB colour per train id; 255 (ignore) and unused ids are black."""
    pal = np.zeros((256, 3), np.uint8)
    for train_id, _, _, colour in classes():
        pal[train_id] = colour
    return pal


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Cityscapes colours for a train-id map: uint8 ``[H, W]`` -> uint8 RGB ``[H, W, 3]``."""
    return palette()[np.asarray(train_ids, np.uint8)]
