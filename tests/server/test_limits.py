"""Observability and limits: Prometheus metrics, bounded concurrency, deadlines."""
from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request

import grpc
import pytest

from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import create_server
from server.metrics import Metrics
from server.service import TrademarkSearchServicer
from tests.conftest import ROOT, SAMPLES


def _request(k=1, image=None):
    image = image if image is not None else (SAMPLES / "registry" / "86000000.png").read_bytes()
    return pb.SearchRequest(request_id="m", image=image, k=k)


@pytest.fixture
def served(engine):
    """A fresh servicer with its own metrics and a concurrency limit of 1 RPC."""
    servicer = TrademarkSearchServicer(engine, stream_batch=4, metrics=Metrics())
    server, port, _ = create_server("127.0.0.1:0", servicer, max_concurrent_rpcs=1)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield servicer, pb_grpc.TrademarkSearchStub(ch)
    server.stop(None)


def value(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_metrics_count_answers_by_status_latency_batches_and_index(served):
    servicer, stub = served
    m = servicer.metrics
    stub.Search(_request(), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Search(_request(image=b"junk"), timeout=10)
    items = [_request(), _request(image=b"junk"), _request(), _request()]
    assert len(list(stub.SearchStream(iter(items), timeout=30))) == 4
    assert value(m, "trademark_requests_total", method="Search", code="OK") == 1
    assert value(m, "trademark_requests_total", method="Search", code="INVALID_ARGUMENT") == 1
    assert value(m, "trademark_requests_total", method="SearchStream", code="OK") == 3
    assert value(m, "trademark_requests_total", method="SearchStream",
                 code="INVALID_ARGUMENT") == 1
    assert value(m, "trademark_request_seconds_count", method="Search") == 2
    assert value(m, "trademark_encode_batch_size_sum") == 4  # 1 + 3 good stream items
    assert value(m, "trademark_index_marks") == 300
    assert value(m, "trademark_index_version_info", version="v000001") == 1


def test_metrics_endpoint_serves_prometheus_text(served):
    servicer, stub = served
    stub.Search(_request(), timeout=10)
    port = servicer.metrics.serve("127.0.0.1", 0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'trademark_requests_total{code="OK",method="Search"} 1.0' in text
    assert "trademark_request_seconds_bucket" in text


def test_past_the_concurrency_limit_callers_get_resource_exhausted(served):
    _, stub = served
    release = threading.Event()

    def held_open():  # a stream that keeps its RPC slot until released
        yield _request()
        release.wait(20)

    stream = stub.SearchStream(held_open(), timeout=30)
    first = next(stream)  # the stream is in flight now
    assert first.matched_serial == "86000000"
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(_request(), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    assert list(stream) == []
    assert stub.Search(_request(), timeout=10).matched_serial == "86000000"  # slot is free


def test_an_expired_deadline_is_deadline_exceeded_and_the_server_goes_on(stub):
    # On the shared server (no concurrency limit): the abandoned call may still hold a
    # slot for the length of one encode after the caller gave up.
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(_request(), timeout=0.001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Search(_request(), timeout=10).matched_serial == "86000000"


def test_server_prints_metrics_address_after_listening(sample_index):
    proc = subprocess.Popen([sys.executable, "-m", "server", "--index", str(sample_index),
                             "--port", "0", "--metrics-port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening on 127.0.0.1:")
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "trademark_index_marks 300.0" in page
    finally:
        proc.terminate()
        proc.wait(timeout=15)
