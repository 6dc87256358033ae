"""The index directory: immutable versions and an atomic pointer to the current one.

    INDEX_DIR/
      CURRENT                 name of the live version, replaced atomically
      versions/v000003/       manifest.json, index.faiss, catalog.sqlite,
                              projection.npz, lowres.faiss, report.json (all optional)
      .lock                   held by the one writer at a time
      .building/              an unfinished build's shards, until it is committed
                              (indexer.shards)

A writer builds the next version in a hidden temporary folder beside the others,
fsyncs it, renames it into place and only then swaps CURRENT (write a .tmp file,
then os.replace). A crash at any point leaves CURRENT naming a complete version;
the leftover temporary folder is removed by the next writer.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from indexer import decision

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CURRENT = "CURRENT"
VERSIONS = "versions"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
CATALOG_FILE = "catalog.sqlite"
PROJECTION_FILE = "projection.npz"
REPORT_FILE = "report.json"
BUILDING = ".building"  # an unfinished build's checkpoints (indexer.shards)
KEEP_VERSIONS = 2  # the live one and the one before, for a server still reading it


class IndexFormatError(RuntimeError):
    """The directory is not a usable index; the message says what is wrong and what to do."""


@dataclass
class Manifest:
    encoder: dict
    dim: int
    index_type: str
    count: int
    threshold: float
    threshold_method: str = ""
    # What the threshold is compared with (indexer.decision); manifests written before
    # the margin score existed mean the top similarity.
    decision: str = decision.TOP
    # For the family margin: the similarity from which a hit is a rendition of the top one.
    family_similarity: float | None = None
    metric: str = "inner_product"
    projection: str | None = None
    version: str = ""
    format_version: int = FORMAT_VERSION
    created: str = ""
    updated: str = ""
    checksums: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    index_preset: str = ""  # the --index-factory preset it was built from, if any
    search_params: dict = field(default_factory=dict)  # e.g. {"nprobe": 32}, set at open
    sampled_recall: float | None = None  # recall@10 vs exact at search_params, at build
    # Registered marks are stored as the mean over these variants and the image itself
    # (indexer.variants); manifests written before them mean the image alone.
    registry_variants: list = field(default_factory=list)
    # Small-copy vectors for small queries (indexer.index.lowres.LowResConfig); empty: none,
    # as in manifests written before them.
    lowres: dict = field(default_factory=dict)
    # The threshold for marks found in photographs (indexer.scene_calibration) and how it
    # was set; None: they are decided with `threshold`, as before it existed.
    scene_threshold: float | None = None
    scene_calibration: dict = field(default_factory=dict)
    # The threshold of a match by a mark's words (indexer.word_calibration) and how it was
    # set; None: the register keeps no words, and is searched by picture alone.
    words_threshold: float | None = None
    words_calibration: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @property
    def rule(self) -> decision.Rule:
        return decision.rule_of(self.decision, self.family_similarity)

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise IndexFormatError(f"cannot read {path}: {e}") from e
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{path} has format version {data.get('format_version')!r}; this program reads "
                f"version {FORMAT_VERSION}: rebuild the index with `python -m indexer build`")
        if data.get("decision", decision.TOP) not in decision.KINDS:
            raise IndexFormatError(
                f"{path} has decision score {data['decision']!r}, which this program does not "
                f"know ({', '.join(decision.KINDS)}): upgrade the server or rebuild the index")
        if data.get("decision") == decision.FAMILY and data.get("family_similarity") is None:
            raise IndexFormatError(f"{path} decides on the family margin but records no "
                                   "family_similarity: recalibrate with `python -m indexer "
                                   "calibrate`")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def current_version_dir(root: str | Path) -> Path:
    """The folder of the live version; IndexFormatError if there is none."""
    root = Path(root)
    pointer = root / CURRENT
    if not pointer.is_file():
        raise IndexFormatError(f"{root} is not an index directory (no {CURRENT} file): build one "
                               f"with `python -m indexer build --images DIR --out {root}`")
    name = pointer.read_text().strip()
    vdir = root / VERSIONS / name
    if not (vdir / MANIFEST).is_file():
        raise IndexFormatError(f"{root}: {CURRENT} names version {name!r}, which is missing")
    return vdir


def read_manifest(root: str | Path) -> Manifest:
    return Manifest.read(current_version_dir(root) / MANIFEST)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VersionWriter:
    """A new version being written; `commit()` makes it the live one."""

    def __init__(self, root: Path, base: Path | None):
        self.root = root
        self.base = base
        self.path = root / VERSIONS / f".tmp-{uuid.uuid4().hex[:12]}"
        self.path.mkdir(parents=True)
        self.committed: str | None = None

    def copy_from_base(self, *names: str) -> None:
        for name in names:
            if self.base is not None and (self.base / name).exists():
                shutil.copy2(self.base / name, self.path / name)

    def commit(self, manifest: Manifest) -> str:
        name = _next_version_name(self.root)
        manifest.version = name
        manifest.updated = now_iso()
        manifest.created = manifest.created or manifest.updated
        manifest.checksums = {p.name: sha256_file(p) for p in sorted(self.path.iterdir())
                              if p.name not in (MANIFEST, REPORT_FILE)}
        (self.path / MANIFEST).write_text(manifest.to_json())
        for p in self.path.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        final = self.root / VERSIONS / name
        os.rename(self.path, final)
        _fsync_dir(final.parent)
        tmp = self.root / f"{CURRENT}.tmp"
        tmp.write_text(name + "\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.root / CURRENT)
        _fsync_dir(self.root)
        self.committed = name
        self.path = final
        log.info("index %s now at version %s (%d marks)", self.root, name, manifest.count)
        return name


def check_build_target(root: str | Path) -> None:
    """A build writes into a new or empty folder, or replaces an index; anything else is
    refused before any work: the folder may be someone's data."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise IndexFormatError(f"--out {root} is a file: give a folder for the index")
    if root.is_dir() and not (root / CURRENT).is_file() and any(
            p.name not in (".lock", VERSIONS, BUILDING, f"{CURRENT}.tmp")
            for p in root.iterdir()):
        raise IndexFormatError(f"--out {root} holds files and is not an index: give a new or "
                               "empty folder, or an index to replace")


