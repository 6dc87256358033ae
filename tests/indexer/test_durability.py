"""Slow durability tests: SIGKILL at random moments, and a 10,000-item stream."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time

import pytest

from indexer.index import store
from indexer.index.verify import verify
from proto import trademark_search_pb2 as pb
from tests.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.slow


def _marks(tmp_path, n, start):
    d = tmp_path / f"marks{start}"
    d.mkdir()
    for p in sorted((SAMPLES / "registry").glob("*.png"))[start:start + n]:
        shutil.copy(p, d / p.name)
    return d


def test_sigkill_at_random_moments_leaves_old_or_new_version(tmp_path, sample_index):
    rng = random.Random(7)
    idx = tmp_path / "idx"
    shutil.copytree(sample_index, idx)
    fresh, extra = _marks(tmp_path, 40, 0), _marks(tmp_path, 8, 100)
    outcomes = {"old": 0, "new": 0}
    for trial in range(20):
        before = store.read_manifest(idx)
        op = rng.choice(["build", "add", "remove"])
        if op == "build":
            cmd, new_count = ["build", "--images", str(fresh), "--out", str(idx)], 40
        elif op == "add":
            present = {p.stem for p in extra.iterdir()} & _serials(idx)
            cmd, new_count = (["add", "--images", str(extra), "--index", str(idx)],
                              before.count + 8 - len(present))
        else:
            victim = sorted(_serials(idx))[0]
            cmd, new_count = ["remove", "--index", str(idx), "--serials", victim], before.count - 1
        proc = subprocess.Popen([sys.executable, "-m", "indexer", *cmd, "--no-progress"]
                                if op != "remove" else [sys.executable, "-m", "indexer", *cmd],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 5.0))
        proc.kill()
        proc.wait()
        report = verify(idx)
        assert report.ok, (trial, op, report.problems)
        after = store.read_manifest(idx)
        if after.version == before.version:
            assert after.count == before.count
            outcomes["old"] += 1
        else:
            assert after.count == new_count, (trial, op)
            outcomes["new"] += 1
    print(f"20 SIGKILL trials survived: {outcomes}")
    assert outcomes["old"] and outcomes["new"]  # kills landed both before and after commits


def _serials(idx) -> set[str]:
    from indexer.index.reader import open_index
    opened = open_index(idx)
    try:
        return {ref.serial for ref in opened.catalog.refs(opened.catalog.all_ids()).values()}
    finally:
        opened.close()


def test_stream_of_10000_items_with_1_percent_corrupt(stub):
    good = (SAMPLES / "registry" / "86000000.png").read_bytes()
    n = 10_000
    reqs = (pb.SearchRequest(request_id=f"r{i}", k=1,
                             image=good[:200] if i % 100 == 37 else good) for i in range(n))
    seen, errors = set(), 0
    for resp in stub.SearchStream(reqs, timeout=1800):
        assert resp.request_id not in seen
        seen.add(resp.request_id)
        errors += resp.HasField("error")
    assert len(seen) == n and errors == n // 100
    print(f"stream: {n} answers, {errors} errors, every request_id once")


def test_soak_has_no_errors_and_flat_memory(sample_index, tmp_path):
    from bench.soak import soak
    images = sorted((SAMPLES / "queries").glob("*.png"))
    result = soak(sample_index, images, seconds=60, clients=4, every=10)
    print(f"soak: { {k: v for k, v in result.items() if k != 'samples'} }")
    assert result["errors"] == 0 and result["requests"] > 100
    assert result["rss_growth_mb"] < 50
