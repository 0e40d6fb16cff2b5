"""Where a batch's positives are computed: one strategy, chosen once from the config.

:meth:`pixpro_of.config.DataConfig.positives_mode` picks the mode; :func:`make_positives` builds it:

- ``worker`` (:class:`InWorker`): each DataLoader worker computes its sample's positives from the
  stored flows (always for k = 1, and for ``data.flow_source=none``: zero flow, no mask); the batch
  arrives complete.
- ``stored`` (:class:`FromStoredFlows`, ``data.positives_on=device``): the workers pass the stored
  flows on; the batch's positives are computed on the training device.
- ``raft`` (:class:`FromOnlineFlow`, ``data.flow_source=raft``): the workers pass every frame of
  the clip on; the flows are estimated on the training device (:mod:`pixpro_of.data.online_flow`)
  and the positives computed there.

``strategy.carry`` tells the :class:`~pixpro_of.data.pipeline.SampleBuilder` what a sample
carries and ``strategy.reads_frames`` the clip reader what to read; the trainer calls
``strategy.complete(batch)`` on the device and never looks at which fields a batch has.

Where the views are built is a second stage chosen once the same way (``data.decode_on``,
:func:`make_views`), run by the trainer before the positives:

- ``worker`` (:class:`ViewsInWorker`): the DataLoader workers decode and build both views;
- ``device`` (:class:`ViewsOnDevice`): the workers read the JPEG bytes and draw the view
  parameters; the batch is decoded and its views built on the training device
  (:mod:`pixpro_of.data.device_views`). ``views.decodes_in_worker`` tells the reader whether to
  decode.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Callable, Optional, Union

import torch

from pixpro_of.config import POSITIVES_MODES, PositiveConfig, SampleConfig
from pixpro_of.data.pipeline import Batch, batch_positives


class PositivesStrategy(ABC):
    """Base: ``mode`` (one of :data:`pixpro_of.config.POSITIVES_MODES`), ``carry`` (what a sample
    carries, :data:`pixpro_of.data.pipeline.CARRY`), ``on_device`` (whether :meth:`complete`
    does work)."""

    mode = "worker"
    carry = "positives"
    on_device = False

    @property
    def reads_frames(self) -> bool:
        """Whether the reader gives every frame of a clip (and no flows)."""
        return self.carry == "frames"

    @abstractmethod
    def complete(self, batch: Batch) -> Batch:
        """The batch with its positives (on the batch's device)."""


class InWorker(PositivesStrategy):
    """The samples hold their positives already (computed in the DataLoader workers)."""

    def complete(self, batch: Batch) -> Batch:
        if batch.pos12 is None or batch.pos21 is None:
            raise RuntimeError("positives were to be computed in the DataLoader workers, but the batch has none")
        return batch


class FromStoredFlows(PositivesStrategy):
    """Positives of the whole batch on the device, from the stored flows the workers passed on."""

    mode, carry, on_device = "stored", "flows", True

    def __init__(self, cfg: PositiveConfig, feature_size: int):
        self.cfg = cfg
        self.feature_size = int(feature_size)

    def complete(self, batch: Batch) -> Batch:
        return batch.with_positives(batch_positives(batch, batch.fwd, batch.bwd, self.cfg, self.feature_size))


class FromOnlineFlow(PositivesStrategy):
    """Positives of the whole batch on the device, from flows estimated there by ``clip_flow``
    (a :class:`~pixpro_of.data.online_flow.ClipFlow`) from every frame of each clip."""

    mode, carry, on_device = "raft", "frames", True

    def __init__(self, cfg: PositiveConfig, feature_size: int, clip_flow):
        self.cfg = cfg
        self.feature_size = int(feature_size)
        self.clip_flow = clip_flow

    def complete(self, batch: Batch) -> Batch:
        from pixpro_of.data.online_flow import positives_on_the_fly

        return batch.with_positives(positives_on_the_fly(batch, self.clip_flow, self.cfg, self.feature_size))


def make_positives(mode: str, cfg: PositiveConfig, feature_size: int,
                   clip_flow: Optional[Callable[[], object]] = None) -> PositivesStrategy:
    """The strategy for ``mode`` (``DataConfig.positives_mode()``). ``clip_flow``: for ``raft``, a
    function that builds the flow estimator on the device (called here, once)."""
    if mode not in POSITIVES_MODES:
        raise ValueError(f"mode should be one of {POSITIVES_MODES}, got {mode!r}")
    if mode == "worker":
        return InWorker()
    if mode == "stored":
        return FromStoredFlows(cfg, feature_size)
    if clip_flow is None:
        raise ValueError("positives from flow on the fly need a flow estimator (clip_flow)")
    return FromOnlineFlow(cfg, feature_size, clip_flow())


VIEWS_MODES = ("worker", "device")


class ViewsStage(ABC):
    """Base: ``mode`` (``data.decode_on``), ``decodes_in_worker`` (whether the reader decodes),
    ``on_device`` (whether :meth:`complete` does work)."""

    mode = "worker"
    decodes_in_worker = True
    on_device = False

    @abstractmethod
    def complete(self, batch: Batch) -> Batch:
        """The batch with both views (on the batch's device)."""


class ViewsInWorker(ViewsStage):
    """The samples hold their views already (built in the DataLoader workers)."""

    def complete(self, batch: Batch) -> Batch:
        if batch.view1 is None or batch.view2 is None:
            raise RuntimeError("the views were to be built in the DataLoader workers, but the batch has none")
        return batch


class ViewsOnDevice(ViewsStage):
    """Decode the batch's JPEGs on ``device``, ``chunk`` frames at a time, and build both views
    there from the draws the workers made (:func:`pixpro_of.data.device_views.build_views`)."""

    mode, decodes_in_worker, on_device = "device", False, True

    def __init__(self, cfg: SampleConfig, device: Union[str, torch.device], chunk: int = 64,
                 channels_last: bool = False):
        if int(chunk) < 1:
            raise ValueError(f"chunk should be >= 1 frames, got {chunk}")
        self.size = int(cfg.image_size)
        self.device = torch.device(device)
        self.chunk = int(chunk)
        self.channels_last = bool(channels_last)

    def complete(self, batch: Batch) -> Batch:
        from pixpro_of.data.device_views import build_views

        if batch.jpeg_bytes is None or batch.params1 is None:
            raise RuntimeError("the views were to be built on the device, but the batch has no JPEG bytes "
                               "(build its samples with views='device' from clips read with decode=False)")

        def name(b: int, view: int) -> str:
            t = int(batch.t[b]) + (int(batch.k[b]) - 1 if view else 0) if batch.t is not None else "?"
            video = batch.video[b] if b < len(batch.video) else "?"
            return f"video {video!r} frame {t}"

        v1, v2 = build_views(batch.jpeg_bytes, batch.jpeg_spans, batch.params1, batch.params2, self.size,
                             self.device, self.chunk, names=name)
        if self.channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        return replace(batch, view1=v1, view2=v2, jpeg_bytes=None, jpeg_spans=None)


def make_views(mode: str, cfg: SampleConfig, device: Union[str, torch.device], chunk: int = 64,
               channels_last: bool = False) -> ViewsStage:
    """The views stage for ``mode`` (``data.decode_on``)."""
    if mode not in VIEWS_MODES:
        raise ValueError(f"mode should be one of {VIEWS_MODES}, got {mode!r}")
    if mode == "worker":
        return ViewsInWorker()
    return ViewsOnDevice(cfg, device, chunk, channels_last)
