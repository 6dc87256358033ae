"""Bearer-token access: refused without the token, open health checks, CLI token files."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.cli import main as client_main
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import create_server
from server.auth import TokenError, read_token
from server.service import TrademarkSearchServicer
from tests.conftest import SAMPLES

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secured(engine):
    servicer = TrademarkSearchServicer(engine)
    server, port, _ = create_server("127.0.0.1:0", servicer, token=TOKEN)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _request():
    return pb.SearchRequest(image=(SAMPLES / "registry" / "86000000.png").read_bytes(), k=1)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),),
                                      (("authorization", TOKEN),)])
def test_calls_without_the_right_token_are_unauthenticated(secured, metadata):
    with grpc.insecure_channel(secured) as ch:
        stub = pb_grpc.TrademarkSearchStub(ch)
        for call in (lambda: stub.Search(_request(), timeout=10, metadata=metadata),
                     lambda: list(stub.SearchStream(iter([_request()]), timeout=10,
                                                    metadata=metadata)),
                     lambda: stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10,
                                               metadata=metadata)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer" in err.value.details()


def test_right_token_passes_and_health_stays_open(secured):
    with grpc.insecure_channel(secured) as ch:
        stub = pb_grpc.TrademarkSearchStub(ch)
        md = (("authorization", f"Bearer {TOKEN}"),)
        assert stub.Search(_request(), timeout=10, metadata=md).matched_serial == "86000000"
        assert [r.matched_serial for r in stub.SearchStream(iter([_request()] * 3), timeout=10,
                                                            metadata=md)] == ["86000000"] * 3
        health = health_pb2_grpc.HealthStub(ch)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_client_cli_reads_the_token_from_a_file_or_the_environment(secured, tmp_path,
                                                                   monkeypatch, capsys):
    img = str(SAMPLES / "registry" / "86000000.png")
    monkeypatch.delenv("TRADEMARK_TOKEN", raising=False)
    assert client_main(["--server", secured, "search", "--input-img", img]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert client_main(["--server", secured, "--token-file", str(token_file), "search",
                        "--input-img", img]) == 0
    assert "86000000" in capsys.readouterr().out
    monkeypatch.setenv("TRADEMARK_TOKEN", TOKEN)
    assert client_main(["--server", secured, "info"]) == 0


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("TRADEMARK_TOKEN", " from-env ")
    assert read_token(None) == "from-env"
    (tmp_path / "t").write_text("from-file")
    assert read_token(tmp_path / "t") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(TokenError, match="cannot read"):
        read_token(tmp_path / "missing")
    monkeypatch.delenv("TRADEMARK_TOKEN")
    assert read_token(None) is None


def test_server_refuses_an_unreadable_token_file(sample_index, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT
    proc = subprocess.run([sys.executable, "-m", "server", "--index", str(sample_index),
                           "--port", "0", "--token-file", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot read token file" in proc.stderr
