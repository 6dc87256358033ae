"""Dynamic micro-batching: images from concurrent callers share one encoder + FAISS call.

One worker thread owns the encoder and the FAISS index (GPU indexes must not be
searched from two threads; batches use the hardware better). Callers (unary RPCs,
stream chunks) submit image bytes and wait on a Future; the worker takes whatever is
queued, up to `max_batch` images, decodes them in its thread pool, then encodes and
searches them as one batch.

Decoding and encoding take turns rather than overlap, on purpose: the encoder's
OpenMP threads synchronise hundreds of times per image, and a decode thread that
preempts one of them stalls the whole team. In turns, both phases have the cores alone.

A lone request does not wait for company: the worker waits `max_wait_ms` for more
only when others are already queued behind the first, i.e. when the server is busy.
Under load, requests that arrive while a batch is being encoded pile up and form the
next batch by themselves.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from indexer.encoder import CPU_BATCH
from indexer.preprocess import ImageDecodeError, Prepared
from server.engine import Hit, SearchEngine

log = logging.getLogger(__name__)


class DeadlinePassed(TimeoutError):
    """The caller's deadline passed before its images reached the encoder."""


@dataclass(frozen=True)
class BatchConfig:
    # The encoder's fastest batch on 2 CPU cores (indexer.encoder.CPU_BATCH); the server
    # passes its encoder's default_batch, GPU_BATCH on a GPU.
    max_batch: int = CPU_BATCH
    max_wait_ms: float = 2.0
    # Threads that decode a batch; 0 decodes in the encoder thread. On 2 cores that was
    # fastest (16 clients: 58 vs 49 requests/s with a 2-thread pool): the pool's hand-offs
    # cost more than its parallelism gave. Cores beyond two go to the pool.
    decode_workers: int = max(0, (os.cpu_count() or 1) - 2)


# What a job gets back for each of its images: its top-k hits, or why it was unreadable.
Result = list[Hit] | ImageDecodeError


@dataclass
class _Job:
    engine: SearchEngine
    images: list[bytes]
    k: int
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """One worker thread that encodes and searches the queued images together."""

    def __init__(self, config: BatchConfig = BatchConfig(), on_batch=None, thread_init=None):
        """`on_batch(n)` is told each batch's size; `thread_init()` runs first thing in
        the worker thread (the server sets torch's thread count there, see server.app)."""
        if config.max_batch < 1 or config.max_wait_ms < 0 or config.decode_workers < 0:
            raise ValueError("max_batch must be >= 1, max_wait_ms and decode_workers >= 0, "
                             f"got {config}")
        self.config = config
        self._on_batch = on_batch or (lambda n: None)
        self._thread_init = thread_init or (lambda: None)
        self._decode_pool = (ThreadPoolExecutor(config.decode_workers,
                                                thread_name_prefix="decode")
                             if config.decode_workers > 0 else None)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="encoder", daemon=True)
        self._worker.start()

    def submit(self, engine: SearchEngine, images: list[bytes], k: int,
               timeout: float | None = None) -> Future:
        """A Future of one Result per image, in order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = _Job(engine, images, k, deadline)
        if not images:
            job.future.set_result([])
        else:
            self._queue.put(job)
        return job.future

    def search(self, engine: SearchEngine, images: list[bytes], k: int,
               timeout: float | None = None) -> list[Result]:
        return self.submit(engine, images, k, timeout).result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)

    # -- the worker -----------------------------------------------------------------
    def _run(self) -> None:
        self._thread_init()
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
        jobs, size = [first], len(first.images)
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
            if size + len(job.images) > self.config.max_batch:
                return jobs, job
            jobs.append(job)
            size += len(job.images)
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
        engine = jobs[0].engine
        try:
            results = self._decode_and_search(engine, [i for job in jobs for i in job.images],
                                              max(job.k for job in jobs))
        except Exception as e:  # noqa: BLE001 - every waiter must hear of it
            log.exception("batch of %d images failed", sum(len(job.images) for job in jobs))
            for job in jobs:
                job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            n = len(job.images)
            job.future.set_result([r[:engine.hits_needed(job.k)] if isinstance(r, list) else r
                                   for r in results[start:start + n]])
            start += n

    def _decode_and_search(self, engine: SearchEngine, images: list[bytes],
                           k: int) -> list[Result]:
        def prepare(data: bytes) -> Prepared | ImageDecodeError:
            try:
                return engine.prepare(data)
            except ImageDecodeError as e:
                return e
        # In this thread when there is no pool, or for one image: every hand-off between
        # threads costs a GIL round trip (lone requests: 23 -> 18 ms on 2 cores).
        if self._decode_pool is None or len(images) == 1:
            results: list = [prepare(i) for i in images]
        else:
            results = list(self._decode_pool.map(prepare, images))
        good = [i for i, r in enumerate(results) if isinstance(r, Prepared)]
        if good:
            self._on_batch(len(good))
            for i, hits in zip(good, engine.search([results[i] for i in good], k)):
                results[i] = hits
        return results

    def _fail_pending(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.future.set_exception(RuntimeError("the server is shutting down"))
