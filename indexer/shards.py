"""The unfinished build: marks encoded a shard at a time and checkpointed on disk.

A build of millions of marks holds one shard in memory, and a build that was killed
(SIGKILL, OOM, a reboot) goes on from its last shard when the same command is run again:

    INDEX_DIR/.building/
      build.json          what is being built (a key of the inputs and of the options
                          that shape the shards), how many marks, when it started
      lock                held by the build that runs
      shard-000000.npz    marks [0, S) as the encoder left them: descriptors, small copies,
      shard-000001.npz    hashes, words, thumbnails, and the files that could not be read

A shard is written to a .tmp file and renamed into place, so it is there whole or not
at all; a shard is the most work a kill can cost. The steps after encoding (catalog,
PCA, FAISS, calibration) read the shards back one at a time and are redone in full
after a kill: minutes, against the hours of encoding a large register takes. The folder
is removed once the new version is live.

What a shard holds depends only on the files, their order and the options that shape
encoding (encoder, variants, small copies, words, batch, shard size); the key in
build.json covers exactly those, so a build that finds shards of other inputs refuses
them rather than mixing them in. The catalog's names and metadata are read from the
manifest when the version is written, so correcting them does not cost the shards.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from indexer.index import store
from indexer.index.catalog import Mark
from indexer.pipeline import BuildError, BuildOptions, Encoded, Prepared, catalog_row
from indexer.sources import ImageItem

log = logging.getLogger(__name__)

BUILDING = store.BUILDING
PLAN_FILE = "build.json"
# Bumped whenever what a shard holds changes: old shards are then refused, never misread.
SHARD_FORMAT = 1
# The shards on disk, as Checkpoints.file names them (a .tmp being written is not one).
SHARD_FILES = "shard-*.npz"


class UnfinishedBuildError(BuildError):
    """The index folder holds an unfinished build this one cannot go on with."""


@dataclass
class Shard:
    """One shard read back: its marks in the order of the items."""
    positions: np.ndarray  # (m,) int64: the marks' positions in the build's items
    descriptors: np.ndarray  # (m, D) float32
    small: np.ndarray | None  # (m, sizes, D) float32 where the index keeps small copies
    sha256: np.ndarray  # (m,) str
    text: np.ndarray  # (m,) str: words read ('' where none, or where the manifest gave them)
    thumbnails: list[bytes]
    skipped: list[tuple[int, str]]  # (position, reason) of files that could not be read

    def marks(self, items: Sequence[ImageItem]) -> list[Mark]:
        """The catalog rows, with names and metadata as the items give them now (the
        shard's stretch of them read in one slice: a manifest may be read from its file)."""
        if not len(self.positions):
            return []
        lo, hi = int(self.positions.min()), int(self.positions.max()) + 1
        mine = items[lo:hi]
        return [catalog_row(mine[p - lo], Prepared(None, None, str(h), t, str(w)))
                for p, h, t, w in zip(self.positions, self.sha256, self.thumbnails, self.text)]


def build_key(items: Sequence[ImageItem], encoder_identity: dict, opts: BuildOptions,
              shard_size: int) -> str:
    """What the shards depend on: each file (path, size, modification time), its serial and
    whether its words are given, in order; and the encoding options. A stat a file: ~10 s
    for 2 M files."""
    h = hashlib.sha256(json.dumps({
        "format": SHARD_FORMAT, "encoder": encoder_identity, "shard_size": shard_size,
        "registry_variants": list(opts.registry_variants), "batch_size": opts.batch_size,
        "lowres": opts.lowres.to_dict() if opts.lowres else None,
        "read_words": opts.read_words}, sort_keys=True).encode())
    for item in items:
        try:
            st = os.stat(item.file)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)  # skipped as unreadable; a file that appears changes the key
        h.update(json.dumps([item.serial, item.file, item.text, *stamp]).encode() + b"\n")
    return h.hexdigest()


