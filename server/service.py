"""gRPC servicer: the boundary where engine errors become status codes."""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import grpc

from indexer.index.store import IndexFormatError
from indexer.network.encoder import CPU_BATCH
from indexer.network.preprocess import ImageDecodeError
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.batcher import BatchConfig, DeadlinePassed, MicroBatcher
from indexer.index.filters import Filter
from server.engine import (
    Answer, Hit, InvalidRequest, MarkAnswer, Query, SearchEngine, check_threshold)
from server.metrics import Metrics

log = logging.getLogger(__name__)

_END = object()


@dataclass
class _Item:
    """One request of a stream on its way through a batch."""

    request: pb.SearchRequest
    k: int = 0
    threshold: float | None = None  # the request's; None: the engine's defaults
    query: Query | None = None
    error: pb.Error | None = None
    answer: Answer | None = None


def _error(code: grpc.StatusCode, message: str) -> pb.Error:
    return pb.Error(code=code.value[0], message=message)


def _matches(hits: list[Hit]) -> list[pb.Match]:
    return [pb.Match(serial=h.serial, score=h.score, rank=r, name=h.name,
                     same_mark=h.same_mark, metadata=h.metadata, text=h.text,
                     text_score=h.text_score)
            for r, h in enumerate(hits, start=1)]


def _mark(m: MarkAnswer) -> pb.MarkAnswer:
    x, y, w, h = m.box
    return pb.MarkAnswer(box=pb.Region(x=x, y=y, width=w, height=h), exists=m.exists,
                         matched_serial=m.matched_serial, top_score=m.top_score,
                         confidence=m.confidence, matches=_matches(m.hits),
                         detection_score=m.detected, words=m.words, words_score=m.words_score,
                         matched_by=m.matched_by)


def to_response(request_id: str, answer: Answer) -> pb.SearchResponse:
    return pb.SearchResponse(
        request_id=request_id, exists=answer.exists, matched_serial=answer.matched_serial,
        top_score=answer.top_score, confidence=answer.confidence, threshold=answer.threshold,
        filtered=answer.candidates is not None, candidates=answer.candidates or 0,
        matches=_matches(answer.hits), marks=[_mark(m) for m in answer.marks],
        words=answer.words, words_score=answer.words_score, matched_by=answer.matched_by,
        words_threshold=answer.words_threshold or 0.0)


def to_query(engine: SearchEngine, request: pb.SearchRequest) -> Query:
    """The request's image, region, filters and words; InvalidRequest for a bad region,
    filter or text."""
    region = None
    if request.HasField("region"):
        r = request.region
        region = engine.check_region((r.x, r.y, r.width, r.height))
    filters = tuple(Filter(f.column, tuple(v.strip() for v in f.values if v.strip()))
                    for f in request.filters)
    engine.allowed(filters)  # an unknown column is refused here, before any decoding
    text = engine.check_text(request.text)
    if not request.image and not text:
        raise InvalidRequest("image is empty (0 bytes) and there is no text: send the "
                             "mark's picture, its words, or both")
    if region is not None and not request.image:
        raise InvalidRequest("a region needs an image to cut it from")
    return Query(request.image, region, filters, text, request.read_words)


