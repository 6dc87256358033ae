"""TLS and mutual TLS with certificates made for the test by openssl."""
from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest

from client.cli import main as client_main
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import create_server
from server.service import TrademarkSearchServicer
from server.tls import TLSError, channel_credentials, server_credentials
from tests.conftest import SAMPLES

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
IMAGE = (SAMPLES / "registry" / "86000000.png").read_bytes()


def _ssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "2", "-subj", "/CN=test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


def _serve(engine, creds):
    server, port, _ = create_server("127.0.0.1:0", TrademarkSearchServicer(engine),
                                    credentials=creds)
    server.start()
    return server, f"127.0.0.1:{port}"


def _search(address, creds):
    with grpc.secure_channel(address, creds) as ch:
        return pb_grpc.TrademarkSearchStub(ch).Search(pb.SearchRequest(image=IMAGE, k=1),
                                                      timeout=10)


def test_tls_serves_trusting_clients_and_refuses_plaintext(engine, pki):
    server, address = _serve(engine, server_credentials(pki / "server.pem", pki / "server.key"))
    try:
        assert _search(address, channel_credentials(pki / "ca.pem")).matched_serial == "86000000"
        with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as err:
            pb_grpc.TrademarkSearchStub(ch).Search(pb.SearchRequest(image=IMAGE, k=1), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_mutual_tls_requires_a_client_certificate(engine, pki, capsys):
    creds = server_credentials(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    server, address = _serve(engine, creds)
    try:
        with_cert = channel_credentials(pki / "ca.pem", pki / "client.pem", pki / "client.key")
        assert _search(address, with_cert).matched_serial == "86000000"
        with pytest.raises(grpc.RpcError) as err:
            _search(address, channel_credentials(pki / "ca.pem"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert client_main(["--server", address, "--tls-ca", str(pki / "ca.pem"), "--tls-cert",
                            str(pki / "client.pem"), "--tls-key", str(pki / "client.key"),
                            "search", "--input-img", str(SAMPLES / "registry" / "86000000.png"),
                            "--json"]) == 0
        assert '"matched_serial": "86000000"' in capsys.readouterr().out
    finally:
        server.stop(None)


def test_half_a_client_identity_is_refused(pki):
    with pytest.raises(TLSError, match="needs its key"):
        channel_credentials(pki / "ca.pem", cert=pki / "client.pem")
    with pytest.raises(TLSError, match="cannot read"):
        server_credentials(pki / "nope.pem", pki / "server.key")
