"""The service's one scoring thread: a bounded queue of jobs, scored in micro-batches.

Requests are queued as :class:`Job`s; the thread takes the oldest one, waits at most
``max_wait_s`` for more (never past ``max_batch``) and scores the batch in one
:func:`~cmdiad.serve.worker.score_batch` call, i.e. one forward pass per route. Under load the
queue fills while a batch is being scored, so batches form without any wait; a lone request
waits ``max_wait_s`` at most. Other work that must run in the scoring thread (loading the
model, so that its thread settings apply) goes through :meth:`Batcher.call`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class Job:
    """One part to score: its uploaded files, its id and the future its result goes to.

    Attributes:
        files: ``{"rgb" | "xyz": (path on disk, client filename)}``.
        part_id: Id of the part (its heatmap URL).
        future: Receives the :class:`~cmdiad.serve.store.Part` or the exception.
        queued: ``time.perf_counter()`` when the job was queued.
    """

    files: dict[str, tuple[Path, str]]
    part_id: str
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Call:
    fn: Callable[[], Any]
    future: Future


class Batcher:
    """A thread scoring queued jobs in batches of at most ``max_batch``.

    Args:
        score_batch: ``score_batch(jobs) -> list[Part | Exception]``, one entry per job in order.
        max_batch: Largest batch (1 scores one job at a time).
        max_wait_s: Longest wait for a batch to fill once a job is there (0: take only what is queued).
        init: Run first in the thread (e.g. setting the intra-op thread count).
    """

    def __init__(self, score_batch: Callable[[list[Job]], list[Any]], *, max_batch: int = 1,
                 max_wait_s: float = 0.002, init: Callable[[], None] | None = None) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.score_batch, self.max_batch, self.max_wait_s, self.init = score_batch, max_batch, max_wait_s, init
        self.batches = 0
        self.jobs = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cmdiad-score", daemon=True)
        self._thread.start()

    def submit(self, files: dict[str, tuple[Path, str]], part_id: str) -> Future:
        """Queue one part; the future receives its Part or its exception."""
        job = Job(files, part_id)
        self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` in the scoring thread, between batches."""
        item = _Call(fn, Future())
        self._queue.put(item)
        return item.future

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the queued work, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        if self.init is not None:
            self.init()
        pending: Any = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is _STOP:
                return
            if isinstance(item, _Call):
                _run_call(item)
                continue
            batch = [item]
            pending = self._fill(batch)
            self._score(batch)

    def _fill(self, batch: list[Job]) -> Any:
        """Add queued jobs to ``batch`` until it is full or the wait is over; returns a non-job item met."""
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(item, Job):
                return item
            batch.append(item)
        return None

    def _score(self, batch: list[Job]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        try:
            outcomes = self.score_batch(batch)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the failure (a 500)
            outcomes = [exc] * len(batch)
        for job, out in zip(batch, outcomes, strict=True):
            if isinstance(out, BaseException):
                job.future.set_exception(out)
            else:
                job.future.set_result(out)


def _run_call(item: _Call) -> None:
    try:
        item.future.set_result(item.fn())
    except Exception as exc:  # noqa: BLE001 - handed to the caller
        item.future.set_exception(exc)
