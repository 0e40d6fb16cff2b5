"""The trainer's component seams: where clips, model, positives, views, samples, optimizer and
schedules come from. :class:`Components` holds the real ones by default; tests inject small
doubles (``Components(clips=...)``), which the loop treats alike.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List

import torch

from hdf5_tools.manifest import resolve_shards
from pixpro_of.config import TrainConfig
from plumbing.errors import UserError


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The real PixPro model from ``cfg.model`` (a :class:`~pixpro_of.config.ModelConfig`)."""
    from pixpro_of.model.pixpro import PixPro

    return PixPro(cfg.model)


class ClipSource(ABC):
    """Where the trainer's clips come from (a component: :class:`ShardClips` by default, tests
    inject in-memory ones with ``Components(clips=...)``).

    ``prepare()`` runs on rank 0 before any rank opens the data; ``node_sets`` says whether the
    data is split into node sets (each node reads its own); ``open(node_index, num_nodes,
    all_frames)`` returns the clip set: ``num_videos``, ``num_frames(i)``, ``video_name(i)``, ``k``
    and ``[(video_index, t)] -> clip dict`` (with every frame of the clip, and no flows, when
    ``all_frames``; with the frames as JPEG bytes, not decoded, when not ``decode``).
    """

    node_sets = False

    def prepare(self) -> None:  # noqa: B027 - a hook: nothing to prepare by default
        """Make the data ready (rank 0 only); nothing by default."""

    @abstractmethod
    def open(self, node_index: int, num_nodes: int, all_frames: bool = False, decode: bool = True):
        """The clip set of node ``node_index`` of ``num_nodes`` (see the class docstring)."""


class FixedClips(ClipSource):
    """A clip set given as it is (one set for every node)."""

    def __init__(self, clips):
        self.clips = clips

    def open(self, node_index: int, num_nodes: int, all_frames: bool = False, decode: bool = True):
        return self.clips


class ShardClips(ClipSource):
    """The clip reader over ``data.shards``, or over the synthetic world packed into the run
    directory when ``data.shards`` is empty and ``data.synthetic`` is on."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)

    def prepare(self) -> None:
        if not self.cfg.data.shards and self.cfg.data.synthetic:
            from pixpro_of.train.synth_data import ensure_synthetic_shards

            ensure_synthetic_shards(self.cfg, self.run_dir)

    def _entries(self) -> list:
        from pixpro_of.train.synth_data import data_entries

        return data_entries(self.cfg, self.run_dir)

    @property
    def node_sets(self) -> bool:  # a manifest (or a folder holding one) assigns shards to node sets
        return any(str(s).endswith(".json") or Path(s).is_dir() for s in self._entries())

    def open(self, node_index: int, num_nodes: int, all_frames: bool = False, decode: bool = True):
        from pixpro_of.data.shards import ShardClipDataset

        paths = resolve_shards(self._entries(), node_index, num_nodes, label="data.shards")
        return ShardClipDataset(paths, self.cfg.data.k, all_frames=all_frames, flows=not all_frames, decode=decode)


def build_positives(cfg: TrainConfig, device: torch.device):
    """The positives strategy of ``cfg.data.positives_mode()`` (:mod:`pixpro_of.data.strategy`),
    with the on-the-fly flow estimator on ``device`` for ``data.flow_source=raft``."""
    from pixpro_of.data.strategy import make_positives
    from pixpro_of.model.pixpro import PixPro

    return make_positives(
        cfg.data.positives_mode(),
        cfg.data,
        PixPro.feature_size(cfg.data.image_size),
        clip_flow=lambda: build_clip_flow(cfg, device),
    )


def build_views(cfg: TrainConfig, device: torch.device):
    """The views stage of ``data.decode_on`` (:func:`pixpro_of.data.strategy.make_views`): in the
    DataLoader workers, or decoded and built on ``device`` in chunks of ``data.decode_chunk`` frames."""
    from pixpro_of.data.strategy import make_views

    return make_views(
        cfg.data.decode_on, cfg.data, device, chunk=cfg.data.decode_chunk, channels_last=cfg.optim.channels_last
    )


def build_sample_builder(cfg: TrainConfig, positives) -> Callable:
    """The augmentation + positives pipeline, ``builder(clip, rng) -> sample dict``; the samples
    carry what the positives strategy ``positives`` needs (``positives.carry``), and the views
    or, with ``data.decode_on=device``, the JPEG bytes and the views' draws (:func:`build_views`)."""
    from pixpro_of.data.pipeline import SampleBuilder
    from pixpro_of.model.pixpro import PixPro

    return SampleBuilder(
        cfg.data, feature_size=PixPro.feature_size(cfg.data.image_size), carry=positives.carry, views=cfg.data.decode_on
    )