class Checkpoints:
    """The shards of one build in INDEX_DIR/.building; use as a context manager (it holds
    the build's lock)."""

    def __init__(self, root: str | Path, key: str, items: int, shard_size: int,
                 restart: bool = False):
        if shard_size < 1:
            raise BuildError(f"shard size must be >= 1, got {shard_size}")
        self.path = Path(root) / BUILDING
        self.key, self.items, self.shard_size, self.restart = key, items, shard_size, restart
        self._lock = None

    def __enter__(self) -> "Checkpoints":
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock.close()
            raise UnfinishedBuildError(f"another build is writing {self.path.parent}; wait for "
                                       "it to finish") from e
        plan = _read_plan(self.path)
        if plan and plan.get("key") != self.key:
            if not self.restart:
                self.__exit__(None, None, None)
                raise UnfinishedBuildError(
                    f"{self.path.parent} holds an unfinished build of other images or options "
                    f"({_describe(self.path, plan)}): run the command that started it to finish "
                    "it, or add --restart to discard it and build anew")
            log.warning("discarding the unfinished build in %s (%s)", self.path,
                        _describe(self.path, plan))
            plan = None
        if plan is None:
            self._clear()
            _write_json(self.path / PLAN_FILE, {
                "key": self.key, "items": self.items, "shard_size": self.shard_size,
                "shards": self.count, "started": store.now_iso()})
        else:
            done = sum(self.done(k) for k in range(self.count))
            log.info("going on with the unfinished build in %s: %d of %d shards done",
                     self.path, done, self.count)
        return self

    def __exit__(self, *_) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    @property
    def count(self) -> int:
        return -(-self.items // self.shard_size)

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.shard_size, min(self.items, (k + 1) * self.shard_size)

    def file(self, k: int) -> Path:
        return self.path / f"shard-{k:06d}.npz"

    def done(self, k: int) -> bool:
        return self.file(k).is_file()

    def write(self, k: int, items: list[ImageItem], enc: Encoded) -> None:
        """Shard k from what encoding `items` (the shard's) gave, atomically."""
        start, _ = self.bounds(k)
        at = {item.serial: start + i for i, item in enumerate(items)}
        by_file = {item.file: start + i for i, item in enumerate(items)}
        thumbs = [m.thumbnail or b"" for m in enc.marks]
        arrays = {
            "positions": np.array([at[m.serial] for m in enc.marks], np.int64),
            "descriptors": enc.matrix(enc.descriptors[0].shape[1] if enc.descriptors else 0),
            "sha256": np.array([m.sha256 for m in enc.marks], dtype=str),
            "text": np.array([m.text for m in enc.marks], dtype=str),
            "thumbnails": np.frombuffer(b"".join(thumbs), np.uint8),
            "thumbnail_ends": np.cumsum([len(t) for t in thumbs], dtype=np.int64),
            "skipped_positions": np.array([by_file[s.file] for s in enc.skipped], np.int64),
            "skipped_reasons": np.array([s.reason for s in enc.skipped], dtype=str)}
        if enc.small_copies:
            arrays["small"] = np.concatenate(enc.small_copies)
        tmp = self.file(k).with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file(k))

    def read(self, k: int) -> Shard:
        """Shard k, its descriptors and small copies read."""
        with np.load(self.file(k), allow_pickle=False) as z:
            ends = z["thumbnail_ends"]
            blob = z["thumbnails"].tobytes()
            starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
            return Shard(
                z["positions"], z["descriptors"], z["small"] if "small" in z.files else None,
                z["sha256"], z["text"], [blob[s:e] for s, e in zip(starts, ends)],
                _skipped(z))

    def head(self, k: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Shard k's marks' positions and its skipped files, its arrays left unread."""
        with np.load(self.file(k), allow_pickle=False) as z:
            return z["positions"], _skipped(z)

    def discard(self) -> None:
        """The whole folder, once its build is committed (or given up)."""
        self.__exit__()
        shutil.rmtree(self.path, ignore_errors=True)

    def _clear(self) -> None:
        for p in self.path.iterdir():
            if p.name != "lock":
                p.unlink()


def _skipped(z) -> list[tuple[int, str]]:
    return list(zip(z["skipped_positions"].tolist(), z["skipped_reasons"].tolist()))


def progress(root: str | Path) -> dict | None:
    """How far the unfinished build in `root` got (for `indexer info`); None if none."""
    path = Path(root) / BUILDING
    plan = _read_plan(path)
    if plan is None:
        return None
    done = len(list(path.glob(SHARD_FILES)))
    return {"shards_done": done, "shards": plan.get("shards"), "items": plan.get("items"),
            "shard_size": plan.get("shard_size"), "started": plan.get("started"),
            "path": str(path)}


def _read_plan(path: Path) -> dict | None:
    try:
        return json.loads((path / PLAN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s): its shards cannot be trusted", path / PLAN_FILE, e)
        return {}


def _describe(path: Path, plan: dict) -> str:
    done = len(list(path.glob(SHARD_FILES)))
    return (f"{done} of {plan.get('shards', '?')} shards of {plan.get('items', '?')} marks "
            f"done, started {plan.get('started', '?')}")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
