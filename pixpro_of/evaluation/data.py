"""Cityscapes-layout segmentation data: file pairs, training augmentation, validation images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

from pixpro_of.evaluation.labels import IGNORE, label_ids_to_train_ids
from plumbing.errors import UserError

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255
PIXEL_STD = (58.395, 57.12, 57.375)
IMG_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class Pair:
    image: Path
    labels: Path


def list_pairs(root, split: str) -> List[Pair]:
    """All (image, labelIds) pairs of ``split`` under ``root``, sorted; UserError when none or unmatched."""
    root = Path(root)
    img_dir = root / "leftImg8bit" / split
    gt_dir = root / "gtFine" / split
    if not img_dir.is_dir():
        raise UserError(f"{img_dir}: no such folder (expected the Cityscapes layout leftImg8bit/{split}/<city>/)")
    pairs = []
    for img in sorted(img_dir.glob(f"*/*{IMG_SUFFIX}")):
        stem = img.name[: -len(IMG_SUFFIX)]
        gt = gt_dir / img.parent.name / f"{stem}{GT_SUFFIX}"
        if not gt.is_file():
            raise UserError(f"{img}: no ground truth {gt}")
        pairs.append(Pair(img, gt))
    if not pairs:
        raise UserError(f"{img_dir}: no *{IMG_SUFFIX} images in <city>/ folders")
    return pairs


def read_pair(pair: Pair) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 RGB ``[H, W, 3]`` and uint8 train ids ``[H, W]``; UserError for unreadable files."""
    bgr = cv2.imread(str(pair.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{pair.image}: cannot read image")
    lab = cv2.imread(str(pair.labels), cv2.IMREAD_UNCHANGED)
    if lab is None or lab.ndim != 2:
        raise UserError(f"{pair.labels}: cannot read a single-channel label image")
    if lab.shape != bgr.shape[:2]:
        raise UserError(f"{pair.labels}: size {lab.shape[::-1]} differs from its image's {bgr.shape[1::-1]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), label_ids_to_train_ids(lab)


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8/float RGB ``[H, W, 3]`` -> float32 ``[3, H, W]`` with the pretraining mean/std."""
    x = (rgb.astype(np.float32) - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_pair(rgb: np.ndarray, lab: np.ndarray, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Resize image (bilinear) and labels (nearest) by ``scale``; sizes rounded, at least 1 pixel."""
    h, w = lab.shape
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return rgb, lab
    return (
        cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR),
        cv2.resize(lab, (nw, nh), interpolation=cv2.INTER_NEAREST),
    )


def random_crop_pad(rgb: np.ndarray, lab: np.ndarray, crop: Tuple[int, int], rng: np.random.Generator):
    """A random ``crop`` = (h, w) window; sides shorter than the crop are padded (mean colour / 255)."""
    ch, cw = crop
    h, w = lab.shape
    top = int(rng.integers(0, h - ch + 1)) if h > ch else 0
    left = int(rng.integers(0, w - cw + 1)) if w > cw else 0
    rgb, lab = rgb[top : top + ch, left : left + cw], lab[top : top + ch, left : left + cw]
    if lab.shape != (ch, cw):
        ph, pw = ch - lab.shape[0], cw - lab.shape[1]
        mean = np.array(PIXEL_MEAN, np.float32).round().astype(rgb.dtype)
        rgb_p = np.empty((ch, cw, 3), rgb.dtype)
        rgb_p[:] = mean
        rgb_p[: lab.shape[0], : lab.shape[1]] = rgb
        lab_p = np.full((ch, cw), IGNORE, lab.dtype)
        lab_p[: lab.shape[0], : lab.shape[1]] = lab
        assert ph >= 0 and pw >= 0
        rgb, lab = rgb_p, lab_p
    return rgb, lab


class TrainSegDataset:
    """Random training samples: index ``i`` draws its augmentation from ``(seed, i)``.

    Iterate with any sampler; item = (image ``[3, crop_h, crop_w]``, labels ``[crop_h, crop_w]``).
    """

    def __init__(
        self,
        pairs: List[Pair],
        crop: Tuple[int, int],
        scale_range: Tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        seed: int = 0,
        length: int = 1 << 30,
    ):
        self.pairs, self.crop, self.scale_range = list(pairs), tuple(crop), tuple(scale_range)
        self.flip, self.seed, self.length = bool(flip), int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        import torch

        rng = np.random.default_rng([self.seed, int(i)])
        pair = self.pairs[int(rng.integers(len(self.pairs)))]
        rgb, lab = read_pair(pair)
        rgb, lab = resize_pair(rgb, lab, float(rng.uniform(*self.scale_range)))
        rgb, lab = random_crop_pad(rgb, lab, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            rgb, lab = rgb[:, ::-1], lab[:, ::-1]
        return torch.from_numpy(normalize(rgb)), torch.from_numpy(lab.astype(np.int64))


class ValSegDataset:
    """Whole validation images: item = (image ``[3, h, w]`` at ``scale``, train ids ``[H, W]`` at full size, index)."""

    def __init__(self, pairs: List[Pair], scale: float = 1.0):
        self.pairs, self.scale = list(pairs), float(scale)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        import torch

        rgb, lab = read_pair(self.pairs[i])
        if self.scale != 1.0:
            h, w = lab.shape
            rgb = cv2.resize(
                rgb, (max(1, round(w * self.scale)), max(1, round(h * self.scale))), interpolation=cv2.INTER_LINEAR
            )
        return torch.from_numpy(normalize(rgb)), torch.from_numpy(lab.astype(np.int64)), i

    def raw(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """The original uint8 image and train ids (for pictures)."""
        return read_pair(self.pairs[i])
