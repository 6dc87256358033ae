"""SQLite catalog: FAISS id <-> serial, with name, metadata, source, hash and thumbnail.

The FAISS id of a mark is its catalog row id. Ids are never reused
(AUTOINCREMENT), and re-adding a serial keeps its id, so ids are stable across
add and remove.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    serial    TEXT NOT NULL UNIQUE,
    name      TEXT NOT NULL DEFAULT '',
    source    TEXT NOT NULL DEFAULT '',
    sha256    TEXT NOT NULL DEFAULT '',
    thumbnail BLOB,
    metadata  TEXT NOT NULL DEFAULT '{}',
    added_at  TEXT NOT NULL
);
"""


@dataclass
class Mark:
    serial: str
    name: str = ""
    source: str = ""
    sha256: str = ""
    thumbnail: bytes | None = None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MarkRef:
    """What a search result needs to know about a matched id."""

    id: int
    serial: str
    name: str
    metadata: str = "{}"  # the manifest's other columns, as JSON text


class Catalog:
    """One SQLite file. Writers use it from one thread; the server shares a read-only one."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def count(self) -> int:
        return self._one("SELECT COUNT(*) FROM marks")[0]

    def ids_for(self, serials: list[str]) -> dict[str, int]:
        out = {}
        for chunk in _chunks(serials):
            q = f"SELECT serial, id FROM marks WHERE serial IN ({_marks(chunk)})"
            out.update(self._all(q, chunk))
        return out

    def all_ids(self) -> list[int]:
        return [r[0] for r in self._all("SELECT id FROM marks ORDER BY id")]

    def sources(self) -> list[tuple[int, str]]:
        """(id, source path) of every mark, for re-reading the originals."""
        return self._all("SELECT id, source FROM marks ORDER BY id")

    def upsert(self, marks: list[Mark]) -> tuple[list[int], int]:
        """Insert marks, replacing same-serial rows in place (keeping their id, and their
        name and metadata where the new mark has none).

        Returns (ids in the order given, how many replaced an existing serial).
        """
        existing = self.ids_for([m.serial for m in marks])
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        ids = []
        with self._lock, self._db:
            for m in marks:
                row = (m.name, m.source, m.sha256, m.thumbnail, json.dumps(m.metadata), now)
                if m.serial in existing:
                    # A mark added from a bare folder (no manifest) brings no name and no
                    # metadata: the row keeps the ones it had.
                    self._db.execute(
                        "UPDATE marks SET name=COALESCE(NULLIF(?, ''), name), source=?, sha256=?, "
                        "thumbnail=?, metadata=CASE WHEN ?='{}' THEN metadata ELSE ? END, "
                        "added_at=? WHERE serial=?",
                        (m.name, m.source, m.sha256, m.thumbnail, row[4], row[4], now, m.serial))
                    ids.append(existing[m.serial])
                else:
                    cur = self._db.execute(
                        "INSERT INTO marks (name, source, sha256, thumbnail, metadata, added_at, "
                        "serial) VALUES (?, ?, ?, ?, ?, ?, ?)", row + (m.serial,))
                    ids.append(cur.lastrowid)
        return ids, len(existing)

    def delete(self, serials: list[str]) -> dict[str, int]:
        """Delete serials; returns {serial: id} of those that existed."""
        found = self.ids_for(serials)
        with self._lock, self._db:
            for chunk in _chunks(list(found)):
                self._db.execute(f"DELETE FROM marks WHERE serial IN ({_marks(chunk)})", chunk)
        return found

    def refs(self, ids: list[int]) -> dict[int, MarkRef]:
        out = {}
        for chunk in _chunks(ids):
            q = f"SELECT id, serial, name, metadata FROM marks WHERE id IN ({_marks(chunk)})"
            out.update({r[0]: MarkRef(*r) for r in self._all(q, chunk)})
        return out

    def metadata_rows(self) -> list[tuple[int, str]]:
        """(id, metadata JSON) of every mark that has any (indexer.index.filters)."""
        return self._all("SELECT id, metadata FROM marks WHERE metadata != '{}'")

    def thumbnails(self, serials: list[str]) -> dict[str, tuple[str, bytes]]:
        """{serial: (name, image bytes)} for the serials that exist and have one."""
        out = {}
        for chunk in _chunks(serials):
            q = (f"SELECT serial, name, thumbnail FROM marks WHERE serial IN ({_marks(chunk)}) "
                 "AND thumbnail IS NOT NULL")
            out.update({s: (n, t) for s, n, t in self._all(q, chunk)})
        return out

    def _all(self, query: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(query, list(args)).fetchall()

    def _one(self, query: str, args=()) -> tuple:
        with self._lock:
            return self._db.execute(query, list(args)).fetchone()


def _marks(items) -> str:
    return ",".join("?" * len(items))


def _chunks(items: list, size: int = 500):
    # SQLite caps the number of bound parameters per statement.
    for i in range(0, len(items), size):
        yield items[i:i + size]
