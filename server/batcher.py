"""Dynamic micro-batching: images from concurrent callers share one encoder + FAISS call.

Encoder lanes (threads) take the queued images, up to `max_batch` at a time, decode
them, then encode and search them as one batch (batches use the hardware better).
Callers (unary RPCs, stream chunks) submit image bytes and wait on a Future.

Decoding and encoding take turns in a lane rather than overlap, on purpose: the
encoder's OpenMP threads synchronise hundreds of times per image, and a decode thread
that preempts one of them stalls the whole team.

Lanes and threads. On a CPU the first lane encodes with all the encoder's threads while
it is the only one at work and nothing else is queued: a lone request gets every core.
Under load each lane encodes with its share of the threads (one each on 2 cores),
side by side: no OpenMP team spans the cores then, so nothing stalls at the team's
barriers while another lane decodes or gRPC's threads run, and each lane's decoding
overlaps the other's encoding. On 2 cores, 64 clients: 81-99 requests/s in two lanes,
59-80 in one (bench.load, two A/B runs of two rounds). The other lanes take work only
while the first is busy on its share; the first never widens while another works, so the
cores are never asked for more threads than they have. On a GPU there is one lane (see server.app).

A lone request does not wait for company: a lane waits `max_wait_ms` for more only
when others are already queued behind the first, i.e. when the server is busy.
Under load, requests that arrive while a batch is being encoded pile up and form the
next batch by themselves.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from indexer.network.encoder import lane_threads
from indexer.network.preprocess import ImageDecodeError
from server.engine import Found, Query, SearchEngine, as_query
from server.settings import BatchConfig  # noqa: F401  (the batcher's settings, defined apart)

log = logging.getLogger(__name__)


class DeadlinePassed(TimeoutError):
    """The caller's deadline passed before its images reached the encoder."""


# What a job gets back for each of its images: each part searched (the picture, or each
# mark found in a photograph) with the top hits of each of its crops, or why it was
# unreadable.
Result = Found | ImageDecodeError


