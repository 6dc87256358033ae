"""Dynamic micro-batching: concurrent callers share encoder batches and get their own answers."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import server.engine
from indexer.network.preprocess import ImageDecodeError
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import create_server
from server.batcher import BatchConfig, DeadlinePassed, MicroBatcher
from server.engine import SearchEngine
from server.service import TrademarkSearchServicer
from tests.conftest import SAMPLES


def _marks(n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((SAMPLES / "registry").glob("*.png"))[:n]]


class Recorder:
    def __init__(self):
        self.sizes: list[int] = []

    def __call__(self, n: int) -> None:
        self.sizes.append(n)


def hits_of(found):
    """The hits of a picture searched whole: its one part, with its one crop."""
    (_, crops), = found
    (hits,) = crops
    return hits


@pytest.fixture
def images():
    return _marks(24)


@pytest.mark.parametrize("lanes", [1, 2])
def test_concurrent_jobs_are_batched_and_each_gets_its_own_hits(engine, images, lanes):
    oracle = engine.search([engine.prepare(b) for b in images], 5)  # one call, no batcher
    rec = Recorder()
    batcher = MicroBatcher(BatchConfig(max_batch=8, max_wait_ms=50, lanes=lanes, threads=2),
                           on_batch=rec)
    try:
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda a: hits_of(batcher.search(engine, [a], 5)[0]), images))
    finally:
        batcher.close()
    assert [[h.serial for h in hits] for hits in got] == [[h.serial for h in hits]
                                                          for hits in oracle]
    assert sum(rec.sizes) == len(images)
    assert max(rec.sizes) > 1 and max(rec.sizes) <= 8  # shared, and never past max_batch


class ThreadLog:
    """What each lane was told to use: (lane's thread name, threads), in order."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def __call__(self, n: int) -> None:
        self.calls.append((threading.current_thread().name, n))


def test_a_lone_request_gets_all_the_threads_in_the_first_lane(engine, images):
    told = ThreadLog()
    batcher = MicroBatcher(BatchConfig(max_batch=8, lanes=2, threads=2), set_threads=told)
    try:
        for image in images[:3]:  # one at a time: the server is never busy
            assert hits_of(batcher.search(engine, [image], 3)[0])
    finally:
        batcher.close()
    assert told.calls == [("encoder-0", 2)]  # set once, kept while it did not change


def test_under_load_the_lanes_encode_side_by_side_on_their_share(engine, images):
    told, rec = ThreadLog(), Recorder()
    lanes_used = set()

    def on_batch(n: int) -> None:
        rec(n)
        lanes_used.add(threading.current_thread().name)

    oracle = engine.search([engine.prepare(b) for b in images[:12]], 3)
    batcher = MicroBatcher(BatchConfig(max_batch=2, max_wait_ms=0, lanes=2, threads=2),
                           on_batch=on_batch, set_threads=told)
    try:
        futures = [batcher.submit(engine, [image], 3) for image in images[:12]]
        got = [hits_of(f.result()[0]) for f in futures]
    finally:
        batcher.close()
    assert [[h.serial for h in g] for g in got] == [[h.serial for h in o] for o in oracle]
    assert lanes_used == {"encoder-0", "encoder-1"} and sum(rec.sizes) == 12
    assert ("encoder-0", 1) in told.calls  # the first lane narrows while others wait
    assert {n for name, n in told.calls if name == "encoder-1"} == {1}  # never wide


def test_a_lane_that_fails_tells_its_callers_and_goes_on(engine, images):
    calls = []

    def broken_once(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("cannot set threads")

    batcher = MicroBatcher(BatchConfig(max_batch=8, lanes=1, threads=2),
                           set_threads=broken_once)
    try:
        with pytest.raises(RuntimeError, match="cannot set threads"):
            batcher.search(engine, [images[0]], 3)
        assert hits_of(batcher.search(engine, [images[1]], 3)[0])  # the lane still serves
    finally:
        batcher.close()


def test_each_job_gets_its_own_k_from_a_shared_batch(engine, images):
    batcher = MicroBatcher(BatchConfig(max_batch=32, max_wait_ms=20))
    try:
        futures = [batcher.submit(engine, [a], k) for a, k in zip(images[:6], [1, 3, 10, 2, 7, 5])]
        # Each as many as the engine needs for its decision: the family margin looks at
        # the first 32 hits, so k up to 32 all get 32 (`decide` cuts them to k).
        depth = engine.rule.depth()
        assert depth == 32 and [len(hits_of(f.result()[0])) for f in futures] == [depth] * 6
        hits = hits_of(futures[2].result()[0])
        assert len(engine.decide(hits, engine.threshold, 10).hits) == 10
    finally:
        batcher.close()


def test_a_job_larger_than_max_batch_is_never_split(engine, images):
    rec = Recorder()
    batcher = MicroBatcher(BatchConfig(max_batch=4, max_wait_ms=0), on_batch=rec)
    try:
        hits = batcher.search(engine, images[:10], 3)
    finally:
        batcher.close()
    assert len(hits) == 10 and rec.sizes == [10]


def test_a_lone_request_does_not_wait_for_company(engine, images):
    # With a 5 s max wait, a lone request that waited would take 5 s.
    batcher = MicroBatcher(BatchConfig(max_batch=32, max_wait_ms=5000))
    try:
        batcher.search(engine, [images[0]], 1)  # warm-up
        t0 = time.perf_counter()
        batcher.search(engine, [images[1]], 1)
        assert time.perf_counter() - t0 < 2.5
    finally:
        batcher.close()


def test_a_job_whose_deadline_passed_in_the_queue_is_skipped(engine, images):
    batcher = MicroBatcher(BatchConfig(max_batch=1, max_wait_ms=0))
    try:
        busy = batcher.submit(engine, images[:8], 1)  # keeps the worker busy for a while
        late = batcher.submit(engine, [images[8]], 1, timeout=0.001)
        with pytest.raises(DeadlinePassed):
            late.result()
        assert len(busy.result()) == 8
    finally:
        batcher.close()


@pytest.mark.parametrize("decode_workers", [0, 2])  # in the encoder thread, in a pool
def test_an_unreadable_image_fails_alone_in_its_batch(engine, images, decode_workers):
    batcher = MicroBatcher(BatchConfig(max_batch=8, max_wait_ms=0, decode_workers=decode_workers))
    try:
        results = batcher.search(engine, [images[0], b"not an image", images[1]], 3)
    finally:
        batcher.close()
    assert isinstance(results[1], ImageDecodeError)
    assert [hits_of(r)[0].serial for r in (results[0], results[2])] == [
        h[0].serial for h in engine.search([engine.prepare(b) for b in images[:2]], 1)]


@pytest.mark.parametrize("decode_workers", [0, 2])
def test_an_image_that_breaks_preprocessing_fails_alone(engine, images, decode_workers,
                                                        monkeypatch):
    real = server.engine.locate

    def locate(data, cfg, region=None, detector=None, map_=map):  # as a 4000x1 JPEG did
        if data == images[1]:
            raise ZeroDivisionError("integer division or modulo by zero")
        return real(data, cfg, region, detector, map_)
    monkeypatch.setattr(server.engine, "locate", locate)
    batcher = MicroBatcher(BatchConfig(max_batch=8, max_wait_ms=0, decode_workers=decode_workers))
    try:
        results = batcher.search(engine, images[:3], 3)
    finally:
        batcher.close()
    assert isinstance(results[1], ImageDecodeError)
    assert "ZeroDivisionError" in str(results[1])
    assert [hits_of(r)[0].serial for r in (results[0], results[2])] == [
        h[0].serial for h in engine.search([engine.prepare(b) for b in (images[0], images[2])],
                                           1)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(BatchConfig(max_batch=0))
    with pytest.raises(ValueError, match="decode_workers"):
        MicroBatcher(BatchConfig(decode_workers=-1))
    with pytest.raises(ValueError, match="lanes"):
        MicroBatcher(BatchConfig(lanes=0))


def test_concurrent_clients_of_a_real_server_share_batches(sample_index, encoder):
    engine = SearchEngine.open(sample_index, encoder)  # the servicer closes it
    servicer = TrademarkSearchServicer(engine, batching=BatchConfig(max_batch=16, max_wait_ms=20))
    server, port, _ = create_server("127.0.0.1:0", servicer)
    server.start()
    marks = _marks(32)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.TrademarkSearchStub(ch)
            expected = [stub.Search(pb.SearchRequest(image=m, k=3), timeout=30).matched_serial
                        for m in marks]
            before = servicer.metrics.batch_size.collect()[0].samples
            start = threading.Barrier(16)

            def call(m):
                start.wait() if marks.index(m) < 16 else None
                return stub.Search(pb.SearchRequest(image=m, k=3), timeout=30).matched_serial

            with ThreadPoolExecutor(16) as pool:
                got = list(pool.map(call, marks))
    finally:
        server.stop(None)
        servicer.close()
    assert got == expected and all(expected)
    count = {s.name: s.value for s in before}
    after = {s.name: s.value for s in servicer.metrics.batch_size.collect()[0].samples}
    name = "trademark_encode_batch_size_count"
    batches = after[name] - count[name]
    assert batches < len(marks)  # some requests were encoded together