class TrademarkSearchServicer(pb_grpc.TrademarkSearchServicer):
    def __init__(self, engine: SearchEngine | None, stream_batch: int = CPU_BATCH,
                 metrics: Metrics | None = None,
                 loader: Callable[[], SearchEngine] | None = None,
                 batching: BatchConfig = BatchConfig(), encoder_thread_init=None,
                 set_threads: Callable[[int], None] | None = None):
        self.engine = engine
        self.stream_batch = stream_batch
        self.metrics = metrics or Metrics()
        self._loader = loader
        self._reload_lock = threading.Lock()
        self.batcher = MicroBatcher(batching, on_batch=self.metrics.batch_size.observe,
                                    thread_init=encoder_thread_init, set_threads=set_threads)
        if engine is not None:
            self.metrics.set_index(engine.index.index.ntotal, engine.index.manifest.version)

    def close(self) -> None:
        self.batcher.close()
        if self.engine is not None:
            self.engine.close()

    def reload(self) -> tuple[str, SearchEngine]:
        """Load the live version and swap it in; IndexFormatError leaves the old one serving.

        Requests read `self.engine` once, so those in flight finish on the engine they
        started with; the old engine is left to the garbage collector rather than closed
        under their feet.
        """
        if self._loader is None:
            raise IndexFormatError("this server was not started from an index directory")
        with self._reload_lock:
            previous = self.engine.index.manifest.version if self.engine else ""
            engine = self._loader()
            self.engine = engine
        self.metrics.set_index(engine.index.index.ntotal, engine.index.manifest.version)
        log.info("reloaded: version %s -> %s, %d marks", previous or "none",
                 engine.index.manifest.version, engine.index.index.ntotal)
        return previous, engine

    def try_reload(self) -> None:
        try:
            self.reload()
        except IndexFormatError as e:
            log.error("reload failed, still serving the previous version: %s", e)

    def Reload(self, request, context):
        with self.metrics.observe("Reload", context):
            try:
                previous, engine = self.reload()
            except IndexFormatError as e:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"reload failed, still serving the previous version: {e}")
            return pb.ReloadResponse(previous_version=previous, count=engine.index.index.ntotal,
                                     index_version=engine.index.manifest.version)

    def _engine(self, context) -> SearchEngine:
        engine = self.engine  # read once: a reload may swap it meanwhile
        if engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no index is loaded; try again shortly")
        return engine

    def _check(self, engine: SearchEngine, request: pb.SearchRequest) -> _Item:
        """k, threshold, region and filters; the image itself is decoded by the batcher."""
        item = _Item(request)
        try:
            item.k = engine.check_k(request.k if request.HasField("k") else None)
            item.threshold = (check_threshold(request.threshold)
                              if request.HasField("threshold") else None)
            item.query = to_query(engine, request)
        except InvalidRequest as e:
            item.error = _error(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return item

    def Search(self, request, context):
        with self.metrics.observe("Search", context):
            engine = self._engine(context)
            with engine.serving():
                return self._search(engine, request, context)

    def _search(self, engine: SearchEngine, request, context):
        item = self._check(engine, request)
        if item.error is not None:
            log.info("Search %r refused: %s", request.request_id, item.error.message)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, item.error.message)
        if not item.query.image:  # words alone
            return to_response(request.request_id, engine.search_text(
                item.query.text, item.k, item.query.filters))
        try:
            # Queued with other callers' images; skipped if the caller gives up first.
            found = self.batcher.search(engine, [item.query], item.k,
                                        context.time_remaining())[0]
        except DeadlinePassed as e:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        if isinstance(found, ImageDecodeError):
            log.info("Search %r refused: %s", request.request_id, found)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(found))
        answer = engine.respond(found, item.query, item.threshold, item.k)
        log.debug("Search %r: exists=%s top=%s %.4f, %d marks", request.request_id,
                  answer.exists, answer.hits[0].serial if answer.hits else "-",
                  answer.top_score, len(answer.marks))
        return to_response(request.request_id, answer)

    def SearchStream(self, request_iterator, context):
        """Chunks of up to `stream_batch` items go to the batcher (decoded and encoded there).

        While more requests wait, two chunks are queued at once, so the batcher goes on
        to the next without waiting for this thread; answers leave in request order.
        """
        engine = self._engine(context)
        pending: queue.Queue = queue.Queue(maxsize=4 * self.stream_batch)
        threading.Thread(target=self._read_stream, args=(request_iterator, pending, context),
                         daemon=True, name="stream-reader").start()
        # Counted as two calls: the batcher encodes its next chunk while one is answered.
        with engine.serving(calls=2):
            yield from self._stream(engine, pending)

    def _stream(self, engine: SearchEngine, pending: queue.Queue):
        in_flight: deque[tuple[list[_Item], Future]] = deque()
        done = False
        while not done:
            batch = [pending.get()]
            while batch[-1] is not _END and len(batch) < self.stream_batch:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is _END
            requests = [r for r in batch if r is not _END]
            if requests:
                in_flight.append(self._submit_chunk(engine, requests))
            # Answer a chunk as soon as nothing else is waiting to be decoded: a caller
            # that sends one item at a time must not wait for its next item.
            while in_flight and (done or len(in_flight) > 1 or pending.empty()
                                 or in_flight[0][1].done()):
                yield from self._answer_chunk(engine, *in_flight.popleft())

    @staticmethod
    def _read_stream(request_iterator, pending: queue.Queue, context) -> None:
        """Move requests into `pending` so the answering side can take them in batches."""
        try:
            for request in request_iterator:
                while context.is_active():
                    try:
                        pending.put(request, timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except grpc.RpcError:
            log.info("client ended the stream early")
        finally:
            pending.put(_END)

    def _submit_chunk(self, engine: SearchEngine, requests: list) -> tuple[list[_Item], Future]:
        items = [self._check(engine, r) for r in requests]
        for it in items:
            if it.error is None and not it.query.image:  # words alone: answered here
                it.answer = engine.search_text(it.query.text, it.k, it.query.filters)
        good = [it for it in items if it.error is None and it.answer is None]
        k = max((it.k for it in good), default=1)
        return items, self.batcher.submit(engine, [it.query for it in good], k)

    def _answer_chunk(self, engine: SearchEngine, items: list[_Item],
                      future: Future) -> list[pb.SearchResponse]:
        pictures = [it for it in items if it.error is None and it.answer is None]
        for it, found in zip(pictures, future.result()):
            if isinstance(found, ImageDecodeError):
                it.error = _error(grpc.StatusCode.INVALID_ARGUMENT, str(found))
            else:
                it.answer = engine.respond(found, it.query, it.threshold, it.k)
        good = [it for it in items if it.error is None]
        out = []
        for it in items:
            if it.error is not None:
                log.info("SearchStream item %r failed: %s", it.request.request_id,
                         it.error.message)
                out.append(pb.SearchResponse(request_id=it.request.request_id, error=it.error))
            else:
                out.append(to_response(it.request.request_id, it.answer))
        self.metrics.count("SearchStream", grpc.StatusCode.OK, len(good))
        self.metrics.count("SearchStream", grpc.StatusCode.INVALID_ARGUMENT, len(items) - len(good))
        return out

    def GetIndexInfo(self, request, context):
        with self.metrics.observe("GetIndexInfo", context):
            return self._index_info(self._engine(context))

    def _index_info(self, engine: SearchEngine) -> pb.IndexInfo:
        m = engine.index.manifest
        return pb.IndexInfo(
            count=engine.index.index.ntotal, dim=m.dim, metric=m.metric,
            encoder=engine.encoder.identity.short(), index_type=m.index_type,
            threshold=engine.threshold, index_version=m.version, created=m.created,
            max_k=engine.max_k, threshold_method=m.threshold_method,
            decision=engine.rule.kind, family_similarity=engine.rule.family_similarity or 0.0,
            filterable_columns=engine.filter_index.columns,
            words_threshold=engine.words_threshold or 0.0,
            marks_with_words=m.words_calibration.get("marks_with_words", 0))

    def GetThumbnails(self, request, context):
        with self.metrics.observe("GetThumbnails", context):
            return self._thumbnails(self._engine(context), request, context)

    def _thumbnails(self, engine: SearchEngine, request, context) -> pb.GetThumbnailsResponse:
        if len(request.serials) > engine.max_k:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"at most {engine.max_k} serials per call, got {len(request.serials)}")
        return pb.GetThumbnailsResponse(thumbnails=[
            pb.Thumbnail(serial=s, name=n, image=img)
            for s, n, img in engine.thumbnails(list(request.serials))])
