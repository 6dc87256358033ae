"""Three server processes on one index directory, one client balancing over them: calls
spread round-robin, a new version reaches every replica, and a batch whose replica is
killed midway still answers every input once, with the right serial."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.api import SearchClient
from client.cli import main as client_main
from indexer.cli import main as indexer_main
from tests.conftest import DATA, ROOT, SAMPLES


@dataclass
class Replica:
    proc: subprocess.Popen
    address: str
    metrics_port: int

    def metric(self, name: str, **labels) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=10).read().decode()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _start(index_dir: Path) -> Replica:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--index", str(index_dir), "--port", "0",
         "--metrics-port", "0", "--watch", "0.5", "--mmap"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    listening = proc.stdout.readline()
    metrics = proc.stdout.readline()
    assert listening.startswith("listening on 127.0.0.1:"), listening
    return Replica(proc, listening.split()[-1], int(metrics.rsplit(":", 1)[1].split("/")[0]))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, sample_index):
    index_dir = tmp_path_factory.mktemp("replicas") / "index"
    shutil.copytree(sample_index, index_dir)
    started = [_start(index_dir) for _ in range(3)]
    # One search each before the tests, with time to spare: a replica's first answer
    # loads what it loads lazily, and three of them starting on a loaded 2-core machine
    # took past the tests' 30 s deadlines (clean-clone runs, 2026-12-04).
    mark = (SAMPLES / "registry" / "86000000.png").read_bytes()
    for r in started:
        with SearchClient(r.address, timeout=180) as client:
            assert client.search(mark, k=1).matched_serial == "86000000"
    yield index_dir, started
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.wait(timeout=30)
        r.proc.stdout.close()


def _servers(replicas: list[Replica]) -> str:
    return ",".join(r.address for r in replicas)


def test_unary_calls_spread_over_every_replica(replicas):
    _, started = replicas
    mark = (SAMPLES / "registry" / "86000000.png").read_bytes()
    before = [r.metric("trademark_requests_total", method="Search") for r in started]
    with SearchClient(_servers(started)) as client:
        answers = [client.search(mark, k=1).matched_serial for _ in range(12)]
    assert answers == ["86000000"] * 12
    served = [r.metric("trademark_requests_total", method="Search") - b
              for r, b in zip(started, before)]
    # Round robin over the replicas that are ready: each gets its turn (the first calls
    # may all go to the first that connected).
    assert sum(served) == 12 and min(served) >= 2


def test_a_new_version_reaches_every_replica(replicas, tmp_path):
    index_dir, started = replicas
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(DATA / "chelsea.jpg", folder / "CAT-1.jpg")
    assert indexer_main(["add", "--images", str(folder), "--index", str(index_dir),
                         "--no-progress"]) == 0
    deadline = time.time() + 60
    for r in started:  # each replica asked directly, not through the balancer
        with SearchClient(r.address) as client:
            while (info := client.info()).index_version != "v000002":
                assert time.time() < deadline, f"{r.address} still serves {info.index_version}"
                time.sleep(0.2)
            assert info.count == 301
            assert client.search((DATA / "chelsea.jpg").read_bytes(), k=1).matched_serial == \
                "CAT-1"


def test_batch_answers_every_input_once_when_its_replica_is_killed(replicas, tmp_path):
    _, started = replicas
    with open(SAMPLES / "registry.csv") as f:
        marks = [(row["serial"], row["file"]) for row in csv.DictReader(f)]
    rows = [marks[i % len(marks)] for i in range(2000)]
    inputs = tmp_path / "inputs.csv"
    with open(inputs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file"])
        w.writerows([file] for _, file in rows)
    out = tmp_path / "out.jsonl"
    before = [r.metric("trademark_encode_batch_size_count") for r in started]
    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(client_main(
        ["batch", str(inputs), "--images", str(SAMPLES / "registry"), "--out", str(out),
         "--no-progress", "--server", _servers(started)])))
    runner.start()
    deadline = time.time() + 120
    while not out.exists() or len(out.read_text().splitlines()) < 200:
        assert time.time() < deadline and runner.is_alive(), "the batch did not get going"
        time.sleep(0.2)
    # The replica the stream went to is the one encoding: kill it, mid-stream.
    busy = max(range(3), key=lambda i: started[i].metric("trademark_encode_batch_size_count")
               - before[i])
    started[busy].proc.send_signal(signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive() and status == [0]

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [int(line["request_id"]) for line in lines] == list(range(2000))  # once each
    assert [line["matched_serial"] for line in lines] == [serial for serial, _ in rows]
    assert all(line["error"] is None for line in lines)
    survivors = [r for i, r in enumerate(started) if i != busy]
    assert sum(r.metric("trademark_encode_batch_size_count") - before[started.index(r)]
               for r in survivors) > 0  # the rest went to the others
    # Unary calls go on over the list that still names the dead replica.
    with SearchClient(_servers(started)) as client:
        mark = (SAMPLES / "registry" / marks[0][1]).read_bytes()
        assert {client.search(mark, k=1).matched_serial for _ in range(6)} == {marks[0][0]}
