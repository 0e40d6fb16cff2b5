"""Where a batch's positives are computed: one strategy, chosen once from the config."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import fields, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from pixpro_of.config import POSITIVES_MODES, PositiveConfig, SampleConfig
from pixpro_of.data.pipeline import Batch, batch_positives
from plumbing.errors import UserError

log = logging.getLogger(__name__)


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


def make_positives(
    mode: str, cfg: PositiveConfig, feature_size: int, clip_flow: Optional[Callable[[], object]] = None
) -> PositivesStrategy:
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
    there from the draws the workers made (:func:`pixpro_of.data.device_views.build_views`).

    A frame the device decoder refuses is decoded on the host; one that neither decodes follows
    ``cfg.on_bad_sample`` (``data.on_bad_sample``): ``fail`` raises a one-line UserError naming the
    video and frame, ``skip`` drops the sample from the batch (:meth:`build` returns the messages;
    the trainer's :class:`~pixpro_of.data.prefetch.ViewsPrefetcher` turns them into the same
    bad-sample records the workers make, counted against ``data.bad_sample_budget``).
    ``last_seconds``: the views stage's time for the batch last completed (CUDA events on CUDA,
    the host clock on CPU); set by the prefetcher for the batch it hands over.
    """

    mode, decodes_in_worker, on_device = "device", False, True

    def __init__(
        self, cfg: SampleConfig, device: Union[str, torch.device], chunk: int = 64, channels_last: bool = False
    ):
        if int(chunk) < 1:
            raise ValueError(f"chunk should be >= 1 frames, got {chunk}")
        self.size = int(cfg.image_size)
        self.device = torch.device(device)
        self.chunk = int(chunk)
        self.channels_last = bool(channels_last)
        self.skip_bad = getattr(cfg, "on_bad_sample", "fail") == "skip"
        self.last_seconds: Optional[float] = None

    @staticmethod
    def frame_name(batch: Batch, b: int, view: int) -> str:
        """``video 'NAME' frame T`` of sample ``b``'s view ``view`` (0 or 1) frame."""
        t = int(batch.t[b]) + (int(batch.k[b]) - 1 if view else 0) if batch.t is not None else "?"
        video = batch.video[b] if b < len(batch.video) else "?"
        return f"video {video!r} frame {t}"

    def build(self, batch: Batch) -> Tuple[Batch, List[Tuple[int, str]]]:
        """``(batch with both views, dropped)``: ``dropped`` lists ``(sample index in the given
        batch, one-line message)`` of the samples left out because a frame of theirs decodes
        nowhere (only with ``on_bad_sample=skip``; with ``fail`` that raises a UserError). Sets
        :attr:`last_seconds`."""
        from pixpro_of.data.device_views import build_views

        if batch.jpeg_bytes is None or batch.params1 is None:
            raise RuntimeError(
                "the views were to be built on the device, but the batch has no JPEG bytes "
                "(build its samples with views='device' from clips read with decode=False)"
            )
        bad: Optional[List[Tuple[int, int, str]]] = [] if self.skip_bad else None
        with stage_timer(self.device) as clock:
            v1, v2 = build_views(
                batch.jpeg_bytes,
                batch.jpeg_spans,
                batch.params1,
                batch.params2,
                self.size,
                self.device,
                self.chunk,
                names=lambda b, v: self.frame_name(batch, b, v),
                bad=bad,
            )
            if self.channels_last:
                v1 = v1.contiguous(memory_format=torch.channels_last)
                v2 = v2.contiguous(memory_format=torch.channels_last)
        self.last_seconds = clock.seconds
        out = replace(batch, view1=v1, view2=v2, jpeg_bytes=None, jpeg_spans=None)
        dropped: Dict[int, str] = {}
        for b, _, msg in bad or ():
            dropped.setdefault(b, msg)
        if not dropped:
            return out, []
        keep = [b for b in range(v1.shape[0]) if b not in dropped]
        if not keep:
            raise UserError(f"no sample of the batch decodes; the first: {dropped[min(dropped)]}")
        return select_samples(out, keep), sorted(dropped.items())

    def complete(self, batch: Batch) -> Batch:
        if batch.jpeg_bytes is None and batch.view1 is not None and batch.view2 is not None:
            return batch  # built ahead (pixpro_of.data.prefetch); its time is in last_seconds
        out, dropped = self.build(batch)
        for _, msg in dropped:
            log.warning("dropped a sample whose frame decodes nowhere: %s", msg)
        return out


def select_samples(batch: Batch, keep: Sequence[int]) -> Batch:
    """``batch`` with only the samples ``keep`` (indices into its first dimension), in that order:
    every per-sample tensor (first dimension = the batch size) and the video names; the one
    JPEG buffer of the batch, if still there, stays whole (its spans are per sample)."""
    n = batch.view1.shape[0] if batch.view1 is not None else len(batch.video)
    index = torch.tensor(list(keep), dtype=torch.long)
    changes: Dict[str, object] = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        if f.name != "jpeg_bytes" and torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n:
            changes[f.name] = v.index_select(0, index.to(v.device))
    if batch.video:
        changes["video"] = [batch.video[i] for i in keep]
    return replace(batch, **changes)


class stage_timer:
    """``with stage_timer(device) as clock: ...`` then ``clock.seconds``: CUDA events on the
    current stream for a CUDA device (waited for at the end of the block: the caller is about to
    need the result anyway), the host's performance counter otherwise."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: Optional[float] = None

    def __enter__(self) -> "stage_timer":
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        if self.device.type == "cuda":
            self._end.record(torch.cuda.current_stream(self.device))
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def make_views(
    mode: str, cfg: SampleConfig, device: Union[str, torch.device], chunk: int = 64, channels_last: bool = False
) -> ViewsStage:
    """The views stage for ``mode`` (``data.decode_on``)."""
    if mode not in VIEWS_MODES:
        raise ValueError(f"mode should be one of {VIEWS_MODES}, got {mode!r}")
    if mode == "worker":
        return ViewsInWorker()
    return ViewsOnDevice(cfg, device, chunk, channels_last)
