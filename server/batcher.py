"""Dynamic micro-batching: images from concurrent callers share one encoder + FAISS call.

The encoder costs far more per call than per image at small batches (one image ~30 ms
on 2 CPU cores, eight ~200 ms), and FAISS GPU indexes must not be searched from two
threads. So one worker thread owns both: callers (unary RPCs, stream chunks) submit
prepared images and wait on a Future; the worker takes whatever is queued, up to
`max_batch`, and runs it as one batch.

A lone request does not wait for company: the worker waits `max_wait_ms` for more
only when others are already queued behind the first, i.e. when the server is busy.
Under load, requests that arrive while a batch is being encoded pile up and form the
next batch by themselves.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from server.engine import Hit, SearchEngine

log = logging.getLogger(__name__)


class DeadlinePassed(TimeoutError):
    """The caller's deadline passed before its images reached the encoder."""


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 32
    max_wait_ms: float = 2.0


@dataclass
class _Job:
    engine: SearchEngine
    arrays: list[np.ndarray]
    k: int
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """One worker thread that encodes and searches the queued images together."""

    def __init__(self, config: BatchConfig = BatchConfig(), on_batch=None):
        if config.max_batch < 1 or config.max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {config}")
        self.config = config
        self._on_batch = on_batch or (lambda n: None)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="encoder", daemon=True)
        self._worker.start()

    def submit(self, engine: SearchEngine, arrays: list[np.ndarray], k: int,
               timeout: float | None = None) -> Future:
        """A Future of the top-k hits of each array (list[list[Hit]])."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = _Job(engine, arrays, k, deadline)
        if not arrays:
            job.future.set_result([])
        else:
            self._queue.put(job)
        return job.future

    def search(self, engine: SearchEngine, arrays: list[np.ndarray], k: int,
               timeout: float | None = None) -> list[list[Hit]]:
        return self.submit(engine, arrays, k, timeout).result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    # -- the worker -----------------------------------------------------------------
    def _run(self) -> None:
        carry: _Job | None = None
        while True:
            first = carry or self._queue.get()
            if first is None:
                break
            jobs, carry = self._gather(first)
            self._run_batch(jobs)
        self._fail_pending()

    def _gather(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """`first` plus queued jobs up to max_batch images; a job that does not fit is
        carried to the next batch (a job is never split)."""
        jobs, size = [first], len(first.arrays)
        wait_until = None
        while size < self.config.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                # Wait for company only if company was already there: busy server.
                if len(jobs) == 1 or self.config.max_wait_ms == 0:
                    break
                wait_until = wait_until or time.monotonic() + self.config.max_wait_ms / 1e3
                try:
                    job = self._queue.get(timeout=max(0.0, wait_until - time.monotonic()))
                except queue.Empty:
                    break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            if size + len(job.arrays) > self.config.max_batch:
                return jobs, job
            jobs.append(job)
            size += len(job.arrays)
        return jobs, None

    def _run_batch(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.deadline is not None and now > job.deadline:
                job.future.set_exception(DeadlinePassed("deadline passed while queued"))
            elif job.future.set_running_or_notify_cancel():
                live.append(job)
        # Group by engine: a reload may have swapped it between two callers.
        by_engine: dict[int, list[_Job]] = {}
        for job in live:
            by_engine.setdefault(id(job.engine), []).append(job)
        for group in by_engine.values():
            self._search_group(group)

    def _search_group(self, jobs: list[_Job]) -> None:
        arrays = [a for job in jobs for a in job.arrays]
        try:
            self._on_batch(len(arrays))
            hits = jobs[0].engine.search(arrays, max(job.k for job in jobs))
        except Exception as e:  # noqa: BLE001 - every waiter must hear of it
            log.exception("batch of %d images failed", len(arrays))
            for job in jobs:
                job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            n = len(job.arrays)
            job.future.set_result([h[:job.k] for h in hits[start:start + n]])
            start += n

    def _fail_pending(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.future.set_exception(RuntimeError("the server is shutting down"))
