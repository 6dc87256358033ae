"""Shared fixtures: the real encoder, a real index of the sample marks, a real server."""
from __future__ import annotations

import contextlib
import csv
import shutil
import time
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image

from indexer.build import BuildOptions, build
from indexer.network.detector import load_detector
from indexer.network.encoder import load_encoder
from indexer.sources import read_manifest
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import create_server
from server.engine import EngineConfig, SearchEngine
from server.service import TrademarkSearchServicer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
DATA = Path(__file__).resolve().parent / "data"
LOGOBENCH = ROOT.parent / "shared" / "logobench"

torch.set_num_threads(2)


def sample_queries(kind: str | None = None) -> list[dict]:
    with open(SAMPLES / "queries.csv") as f:
        rows = list(csv.DictReader(f))
    return [r | {"path": SAMPLES / r["file"]} for r in rows if kind in (None, r["kind"])]


def side_by_side(left: Path, right: Path, gap: int = 60, fit: int | None = None
                 ) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Two marks pasted side by side on white (each shrunk to `fit` px first, if given),
    and the box (x, y, width, height) of the right one: a picture a region picks from."""
    a, b = (Image.open(p).convert("RGB") for p in (left, right))
    if fit:
        a.thumbnail((fit, fit))
        b.thumbnail((fit, fit))
    canvas = Image.new("RGB", (a.width + gap + b.width, max(a.height, b.height)), "white")
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + gap, 0))
    return canvas, (a.width + gap, 0, b.width, b.height)


def wait_for(predicate, seconds: float = 60, what: str = "timed out") -> None:
    """Poll `predicate` until it is true; fail the test after `seconds`."""
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.05)


def quiet(**kw) -> BuildOptions:
    return BuildOptions(progress=False, **kw)


@pytest.fixture(scope="session")
def encoder():
    """The encoder as the indexer and the server load it (through OpenVINO where it works)."""
    return load_encoder("efficientnet-lite0", "cpu")


@pytest.fixture(scope="session")
def torch_encoder():
    """The same network run by PyTorch (training, GPUs, and the fallback)."""
    return load_encoder("efficientnet-lite0", "cpu", runtime="torch")


@pytest.fixture(scope="session")
def sample_items():
    return read_manifest(SAMPLES / "registry.csv", SAMPLES / "registry")


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, encoder, sample_items) -> Path:
    """All 300 sample marks; never modified by tests (copy it first)."""
    out = tmp_path_factory.mktemp("index") / "samples"
    build(sample_items, out, encoder, quiet())
    return out


@pytest.fixture
def index_copy(tmp_path, sample_index) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(sample_index, dst)
    return dst


@pytest.fixture(scope="session")
def engine(sample_index, encoder):
    eng = SearchEngine.open(sample_index, encoder)
    yield eng
    eng.close()


@contextlib.contextmanager
def serving(engine):
    """A real gRPC server of `engine` on a free loopback port: its address."""
    servicer = TrademarkSearchServicer(engine, stream_batch=8)
    server, port, _ = create_server("127.0.0.1:0", servicer)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)
        servicer.close()


@pytest.fixture(scope="session")
def server_address(engine):
    with serving(engine) as address:
        yield address


@pytest.fixture(scope="session")
def detector():
    """The shipped mark detector (indexer.network.detector)."""
    return load_detector()


@pytest.fixture(scope="session")
def scene_engine(sample_index, encoder, detector):
    """The sample index served as `python -m server` serves it: marks in photographs
    found by the detector and answered one by one."""
    eng = SearchEngine.open(sample_index, encoder, EngineConfig(detector=detector))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def scene_server_address(scene_engine):
    with serving(scene_engine) as address:
        yield address


@pytest.fixture(scope="session")
def channel(server_address):
    with grpc.insecure_channel(server_address) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    return pb_grpc.TrademarkSearchStub(channel)
