"""`indexer build|add --ray` on a local Ray: the same index as the build in one process."""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from indexer import shards
from indexer.build import build, encode_items
from indexer.cli import main
from indexer.index import store, vectors
from indexer.sources import ImageItem
from tests.conftest import SAMPLES, quiet, wait_for

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install ".[ray]"')
pytest.importorskip("ray.data")

from indexer.ray_pipeline import (BLOCK, BLOCKS_AN_ACTOR, MIN_BLOCK, READ_CPUS,  # noqa: E402
                                  RayOptions, RayUnavailable, blocks_for, plan)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray of 2 CPUs for the module; the pipeline joins it instead of starting
    its own (and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_ray_encodes_every_mark_as_the_local_pipeline(tmp_path, encoder, sample_items):
    """Same catalog rows in the same order, the same descriptors and small copies, and the
    unreadable files skipped with their reasons, as a local encode."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = [*sample_items[:10], ImageItem("BROKEN", broken),
             ImageItem("GONE", tmp_path / "missing.png"), *sample_items[10:21]]
    local = encode_items(items, encoder, quiet(batch_size=4))
    remote = encode_items(items, encoder, quiet(batch_size=4, ray=RayOptions(actors=2)))

    assert [(m.serial, m.name, m.sha256, m.thumbnail, m.metadata) for m in remote.marks] == [
        (m.serial, m.name, m.sha256, m.thumbnail, m.metadata) for m in local.marks]
    assert len(remote.marks) == 21
    assert [s.file for s in remote.skipped] == [str(broken), str(tmp_path / "missing.png")]
    assert [s.reason for s in remote.skipped] == [s.reason for s in local.skipped]
    dim = encoder.descriptor_dim
    assert cosines(remote.matrix(dim), local.matrix(dim)).min() >= 0.9999
    for a, b in zip(remote.small_copy_matrices(), local.small_copy_matrices(), strict=True):
        assert cosines(a, b).min() >= 0.9999


def _manifest(tmp_path: Path, rows: list[dict], name: str) -> Path:
    path = tmp_path / name
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _catalog(index_dir: Path) -> list[tuple]:
    db = sqlite3.connect(store.current_version_dir(index_dir) / store.CATALOG_FILE)
    try:
        return db.execute("SELECT id, serial, name, source, sha256, thumbnail, metadata, text "
                          "FROM marks ORDER BY id").fetchall()
    finally:
        db.close()


def _vectors(index_dir: Path) -> np.ndarray:
    """Every mark's vector, in catalog order (reconstructed by id)."""
    index = vectors.load(store.current_version_dir(index_dir) / store.INDEX_FILE)
    return np.stack([index.reconstruct(row[0]) for row in _catalog(index_dir)])


def test_ray_build_and_add_equal_the_plain_ones(tmp_path, capsys):
    """`build --ray` then `add --ray` from the command line: the same catalog, the same
    vectors (cosine >= 0.9999), the same threshold, and `indexer verify` clean."""
    with open(SAMPLES / "registry.csv") as f:
        rows = list(csv.DictReader(f))
    first, more = _manifest(tmp_path, rows[:24], "first.csv"), _manifest(tmp_path, rows[24:30],
                                                                          "more.csv")
    common = ["--images", str(SAMPLES / "registry"), "--no-progress", "--batch-size", "4"]
    plain, clustered = tmp_path / "plain", tmp_path / "ray"
    assert main(["build", "--manifest", str(first), "--out", str(plain), *common]) == 0
    assert main(["build", "--manifest", str(first), "--out", str(clustered), "--ray",
                 "--ray-actors", "2", *common]) == 0
    assert main(["add", "--manifest", str(more), "--index", str(plain), *common]) == 0
    assert main(["add", "--manifest", str(more), "--index", str(clustered), "--ray",
                 *common]) == 0
    capsys.readouterr()

    assert _catalog(clustered) == _catalog(plain)  # the words read too
    assert len(_catalog(clustered)) == 30 and any(row[-1] for row in _catalog(plain))
    assert cosines(_vectors(clustered), _vectors(plain)).min() >= 0.9999
    a, b = store.read_manifest(clustered), store.read_manifest(plain)
    assert a.threshold == pytest.approx(b.threshold, abs=1e-3)
    assert a.count == b.count == 30 and a.words_threshold == b.words_threshold
    assert main(["verify", "--index", str(clustered)]) == 0
    assert "verified" in capsys.readouterr().out


def test_plan_gives_each_gpu_an_actor_and_leaves_cpus_to_preparation():
    assert plan({"CPU": 64, "GPU": 4}, RayOptions()).actors == 4
    assert plan({"CPU": 64, "GPU": 4}, RayOptions(actors=2)).actors == 2
    cpu = plan({"CPU": 16}, RayOptions(actor_threads=4))
    assert (cpu.actors, cpu.gpus) == (4, False)
    assert plan({"CPU": 16}, RayOptions(actors=2, actor_threads=4)).cpus_per_actor == 4.0
    # Actors that would take every CPU reserve less, so that the tasks preparing their
    # input still get scheduled.
    for resources, opts in (({"CPU": 2}, RayOptions()), ({"CPU": 16}, RayOptions(actor_threads=4))):
        p = plan(resources, opts)
        assert p.actors * p.cpus_per_actor <= resources["CPU"] - READ_CPUS


def test_blocks_are_large_but_spread_a_small_register_over_every_actor():
    # A large shard: blocks of BLOCK marks, so that a task's overhead stays small.
    assert blocks_for(8192, 2) == 8192 // BLOCK
    assert blocks_for(8192 + 1, 2) == 8192 // BLOCK + 1
    # A small one: several blocks an actor, none under MIN_BLOCK marks.
    assert blocks_for(300, 2) == 8
    assert blocks_for(40, 2) == 2 and 40 / 2 >= MIN_BLOCK
    assert blocks_for(5, 8) == 1
    # However many marks (an `add` of millions is one call), no block over BLOCK: a block
    # is read as one batch, and its decoded marks are held at once.
    assert blocks_for(10_000_000, 2) == -(-10_000_000 // BLOCK)
    assert blocks_for(10_000, 64) == BLOCKS_AN_ACTOR * 64  # each actor several blocks


def test_ray_missing_says_how_to_install(monkeypatch, tmp_path, encoder, sample_items):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(RayUnavailable, match=r'pip install "\.\[ray\]"'):
        encode_items(sample_items[:2], encoder, quiet(ray=RayOptions()))


@pytest.mark.slow
def test_a_cluster_that_wants_a_token_is_named_with_the_fix(tmp_path):
    """A real head started with token authentication (`ray start`, as Ray >= 2.59 does by
    default); a driver without the token is told why and how, not just 'Failed to
    connect'; with RAY_AUTH_MODE=token and the token it builds."""
    port = 6390 + os.getpid() % 500
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="a" * 32)
    images = tmp_path / "marks"
    images.mkdir()
    for p in sorted((SAMPLES / "registry").glob("*.png"))[:40]:
        (images / p.name).write_bytes(p.read_bytes())
    # The head in a process group of its own, stopped by that group at the end: `ray stop`
    # stops every Ray on the machine, the module's local Ray too, and the test process
    # (its driver) then exits. Its own temp folder, short for Ray's sockets, so that its
    # address is not left where a later ray.init() would look for a cluster to join.
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: _listening(port, head), 120, f"no Ray head listening on {port}")
        cmd = [sys.executable, "-m", "indexer", "build", "--images", str(images), "--out",
               str(tmp_path / "index"), "--no-progress", "--ray", f"127.0.0.1:{port}"]
        bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        done = subprocess.run(cmd, env=bare, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and "RAY_AUTH_MODE=token" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        # The fix the message gives works: the same command with the token builds.
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "indexed 40 marks" in done.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int, head: subprocess.Popen) -> bool:
    assert head.poll() is None, "ray start --head exited"
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def _encoder_actor_pids() -> list[int]:
    """Processes of Ray workers that run the encoder actor (Ray names them after it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"_EncodeActor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_a_ray_build_whose_encoder_actor_is_killed_counts_every_mark_once(tmp_path, encoder,
                                                                          sample_items):
    """An encoder actor SIGKILLed in the middle of a build (as a lost node would take it):
    Ray re-runs its work, and the index holds every mark once, as a local build's."""
    items = sample_items[:48]
    plain, clustered = tmp_path / "plain", tmp_path / "ray"
    build(items, plain, encoder, quiet(batch_size=4, shard_size=16))
    killed: list[int] = []

    def kill_an_actor_once_a_shard_is_done():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list((clustered / shards.BUILDING).glob("shard-*.npz")):
                for pid in _encoder_actor_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_an_actor_once_a_shard_is_done, daemon=True)
    killer.start()
    build(items, clustered, encoder,
          quiet(batch_size=4, shard_size=16, ray=RayOptions(actors=2)))
    killer.join()
    assert killed, "no encoder actor was found to kill"
    assert _catalog(clustered) == _catalog(plain)
    assert cosines(_vectors(clustered), _vectors(plain)).min() >= 0.9999
    assert store.read_manifest(clustered).count == 48
