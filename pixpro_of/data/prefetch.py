"""Batch N+1's views built while step N runs (``data.decode_on=device``)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields
from typing import Any, Iterator, List, Optional, Tuple

import torch


class ViewsPrefetcher:
    """Iterate ``source``'s LoadedBatch items with their views built one batch ahead.

    ``views``: a :class:`~pixpro_of.data.strategy.ViewsOnDevice`; ``device``: the training device;
    ``channels_last``: as ``Batch.to``; ``epoch``: the epoch of the items (for the bad-sample
    records). ``threaded=False`` builds in the calling thread (same results; for tests and
    debugging). Call :meth:`close` when done (the trainer's loop drops it with its loader).
    """

    def __init__(
        self, source: Iterator[Any], views, device, channels_last: bool = False, epoch: int = 0, threaded: bool = True
    ):
        self.source = source
        self.views = views
        self.device = torch.device(device)
        self.channels_last = bool(channels_last)
        self.epoch = int(epoch)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="views-prefetch") if threaded else None
        self._stream = None
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)
        self._pending: Optional[Future] = None
        self._started = False
        self._ended = False

    # ------------------------------------------------------------------ the iterator
    def __iter__(self) -> "ViewsPrefetcher":
        return self

    def __next__(self):
        if not self._started:
            self._started = True
            self._pending = self._read_and_submit()
        if self._pending is None:
            raise StopIteration
        current = self._pending
        self._pending = self._read_and_submit()  # batch N+1 starts before batch N is handed over
        return self._hand_over(current)

    def close(self, wait: bool = True) -> None:
        """End the thread, after the batch in flight (if any) unless ``wait`` is false (a
        failing trainer does not wait for it)."""
        self._ended = True
        self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)

    # ------------------------------------------------------------------ the work
    def _read_and_submit(self) -> Optional[Future]:
        """The next item of ``source`` as a future of ``(item, seconds)``; None at the end. The
        loader's own exception becomes a future that raises it."""
        if self._ended:
            return None
        try:
            item = next(self.source)
        except StopIteration:
            self._ended = True
            return None
        except Exception as exc:  # noqa: BLE001 - raised in order, when the trainer takes this item
            self._ended = True
            fut: Future = Future()
            fut.set_exception(exc)
            return fut
        if getattr(item, "failed", None) is not None or getattr(item, "batch", None) is None:
            fut = Future()
            fut.set_result((item, None, []))
            return fut
        if self._pool is None:
            fut = Future()
            try:
                fut.set_result(self._build(item))
            except Exception as exc:  # noqa: BLE001 - raised when the trainer takes this item
                fut.set_exception(exc)
            return fut
        return self._pool.submit(self._build, item)

    def _build(self, item) -> Tuple[Any, Optional[float], List[Tuple[int, str]]]:
        """In the thread: the item with its batch on the device and its views, the stage time and
        the dropped samples; a frame that decodes nowhere under ``fail`` (the views stage's
        UserError) gives the item back ``failed`` with a record naming the video and frame."""
        from plumbing.errors import UserError

        ctx = torch.cuda.stream(self._stream) if self._stream is not None else _null()
        with ctx:
            batch = item.batch.to(self.device, channels_last=self.channels_last)
            # the view parameters are read on the host: keep the host copies (no copy there and back)
            batch = _replace_batch_fields(batch, params1=item.batch.params1, params2=item.batch.params2)
            try:
                built, dropped = self.views.build(batch)
            except UserError as exc:
                return self._failed(item, str(exc)), None, []
            seconds = self.views.last_seconds
            if self._stream is not None:
                done = torch.cuda.Event()
                done.record(self._stream)
                done.synchronize()  # blocks this thread only
        return _replace_batch(item, built), seconds, dropped

    def _record(self, message: str, skippable: bool = True):
        from pixpro_of.train.data import BadSample

        return BadSample(
            epoch=self.epoch, position=-1, video_index=-1, t=-1, message=message, skippable=skippable, when=time.time()
        )

    def _failed(self, item, message: str):
        """``item`` as a batch that could not be built: under ``fail`` a frame's record (the
        trainer adds "data.on_bad_sample=skip would skip it"); under ``skip`` (no sample of the
        batch decodes) one that no substitute can mend."""
        from pixpro_of.train.data import LoadedBatch

        return LoadedBatch(None, list(item.bad), self._record(message, skippable=not self.views.skip_bad))

    def _hand_over(self, fut: Future):
        item, seconds, dropped = fut.result()
        if getattr(item, "failed", None) is not None or item.batch is None:
            return item
        if self._stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            for f in fields(item.batch):
                v = getattr(item.batch, f.name)
                if torch.is_tensor(v) and v.is_cuda:
                    v.record_stream(current)
        if seconds is not None:
            self.views.last_seconds = seconds
        if not dropped:
            return item
        return self._with_records(item, dropped)

    def _with_records(self, item, dropped: List[Tuple[int, str]]):
        """The item with one worker-style bad-sample record per dropped sample (``skip``)."""
        from pixpro_of.train.data import LoadedBatch

        return LoadedBatch(item.batch, list(item.bad) + [self._record(msg) for _, msg in dropped], item.failed)


def _replace_batch(item, batch):
    from dataclasses import replace

    return replace(item, batch=batch)


def _replace_batch_fields(batch, **changes):
    from dataclasses import replace

    return replace(batch, **changes)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def prefetch_views(source: Iterator[Any], views, device, channels_last: bool = False, epoch: int = 0):
    """``source`` wrapped in a :class:`ViewsPrefetcher` when ``views`` builds the views on the
    device (``data.decode_on=device``); ``source`` itself otherwise."""
    if not getattr(views, "on_device", False) or not hasattr(views, "build"):
        return source
    return ViewsPrefetcher(source, views, device, channels_last=channels_last, epoch=epoch)