@dataclass
class _Job:
    engine: SearchEngine
    images: list[Query | bytes]
    k: int
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Encoder lanes that encode and search the queued images together."""

    def __init__(self, config: BatchConfig = BatchConfig(), on_batch=None, thread_init=None,
                 set_threads: Callable[[int], None] | None = None):
        """`on_batch(n)` is told each batch's size; `thread_init()` runs first thing in each
        lane's thread; `set_threads(n)`, in a lane's thread, sets the threads it encodes and
        searches with, whenever they change (the server sets torch's and FAISS's)."""
        self.config = config
        self._on_batch = on_batch or (lambda n: None)
        self._thread_init = thread_init or (lambda: None)
        self._set_threads = set_threads or (lambda n: None)
        self._decode_pool = (ThreadPoolExecutor(config.decode_workers,
                                                thread_name_prefix="decode")
                             if config.decode_workers > 0 else None)
        # All below under _cond: the queue, and what each lane is doing.
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._busy = [False] * config.lanes
        self._wide = False  # lane 0 is encoding with all the threads
        self._closed = False
        self._lanes = [threading.Thread(target=self._run, args=(lane,), daemon=True,
                                        name=f"encoder-{lane}")
                       for lane in range(config.lanes)]
        for t in self._lanes:
            t.start()

    def submit(self, engine: SearchEngine, images: list[Query | bytes], k: int,
               timeout: float | None = None) -> Future:
        """A Future of one Result per image, in order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = _Job(engine, images, k, deadline)
        if not images:
            job.future.set_result([])
            return job.future
        with self._cond:
            if self._closed:
                job.future.set_exception(RuntimeError("the server is shutting down"))
            else:
                self._pending.append(job)
                self._cond.notify_all()
        return job.future

    def search(self, engine: SearchEngine, images: list[Query | bytes], k: int,
               timeout: float | None = None) -> list[Result]:
        return self.submit(engine, images, k, timeout).result()

    def close(self) -> None:
        """Lanes finish the batch in hand; what is still queued fails."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._lanes:
            t.join(timeout=10)
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            pending, self._pending = self._pending, deque()
        for job in pending:
            job.future.set_exception(RuntimeError("the server is shutting down"))

    # -- the lanes --------------------------------------------------------------------
    def _run(self, lane: int) -> None:
        self._thread_init()
        narrow = lane_threads(self.config.threads, self.config.lanes)
        threads = 0
        while (taken := self._take(lane)) is not None:
            jobs, wide = taken
            want = self.config.threads if wide else narrow
            try:
                if want != threads:
                    self._set_threads(want)
                    threads = want
                self._run_batch(jobs)
            except Exception as e:  # noqa: BLE001 - a lane must not leave callers waiting
                log.exception("encoder lane %d failed a batch", lane)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
            finally:
                with self._cond:
                    self._busy[lane] = False
                    if lane == 0:
                        self._wide = False
                    self._cond.notify_all()

    def _may_take(self, lane: int) -> bool:
        # Lane 0 first, so that a lone request gets all the threads; the others only
        # while lane 0 works on its share of them.
        return bool(self._pending) and (lane == 0 or (self._busy[0] and not self._wide))

    def _take(self, lane: int) -> tuple[list[_Job], bool] | None:
        """The next batch for `lane` and whether to encode it with all the threads (lane 0
        alone at work, nothing else queued); None once closed."""
        with self._cond:
            while not self._closed and not self._may_take(lane):
                self._cond.wait()
            if self._closed:
                return None
            jobs = self._gather()
            wide = lane == 0 and not self._pending and not any(self._busy)
            self._busy[lane] = True
            if lane == 0:
                self._wide = wide
            self._cond.notify_all()
            return jobs, wide

    def _gather(self) -> list[_Job]:
        """The first queued job plus more up to max_batch images; a job that does not fit
        stays first in the queue (a job is never split). Holds _cond (waits on it)."""
        jobs = [self._pending.popleft()]
        size = len(jobs[0].images)
        wait_until = None
        while size < self.config.max_batch:
            if not self._pending:
                # Wait for company only if company was already there: busy server.
                if len(jobs) == 1 or self.config.max_wait_ms == 0 or self._closed:
                    break
                wait_until = wait_until or time.monotonic() + self.config.max_wait_ms / 1e3
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                continue
            if size + len(self._pending[0].images) > self.config.max_batch:
                break
            jobs.append(self._pending.popleft())
            size += len(jobs[-1].images)
        return jobs

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
            need = engine.hits_needed(job.k)
            job.future.set_result([[(part, [hits[:need] for hits in crops]) for part, crops in r]
                                   if isinstance(r, list) else r
                                   for r in results[start:start + n]])
            start += n

    def _decode_and_search(self, engine: SearchEngine, images: list[Query | bytes],
                           k: int) -> list[Result]:
        queries = [as_query(i) for i in images]

        def locate(query: Query) -> Found | ImageDecodeError:
            try:
                return [(part, []) for part in engine.locate(query)]
            except ImageDecodeError as e:
                return e
            except Exception as e:  # noqa: BLE001 - one image must not fail its batch
                # A malformed file can make Pillow (or our own steps) raise what no
                # decoder should; the caller hears of it, the traceback goes to the log.
                size = len(query.image)
                log.exception("preparing an image of %d bytes failed", size)
                return ImageDecodeError(f"cannot decode image ({size} bytes): "
                                        f"{type(e).__name__}: {e}")
        # In this thread when there is no pool, or for one image: every hand-off between
        # threads costs a GIL round trip (lone requests: 23 -> 18 ms on 2 cores).
        if self._decode_pool is None or len(queries) == 1:
            results: list = [locate(q) for q in queries]
        else:
            results = list(self._decode_pool.map(locate, queries))
        # Every crop of every part of every readable picture in one encoder batch.
        where = [(i, j, crop) for i, r in enumerate(results) if isinstance(r, list)
                 for j, (part, _) in enumerate(r) for crop in part.crops]
        if where:
            self._on_batch(len(where))
            found = engine.search([crop for _, _, crop in where], k,
                                  [queries[i].filters for i, _, _ in where])
            for (i, j, _), hits in zip(where, found):
                results[i][j][1].append(hits)  # the part's crops, in order
        return results
