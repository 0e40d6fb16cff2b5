"""Small test doubles for the trainer tests, and a driver to run them in a subprocess.

- ``TinyClips``: an in-memory clip source (random frames, zero flows) following the
  ARCHITECTURE.md clip dict, with the reader's metadata API (``num_videos``, ``num_frames``...).
- ``TinyBuilder``: crops and resizes two views with the sample's RNG and makes positives from
  the crop boxes (cell centres within 0.7 of the larger bin diagonal), like the real pipeline
  but without augmentation.
- ``TinyPixPro``: a two-conv encoder + 1×1 projector with a momentum branch, the real
  ``pixpro_loss`` and ``momentum_update`` semantics, so checkpoints are kilobytes.

The optimizer (LARS), LR schedule and momentum schedule are the real ones.

Driver: ``python tests/test_train_support.py RUN_DIR [key=value ...]`` trains with these doubles
and exits with the trainer's code; env ``TINY_STEP_SLEEP`` (seconds) slows every step so a test
can kill it at a random moment; ``TINY_SIGNAL_AT`` sends SIGUSR2 to itself during that step.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TINY_OVERRIDES = [
    "run.epochs=4",
    "run.deterministic=true",
    "run.threads=1",
    "run.device=cpu",
    "data.k=2",
    "data.image_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "optim.warmup_epochs=1",
    "optim.channels_last=false",
    "checkpoint.every_steps=1",
    "checkpoint.keep=2",
    "checkpoint.keep_epochs=[]",
    "log.tensorboard=false",
    "stop.margin_s=0",
]


class TinyClips:
    """``videos`` videos of ``frames`` random uint8 frames (H, W) and zero flows."""

    def __init__(self, videos: int = 12, frames: int = 5, k: int = 2, size=(40, 56), seed: int = 0):
        self.k = k
        self.size = size
        self._frames = [frames + (i % 3) for i in range(videos)]
        self.seed = seed

    @property
    def num_videos(self) -> int:
        return len(self._frames)

    def __len__(self) -> int:
        return self.num_videos

    def num_frames(self, i: int) -> int:
        return self._frames[i]

    def video_name(self, i: int) -> str:
        return f"vid{i:03d}"

    def __getitem__(self, key) -> dict:
        v, t = key
        h, w = self.size
        rng = np.random.default_rng([self.seed, v])
        frames = rng.integers(0, 256, size=(self._frames[v], h, w, 3), dtype=np.uint8)
        h8, w8 = -(-h // 8), -(-w // 8)
        zeros = np.zeros((self.k - 1, 2, h8, w8), np.float32)
        return {
            "frame1": frames[t],
            "frame2": frames[t + self.k - 1],
            "fwd": zeros,
            "bwd": zeros.copy(),
            "video": self.video_name(v),
            "t": int(t),
            "k": self.k,
        }


def _crop(rng, h, w):
    ch = int(rng.integers(h // 2, h + 1))
    cw = int(rng.integers(w // 2, w + 1))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return left, top, cw, ch


def _centres(box, f):
    left, top, cw, ch = box
    u = (np.arange(f) + 0.5) / f
    xs = left + u * (cw - 1)
    ys = top + u * (ch - 1)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], 1), float(np.hypot(cw / f, ch / f))


class TinyBuilder:
    """Two crops of the clip's frames resized to ``image_size``; positives from the boxes."""

    def __init__(self, image_size: int = 32, feat: int = 4, pos_ratio: float = 0.7):
        self.size, self.feat, self.pos_ratio = image_size, feat, pos_ratio

    def _view(self, frame, box):
        left, top, cw, ch = box
        x = torch.from_numpy(frame[top : top + ch, left : left + cw]).permute(2, 0, 1)[None].float() / 255.0
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=True)[0]

    def __call__(self, clip: dict, rng: np.random.Generator) -> dict:
        h, w = clip["frame1"].shape[:2]
        b1, b2 = _crop(rng, h, w), _crop(rng, h, w)
        c1, d1 = _centres(b1, self.feat)
        c2, d2 = _centres(b2, self.feat)
        dist = np.linalg.norm(c1[:, None] - c2[None], axis=2) / max(d1, d2)
        pos12 = torch.from_numpy(dist < self.pos_ratio)
        return {
            "view1": self._view(clip["frame1"], b1),
            "view2": self._view(clip["frame2"], b2),
            "pos12": pos12,
            "pos21": pos12.T.contiguous(),
            "mask_ratio": torch.tensor(0.0),
        }