@contextmanager
def write_version(root: str | Path, *, new: bool = False):
    """Yield a VersionWriter under the writer lock; discard it unless committed.

    `new=True` starts from nothing (build); otherwise from the live version (add/remove).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise IndexFormatError(f"{root} is being written by another process; wait for "
                                   "it to finish") from e
        _remove_leftovers(root)
        base = None if new else current_version_dir(root)
        writer = VersionWriter(root, base)
        try:
            yield writer
        finally:
            if writer.committed is None:
                shutil.rmtree(writer.path, ignore_errors=True)
            else:
                _prune(root, keep=KEEP_VERSIONS)


def _version_names(root: Path) -> list[str]:
    vroot = root / VERSIONS
    if not vroot.is_dir():
        return []
    return sorted(p.name for p in vroot.iterdir() if p.name.startswith("v") and p.is_dir())


def _next_version_name(root: Path) -> str:
    names = _version_names(root)
    last = int(names[-1][1:]) if names else 0
    return f"v{last + 1:06d}"


def _remove_leftovers(root: Path) -> None:
    """Temporary folders of writers that crashed; only called under the writer lock."""
    vroot = root / VERSIONS
    if vroot.is_dir():
        for p in vroot.iterdir():
            if p.name.startswith(".tmp-"):
                log.warning("removing %s left by an interrupted write", p)
                shutil.rmtree(p, ignore_errors=True)
    (root / f"{CURRENT}.tmp").unlink(missing_ok=True)


def _prune(root: Path, keep: int) -> None:
    live = (root / CURRENT).read_text().strip()
    for name in _version_names(root)[:-keep]:
        if name != live:
            shutil.rmtree(root / VERSIONS / name, ignore_errors=True)
