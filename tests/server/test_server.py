"""A real gRPC server on a free loopback port, answering real marks."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import Readiness, add_health, create_server
from server.service import TrademarkSearchServicer
from tests.conftest import DATA, ROOT, SAMPLES, sample_queries

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def registered(serial: str) -> bytes:
    return (SAMPLES / "registry" / f"{serial}.png").read_bytes()


def search(stub, image: bytes, k: int | None = 5, **kw) -> pb.SearchResponse:
    req = pb.SearchRequest(request_id="r", image=image, **kw)
    if k is not None:
        req.k = k
    return stub.Search(req, timeout=30)


def test_registered_mark_is_found_first(stub):
    resp = search(stub, registered("86000000"))
    assert resp.exists and resp.matched_serial == "86000000"
    assert resp.matches[0].serial == "86000000" and resp.matches[0].rank == 1
    assert resp.matches[0].name == "Starling Bank"
    # Not 1.0: the mark is stored as the mean over itself and its variants (build default).
    assert 0.9 < resp.top_score < 1.0 and resp.request_id == "r"
    scores = [m.score for m in resp.matches]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert 0 < resp.confidence < resp.top_score


def test_decision_score_does_not_depend_on_k(stub):
    answers = [search(stub, registered("86000296"), k=k) for k in (1, 3, 50)]
    assert len({round(a.confidence, 5) for a in answers}) == 1
    assert [len(a.matches) for a in answers] == [1, 3, 50]
    full = answers[-1].matches
    expected = full[0].score - sum(m.score for m in full[1:6]) / 5
    assert answers[0].confidence == pytest.approx(expected, abs=1e-5)


MILD_EDITS = {"identity", "jpeg", "crop", "rotate", "flip", "text", "blur", "combo"}


def test_edited_copies_of_registered_marks_rank_first(stub):
    queries = [q for q in sample_queries("known") if q["transform"] in MILD_EDITS]
    assert len(queries) >= 10
    for q in queries:
        resp = search(stub, q["path"].read_bytes())
        assert resp.matches[0].serial == q["expected_serial"], q["file"]


def test_unregistered_marks_mostly_do_not_exist(stub):
    unknown = sample_queries("unknown")
    said_exists = sum(search(stub, q["path"].read_bytes()).exists for q in unknown)
    assert said_exists <= 0.1 * len(unknown)
    # A photo of a cat is no registered logo.
    resp = search(stub, (DATA / "chelsea.jpg").read_bytes())
    assert not resp.exists and resp.matched_serial == ""


def test_default_k_and_threshold_override(stub, engine):
    resp = search(stub, registered("86000000"), k=None)
    assert len(resp.matches) == 10 and resp.threshold == pytest.approx(engine.threshold)
    strict = search(stub, (SAMPLES / "queries" / "q00169.png").read_bytes(), threshold=0.999)
    assert not strict.exists and strict.threshold == pytest.approx(0.999)
    lax = search(stub, (DATA / "chelsea.jpg").read_bytes(), threshold=0.0)
    assert lax.exists and lax.matched_serial == lax.matches[0].serial


def test_k_larger_than_registry_returns_everything(stub):
    assert len(search(stub, registered("86000000"), k=1000).matches) == 300


@pytest.mark.parametrize("image, kw, message", [
    (b"", {}, "empty"),
    (b"\x00\x01garbage" * 10, {}, "known format"),
    (None, {"k": 0}, "k must be between 1 and 1000"),
    (None, {"k": 1001}, "k must be between 1 and 1000"),
    (None, {"threshold": 1.5}, "threshold must be between 0 and 1"),
    (None, {"threshold": float("nan")}, "threshold must be between 0 and 1"),
    (None, {"threshold": -0.1}, "threshold must be between 0 and 1"),
])
def test_bad_requests_get_invalid_argument(stub, image, kw, message):
    image = registered("86000000") if image is None else image
    kw.setdefault("k", 5)
    with pytest.raises(grpc.RpcError) as err:
        search(stub, image, **kw)
    assert err.value.code() == INVALID and message in err.value.details()
    assert search(stub, registered("86000000")).exists  # still serving


def test_stream_answers_every_item_and_isolates_a_corrupt_one(stub):
    serials = [p.stem for p in sorted((SAMPLES / "registry").glob("*.png"))[:20]]
    reqs = [pb.SearchRequest(request_id=f"id-{i}", image=registered(s), k=3)
            for i, s in enumerate(serials)]
    reqs.insert(10, pb.SearchRequest(request_id="bad", image=b"\xff\xd8\xff truncated", k=3))
    reqs.insert(15, pb.SearchRequest(request_id="bad-k", image=registered(serials[0]), k=0))
    resps = list(stub.SearchStream(iter(reqs), timeout=60))
    assert [r.request_id for r in resps] == [r.request_id for r in reqs]
    by_id = {r.request_id: r for r in resps}
    assert by_id["bad"].error.code == INVALID.value[0] and by_id["bad"].error.message
    bad_k = by_id["bad-k"].error
    assert bad_k.code == INVALID.value[0] and "k must be" in bad_k.message
    for i, s in enumerate(serials):
        r = by_id[f"id-{i}"]
        assert not r.HasField("error") and r.exists and r.matched_serial == s


def test_empty_stream_ends_cleanly(stub):
    assert list(stub.SearchStream(iter([]), timeout=10)) == []


def test_concurrent_searches_get_their_own_answers(stub):
    serials = [p.stem for p in sorted((SAMPLES / "registry").glob("*.png"))[40:72]]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: search(stub, registered(s), k=1).matched_serial, serials))
    assert got == serials


def test_index_info_and_thumbnails(stub, engine):
    info = stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
    assert info.count == 300 and info.dim == 512 and info.metric == "inner_product"
    assert info.encoder.startswith("efficientnet-lite0-gem3-tuned512@")
    assert info.index_type == "Flat"
    assert info.threshold == pytest.approx(engine.threshold) and info.index_version == "v000001"
    thumbs = stub.GetThumbnails(pb.GetThumbnailsRequest(serials=["86000000", "nope"]),
                                timeout=10).thumbnails
    assert [t.serial for t in thumbs] == ["86000000"] and thumbs[0].image[:4] == b"\x89PNG"


@pytest.mark.parametrize("warm_first", [False, True])
def test_health_says_serving_only_once_the_encoder_is_warm(warm_first):
    """Readiness over a real gRPC health service: NOT_SERVING while the encoder warms up
    (19.5 s of cuDNN planning on a GPU), SERVING after, in either order of the two."""
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = add_health(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready = Readiness()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            def status():
                return health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="trademark.v1.TrademarkSearch"),
                    timeout=5).status
            if warm_first:
                ready.warm()
                ready.health_started(servicer)
            else:
                ready.health_started(servicer)
                assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
                ready.warm()
            assert status() == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


def test_health_is_serving_and_reflection_lists_the_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "trademark.v1.TrademarkSearch"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in answer.list_services_response.service}
    assert "trademark.v1.TrademarkSearch" in names and "grpc.health.v1.Health" in names
    # The v1 protocol too (grpcurl asks it first); its messages are v1alpha's on the wire.
    v1 = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    answer = next(v1(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="trademark.v1.TrademarkSearch")]), timeout=5))
    assert answer.file_descriptor_response.file_descriptor_proto  # the .proto, served
    answer = next(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                     timeout=5))
    assert "trademark.v1.TrademarkSearch" in {s.name for s in
                                              answer.list_services_response.service}


def test_no_index_loaded_is_unavailable():
    servicer = TrademarkSearchServicer(None)
    server, port, _ = create_server("127.0.0.1:0", servicer)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.TrademarkSearchStub(ch)
            for call in (lambda: search(stub, b"x"),
                         lambda: stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_server_help_answers_without_torch_and_names_each_group_once():
    code = ("import sys, server.app; server.app.build_parser().format_help(); "
            "bad = [m for m in ('torch', 'faiss') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=60).stdout
    groups = [line for line in text.splitlines() if line.endswith(":") and not line[0].isspace()]
    assert len(groups) == len(set(groups)) and "network:" in groups


def test_server_process_prints_address_and_stops_on_sigterm(sample_index, tmp_path):
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--index", str(sample_index),
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                            text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:")
        with grpc.insecure_channel(line.split()[-1]) as ch:
            resp = search(pb_grpc.TrademarkSearchStub(ch), registered("86000000"))
            assert resp.matched_serial == "86000000"
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0 and time.time() - t0 < 10
        # Two encoder lanes warm up; the log says it once.
        assert (tmp_path / "server.log").read_text().count("encoder warmed up") == 1
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_server_on_a_busy_port_exits_2_and_the_first_keeps_serving(sample_index):
    import socket
    first = subprocess.Popen([sys.executable, "-m", "server", "--index", str(sample_index),
                              "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    other = socket.socket()  # a port held by a program that is not a gRPC server
    try:
        address = first.stdout.readline().strip().split()[-1]
        port = address.rsplit(":", 1)[1]
        other.bind(("127.0.0.1", 0))
        other.listen()
        for busy in (port, str(other.getsockname()[1])):
            second = subprocess.run([sys.executable, "-m", "server", "--index", str(sample_index),
                                     "--port", busy], cwd=ROOT, capture_output=True, text=True,
                                    timeout=120)
            assert second.returncode == 2, second.stderr[-500:]
            assert "address already in use" in second.stderr and "listening" not in second.stdout
        with grpc.insecure_channel(address) as ch:
            resp = search(pb_grpc.TrademarkSearchStub(ch), registered("86000000"))
            assert resp.matched_serial == "86000000"
    finally:
        other.close()
        first.kill()
        first.wait()


def test_server_refuses_a_directory_that_is_no_index(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "server", "--index", str(tmp_path), "--port",
                           "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not an index directory" in proc.stderr
    assert f"--out {tmp_path}`" in proc.stderr and "{root}" not in proc.stderr


@pytest.mark.parametrize("flag,message", [
    ("--lanes", "lanes must be >= 1, got 0"), ("--max-batch", "max_batch must be >= 1"),
    ("--stream-batch", "--stream-batch must be >= 1")])
def test_server_refuses_batching_settings_of_zero(sample_index, flag, message):
    proc = subprocess.run([sys.executable, "-m", "server", "--index", str(sample_index),
                           "--port", "0", flag, "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert "serving" not in proc.stderr  # refused before the index was loaded


def test_server_refuses_a_truncated_index(index_copy):
    from indexer.index.reader import open_index
    faiss_file = open_index(index_copy).path / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:1000])
    proc = subprocess.run([sys.executable, "-m", "server", "--index", str(index_copy), "--port",
                           "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "index.faiss does not match its recorded SHA-256" in proc.stderr
    # `indexer info` says so too, and exits 1, where it printed the figures as if all was well.
    from indexer.cli import main as indexer_main
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert indexer_main(["info", "--index", str(index_copy)]) == 1
    assert "WARNING: index.faiss does not match its recorded SHA-256" in err.getvalue()
