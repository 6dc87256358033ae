"""A build killed (SIGKILL) at any point goes on from its last shard when run again, and
ends with the index an uninterrupted build writes: catalog, vectors and thresholds.

Real `indexer build` processes on the sample marks, with the stand-in encoder (`pixels`:
what is checkpointed and put back together is the same for any encoder, and it keeps
several builds a test affordable). The kills are real SIGKILLs, sent by the process to
itself at the chosen moment: the Nth call of a function of the build is wrapped to die.
"""
from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer import shards
from indexer.index import store, vectors
from indexer.index.verify import verify
from tests.conftest import ROOT, SAMPLES

MARKS, SHARD = 96, 16  # six shards

# Runs `python -m indexer ARGS` with function MODULE:ATTR made to SIGKILL the process on
# its Nth call (before the call), or to log each call's first argument to a file.
DIE_ON_CALL = """
import importlib, os, signal, sys
from indexer.cli import main
where, attr, n, log = sys.argv[1].split(":") + [None] * (4 - len(sys.argv[1].split(":")))
module = os if where == "os" else importlib.import_module(where)
owner = module
for part in attr.split(".")[:-1]:
    owner = getattr(owner, part)
name = attr.split(".")[-1]
real, calls = getattr(owner, name), [0]
def wrapped(*args, **kw):
    calls[0] += 1
    if log:
        with open(log, "a") as f:
            f.write(repr(args[1] if len(args) > 1 else args[0]) + "\\n")
    elif calls[0] >= int(n) and (where != "os" or str(args[1]).endswith("CURRENT")):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kw)
setattr(owner, name, wrapped)
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("marks")
    for p in sorted((SAMPLES / "registry").glob("*.png"))[:MARKS]:
        shutil.copy(p, d / p.name)
    return d


def _build_args(images: Path, out: Path) -> list[str]:
    return ["build", "--images", str(images), "--out", str(out), "--encoder", "pixels",
            "--shard-size", str(SHARD), "--no-progress", "--no-read-words"]


def _run(args: list[str], wrap: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", DIE_ON_CALL, wrap, *args] if wrap else \
        [sys.executable, "-m", "indexer", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(marks, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "idx"
    done = _run(_build_args(marks, out))
    assert done.returncode == 0, done.stderr
    return out


def _contents(root: Path) -> dict:
    """What a build decides: catalog rows, stored vectors, projection, thresholds."""
    vdir = store.current_version_dir(root)
    db = sqlite3.connect(vdir / store.CATALOG_FILE)
    rows = db.execute("SELECT id, serial, name, source, sha256, thumbnail, metadata, text "
                      "FROM marks ORDER BY id").fetchall()
    db.close()
    ids, vecs = vectors.all_vectors(vectors.load(vdir / store.INDEX_FILE))
    with np.load(vdir / store.PROJECTION_FILE) as z:
        proj = {k: z[k].tobytes() for k in z.files}
    m = json.loads((vdir / store.MANIFEST).read_text())
    decided = {k: m[k] for k in ("count", "threshold", "scene_threshold", "words_threshold",
                                 "search_params", "calibration")}
    return {"rows": rows, "ids": ids.tobytes(), "vectors": vecs.tobytes(), "projection": proj,
            "decided": decided}


@pytest.mark.parametrize("wrap, what", [
    ("indexer.shards:Checkpoints.write:3", "while encoding the third shard"),
    ("indexer.index.vectors:tune:1", "while filling the FAISS index"),
    ("indexer.build:calibrate_index:1", "while calibrating"),
    ("os:replace:1", "in the version swap, the new version renamed, CURRENT not yet"),
])
def test_a_killed_build_run_again_ends_as_an_uninterrupted_one(marks, uninterrupted, tmp_path,
                                                               wrap, what):
    out = tmp_path / "idx"
    killed = _run(_build_args(marks, out), wrap)
    assert killed.returncode == -signal.SIGKILL, (what, killed.stderr[-2000:])
    written = sorted(p.name for p in (out / shards.BUILDING).glob("shard-*.npz"))
    assert written, what
    calls = tmp_path / "shards-written.txt"
    again = _run(_build_args(marks, out), f"indexer.shards:Checkpoints.write:0:{calls}")
    assert again.returncode == 0, (what, again.stderr[-2000:])
    redone = calls.read_text().split() if calls.exists() else []
    # Only the shards not on disk at the kill were encoded again: at most the one cut off.
    assert len(redone) == MARKS // SHARD - len(written), (what, written, redone)
    assert not (out / shards.BUILDING).exists()
    assert verify(out).ok
    assert _contents(out) == _contents(uninterrupted), what


def test_shards_of_other_inputs_are_refused_and_restart_discards_them(marks, uninterrupted,
                                                                      tmp_path):
    out = tmp_path / "idx"
    assert _run(_build_args(marks, out), "indexer.shards:Checkpoints.write:3").returncode < 0
    info = _run(["info", "--index", str(out)])
    assert info.returncode == 1 and "2 of 6 shards" in info.stderr, info.stderr
    # One mark changed: its shard would mix two registers.
    changed = tmp_path / "changed"
    shutil.copytree(marks, changed)
    first = sorted(changed.iterdir())[0]
    shutil.copy(sorted(changed.iterdir())[1], first)
    refused = _run(_build_args(changed, out))
    assert refused.returncode == 2
    assert "unfinished build of other images or options" in refused.stderr
    assert "--restart" in refused.stderr
    assert len(list((out / shards.BUILDING).glob("shard-*.npz"))) == 2  # nothing lost
    # The shards shaped by other options are refused too.
    other = _run(_build_args(marks, out) + ["--registry-variants", "none"])
    assert other.returncode == 2 and "--restart" in other.stderr
    fresh = _run(_build_args(changed, out) + ["--restart"])
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "discarding the unfinished build" in fresh.stderr
    assert store.read_manifest(out).count == MARKS
    assert _contents(out)["rows"] != _contents(uninterrupted)["rows"]


def test_a_build_of_unreadable_files_leaves_no_shards(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"m{i}.png").write_bytes(b"not an image")
    out = tmp_path / "idx"
    failed = _run(_build_args(broken, out))
    assert failed.returncode == 2 and "none of the 3 images could be read" in failed.stderr
    assert not (out / shards.BUILDING).exists()
