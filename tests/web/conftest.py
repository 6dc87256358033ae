"""The web app on a free loopback port, a gRPC client of the session's real server."""
from __future__ import annotations

import contextlib
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from client.api import SearchClient  # noqa: E402
from client.web.serve import make_server  # noqa: E402
from tests.conftest import sample_queries  # noqa: E402


UNREGISTERED = 1


def plain(kind: str, n: int = 0) -> dict:
    """The n-th sample query of `kind` that is the mark as filed or a JPEG of it: what a
    user of the page would upload (the other edits are the evaluation's business).
    The first unknown one, q01120, is a look-alike the sample index calls registered (one
    of the false positives its FPR allows, measured in tests/server and `make eval`), so
    the page's "not existed" path is shown with the second."""
    return [q for q in sample_queries(kind) if q["transform"] in ("identity", "jpeg")][n]


@contextlib.contextmanager
def running(client: SearchClient):
    """The web app of `client` on a free loopback port, in a thread: its URL."""
    server = make_server(client, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while server.url is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.url, "the web app did not start"
    try:
        yield server.url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def web_url(server_address):
    with SearchClient(server_address) as client, running(client) as url:
        yield url


@pytest.fixture(scope="session")
def scene_web_url(scene_server_address):
    """The page against a server that finds the marks in photographs."""
    with SearchClient(scene_server_address) as client, running(client) as url:
        yield url