def build_clip_flow(cfg: TrainConfig, device: torch.device):
    """The on-the-fly flow estimator (``data.flow_source=raft``) on the training device."""
    d = cfg.data
    from flow.estimators import make_estimator
    from pixpro_of.data.online_flow import ClipFlow

    path = Path(os.path.expanduser(d.raft_weights))
    if not path.is_file():
        raise UserError(
            f"data.raft_weights: {d.raft_weights} is not a file (a RAFT checkpoint is needed for data.flow_source=raft)"
        )
    try:
        est = make_estimator(
            d.raft_model,
            weights=str(path),
            device=device,
            iters=d.raft_iters,
            amp=None if d.raft_amp == "fp32" else d.raft_amp,
        )
    except UserError as exc:  # name the setting
        raise UserError(f"data.raft_weights: {exc}") from None
    return ClipFlow(est, chunk=d.raft_chunk)


def default_collate(samples: List[dict]):
    from pixpro_of.data.pipeline import collate

    return collate(samples)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    from pixpro_of.optim.lars import LARS, param_groups

    modules = model.online_modules() if hasattr(model, "online_modules") else [model]
    return LARS(
        param_groups(modules, cfg.optim.weight_decay),
        lr=lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )


def build_scheduler(cfg: TrainConfig, optimizer, lr: float, warmup_iters: int, total_iters: int):
    from pixpro_of.optim.schedule import build_lr_scheduler

    return build_lr_scheduler(
        optimizer,
        lr,
        warmup_iters,
        total_iters,
        warmup_multiplier=cfg.optim.warmup_multiplier,
        eta_min=cfg.optim.eta_min,
    )


def momentum_schedule(step: int, total_steps: int, base: float) -> float:
    from pixpro_of.model.pixpro import momentum_at

    return momentum_at(step, total_steps, base)


@dataclass
class Components:
    """The pieces the loop trains with. The defaults are the real model, reader, positives and
    pipeline; tests may inject small doubles (the trainer treats every one alike). ``clips(cfg,
    run_dir)`` returns a :class:`ClipSource`; ``positives(cfg, device)`` the positives strategy
    (:mod:`pixpro_of.data.strategy`); ``views(cfg, device)`` the views stage (same module);
    ``sample_builder(cfg, positives)`` the ``(clip, rng) -> sample`` function; ``collate`` makes a
    :class:`~pixpro_of.data.pipeline.Batch`."""

    model: Callable[[TrainConfig], torch.nn.Module] = build_model
    clips: Callable[[TrainConfig, Path], ClipSource] = ShardClips
    positives: Callable[[TrainConfig, torch.device], Any] = build_positives
    views: Callable[[TrainConfig, torch.device], Any] = build_views
    sample_builder: Callable[[TrainConfig, Any], Callable] = build_sample_builder
    collate: Callable[[List[dict]], Any] = default_collate
    optimizer: Callable[..., torch.optim.Optimizer] = build_optimizer
    scheduler: Callable[..., Any] = build_scheduler
    momentum: Callable[[int, int, float], float] = momentum_schedule