def tiny_collate(samples: List[dict]):
    from pixpro_of.data.pipeline import Batch

    return Batch(**{k: torch.stack([s[k] for s in samples]) for k in samples[0]})


class TinyPixPro(nn.Module):
    """Encoder (stride 8, with BN) + projector + momentum copies; real pixpro_loss."""

    def __init__(self, width: int = 8, dim: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=4, padding=1),
        )
        self.projector = nn.Sequential(
            nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, dim, 1)
        )
        self.encoder_k = copy.deepcopy(self.encoder)
        self.projector_k = copy.deepcopy(self.projector)
        for p in list(self.encoder_k.parameters()) + list(self.projector_k.parameters()):
            p.requires_grad_(False)

    def online_modules(self):
        return [self.encoder, self.projector]

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        for q, k in ((self.encoder, self.encoder_k), (self.projector, self.projector_k)):
            for pq, pk in zip(q.parameters(), k.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    def forward(self, view1, view2, pos12, pos21):
        from pixpro_of.losses.pixpro_loss import pixpro_loss

        p1 = F.normalize(self.projector(self.encoder(view1)), dim=1)
        p2 = F.normalize(self.projector(self.encoder(view2)), dim=1)
        with torch.no_grad():
            t1 = F.normalize(self.projector_k(self.encoder_k(view1)), dim=1)
            t2 = F.normalize(self.projector_k(self.encoder_k(view2)), dim=1)
        l1, n1 = pixpro_loss(p1, t2, pos12)
        l2, n2 = pixpro_loss(p2, t1, pos21)
        return l1 + l2, {"positive_pair/num": n1.sum() + n2.sum(), "positive_pair/avg": (n1.mean() + n2.mean()) / 2}


def tiny_components():
    from pixpro_of.train.components import Components, FixedClips

    return Components(
        model=lambda cfg: TinyPixPro(),
        clips=lambda cfg, run_dir: FixedClips(TinyClips(k=cfg.data.k)),
        sample_builder=lambda cfg, positives: TinyBuilder(
            cfg.data.image_size, cfg.data.image_size // 8, cfg.data.pos_ratio
        ),
        collate=tiny_collate,
    )


def make_trainer(run_dir, overrides=(), stop=None, trainer_cls=None):
    from pixpro_of.config import load_config
    from pixpro_of.train.trainer import Trainer

    cfg = load_config(None, TINY_OVERRIDES + list(overrides))
    return (trainer_cls or Trainer)(cfg, run_dir, components=tiny_components(), stop=stop)


def _driver(argv: List[str]) -> int:
    from pixpro_of.train.trainer import Trainer

    sleep = float(os.environ.get("TINY_STEP_SLEEP", "0"))
    signal_at = int(os.environ.get("TINY_SIGNAL_AT", "-1"))

    class SlowTrainer(Trainer):
        def train_step(self, batch):
            if self.step == signal_at:
                os.kill(os.getpid(), signal.SIGUSR2)
            out = super().train_step(batch)
            time.sleep(sleep)
            return out

    return make_trainer(argv[0], argv[1:], trainer_cls=SlowTrainer).run()


def test_tiny_clip_follows_the_clip_contract():
    clips = TinyClips(k=3)
    c = clips[(4, 1)]
    assert c["frame1"].dtype == np.uint8 and c["frame1"].shape == (40, 56, 3)
    assert c["fwd"].shape == (2, 2, 5, 7) and c["fwd"].dtype == np.float32
    assert np.array_equal(c["frame2"], clips[(4, 3)]["frame1"])  # frame t + k - 1
    s = TinyBuilder()(c, np.random.default_rng(0))
    assert s["view1"].shape == (3, 32, 32) and s["pos12"].shape == (16, 16)
    assert torch.equal(s["pos21"], s["pos12"].T)


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))
