"""The project installs as a package: the wheel carries the generated gRPC code and the
weights, the three commands, and a base install light enough for a client-only machine."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("indexer", "server", "client", "proto"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)], check=True, timeout=300)
    (path,) = out.glob("trademark_search-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_carries_the_stubs_weights_and_commands(wheel):
    names = set(wheel.namelist())
    assert {"proto/trademark_search_pb2.py", "proto/trademark_search_pb2_grpc.py",
            "client/cli.py", "server/app.py", "indexer/cli.py",
            "indexer/network/weights/lite0_similarity.pt",
            "indexer/network/weights/background.npz",
            "client/web/static/index.html", "client/web/static/app.js"} <= names
    assert not any(n.startswith("tests/") for n in names)
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = wheel.read(meta).decode()
    for line in ("trademark-client = client.cli:main", "trademark-indexer = indexer.cli:main",
                 "trademark-server = server.app:main"):
        assert line in scripts


def test_the_base_install_is_the_light_client(wheel):
    meta = wheel.read(next(n for n in wheel.namelist() if n.endswith("METADATA"))).decode()
    base = [l for l in meta.splitlines() if l.startswith("Requires-Dist:") and "extra ==" not in l]
    server = [l for l in meta.splitlines() if 'extra == "server"' in l]
    assert base and not any(heavy in l for l in base for heavy in ("torch", "faiss", "numpy"))
    assert any("torch" in l for l in server) and any("faiss" in l for l in server)
    assert 'Provides-Extra: client' in meta
