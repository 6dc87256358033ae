"""Hot reload: a new index version is picked up without dropping a single request."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from indexer.cli import main as indexer_main
from indexer.index import store
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import create_server, watch_index
from server.engine import SearchEngine
from server.service import TrademarkSearchServicer
from tests.conftest import DATA, ROOT, SAMPLES, wait_for

ADMIN = "admin-secret"
ADMIN_MD = (("authorization", f"Bearer {ADMIN}"),)


def _search(stub, image: bytes) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(image=image, k=1), timeout=30)


def _add_cat(index_dir, tmp_path) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(DATA / "chelsea.jpg", folder / "CAT-1.jpg")
    assert indexer_main(["add", "--images", str(folder), "--index", str(index_dir),
                         "--no-progress"]) == 0


@pytest.fixture
def reloadable(index_copy, encoder):
    servicer = TrademarkSearchServicer(SearchEngine.open(index_copy, encoder),
                                       loader=lambda: SearchEngine.open(index_copy, encoder))
    server, port, _ = create_server("127.0.0.1:0", servicer, admin_token=ADMIN)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield index_copy, pb_grpc.TrademarkSearchStub(ch)
    server.stop(None)


def test_reload_under_load_loses_no_request(reloadable, tmp_path):
    index_dir, stub = reloadable
    cat = (DATA / "chelsea.jpg").read_bytes()
    mark = (SAMPLES / "registry" / "86000000.png").read_bytes()
    assert not _search(stub, cat).exists
    answers, errors, stop = [], [], threading.Event()

    def load():
        deadline = time.time() + 120  # bounded however the test goes
        while not stop.is_set() and time.time() < deadline:
            try:
                answers.append(_search(stub, mark).matched_serial)
            except grpc.RpcError as e:
                errors.append(e.code())

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    _add_cat(index_dir, tmp_path)
    before = len(answers)
    resp = stub.Reload(pb.ReloadRequest(), timeout=60, metadata=ADMIN_MD)
    time.sleep(1.0)  # keep the load going across the swap
    stop.set()
    for w in workers:
        w.join()
    assert resp.previous_version == "v000001" and resp.index_version == "v000002"
    assert resp.count == 301
    print(f"reload under load: {len(answers)} answers, {len(errors)} errors, "
          f"{len(answers) - before} of them after the new version was written")
    assert errors == [] and len(answers) > before > 0
    assert set(answers) == {"86000000"}
    found = _search(stub, cat)
    assert found.exists and found.matched_serial == "CAT-1"


def test_a_broken_new_version_keeps_the_old_one_serving(reloadable, tmp_path):
    index_dir, stub = reloadable
    _add_cat(index_dir, tmp_path)
    faiss_file = store.current_version_dir(index_dir) / store.INDEX_FILE
    faiss_file.write_bytes(faiss_file.read_bytes()[:500])
    with pytest.raises(grpc.RpcError) as err:
        stub.Reload(pb.ReloadRequest(), timeout=60, metadata=ADMIN_MD)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "still serving the previous version" in err.value.details()
    info = stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
    assert info.index_version == "v000001" and info.count == 300
    assert _search(stub, (SAMPLES / "registry" / "86000000.png").read_bytes()).exists


def test_reload_needs_the_admin_token(reloadable, engine):
    _, stub = reloadable
    with pytest.raises(grpc.RpcError) as err:
        stub.Reload(pb.ReloadRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A server without an admin token refuses Reload outright.
    server, port, _ = create_server("127.0.0.1:0", TrademarkSearchServicer(engine))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.TrademarkSearchStub(ch).Reload(pb.ReloadRequest(), timeout=10,
                                                       metadata=ADMIN_MD)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(None)


def test_sighup_reloads_a_running_server(index_copy, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "server", "--index", str(index_copy),
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().split()[-1]
        _add_cat(index_copy, tmp_path)
        proc.send_signal(signal.SIGHUP)
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.TrademarkSearchStub(ch)
            deadline = time.time() + 60
            while time.time() < deadline:
                if stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10).count == 301:
                    break
                time.sleep(0.2)
            assert _search(stub, (DATA / "chelsea.jpg").read_bytes()).matched_serial == "CAT-1"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_watch_follows_current_and_leaves_a_broken_version_alone(index_copy, encoder, tmp_path,
                                                                 caplog):
    """--watch: a new version is loaded once CURRENT names it; a broken one is logged once
    (not retried every tick) while the previous version serves on."""
    servicer = TrademarkSearchServicer(SearchEngine.open(index_copy, encoder),
                                       loader=lambda: SearchEngine.open(index_copy, encoder))
    stopped = threading.Event()
    watcher = watch_index(index_copy, servicer, 0.05, stopped)
    try:
        _add_cat(index_copy, tmp_path)
        wait_for(lambda: servicer.engine.index.manifest.version == "v000002")
        assert servicer.engine.index.index.ntotal == 301

        # A version whose FAISS file does not match its checksum, then CURRENT swapped to it.
        versions = index_copy / store.VERSIONS
        shutil.copytree(versions / "v000002", versions / "v000003")
        with open(versions / "v000003" / store.INDEX_FILE, "r+b") as f:
            f.seek(200)
            f.write(b"\x00" * 64)
        (index_copy / "CURRENT.tmp").write_text("v000003")
        os.replace(index_copy / "CURRENT.tmp", index_copy / store.CURRENT)
        time.sleep(1.0)  # twenty ticks
        assert servicer.engine.index.manifest.version == "v000002"
        failures = [r for r in caplog.records if "v000003 failed to load" in r.getMessage()]
        assert len(failures) == 1 and "does not match its recorded SHA-256" in failures[0].getMessage()
    finally:
        stopped.set()
        watcher.join(timeout=10)
        servicer.close()
    assert not watcher.is_alive()
