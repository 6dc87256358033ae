"""SQLite catalog: FAISS id <-> serial, with name, words, metadata, source, hash and thumbnail.

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

from indexer import words

SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    serial    TEXT NOT NULL UNIQUE,
    name      TEXT NOT NULL DEFAULT '',
    source    TEXT NOT NULL DEFAULT '',
    sha256    TEXT NOT NULL DEFAULT '',
    thumbnail BLOB,
    metadata  TEXT NOT NULL DEFAULT '{}',
    added_at  TEXT NOT NULL,
    text      TEXT NOT NULL DEFAULT ''
);
"""
# The words of each mark that has any, found by their three-letter pieces (FTS5's trigram
# tokenizer: substrings and fuzzy candidates without a scan), and by keys of each word
# (indexer.words.keys: the word, its sound, and the word with a letter left out).
# rowid / id = the mark's id.
WORDS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS mark_words USING fts5(words, tokenize='trigram');
CREATE TABLE IF NOT EXISTS mark_keys (key TEXT NOT NULL, id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS mark_keys_key ON mark_keys (key);
CREATE INDEX IF NOT EXISTS mark_keys_id ON mark_keys (id);
"""


@dataclass
class Mark:
    serial: str
    name: str = ""
    source: str = ""
    sha256: str = ""
    thumbnail: bytes | None = None
    metadata: dict = field(default_factory=dict)
    text: str = ""  # the verbal element, as filed or as read ('' : none)


@dataclass(frozen=True)
class MarkRef:
    """What a search result needs to know about a matched id."""

    id: int
    serial: str
    name: str
    metadata: str = "{}"  # the manifest's other columns, as JSON text
    text: str = ""  # the mark's words


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
            if "text" not in self._columns():  # a catalog written before words were kept
                self._db.execute("ALTER TABLE marks ADD COLUMN text TEXT NOT NULL DEFAULT ''")
            self._db.executescript(WORDS_SCHEMA)
        self._lock = threading.Lock()
        self.has_text_column = "text" in self._columns()

    def _columns(self) -> set[str]:
        return {r[1] for r in self._db.execute("PRAGMA table_info(marks)")}

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
                row = (m.name, m.source, m.sha256, m.thumbnail, json.dumps(m.metadata), now,
                       m.text)
                if m.serial in existing:
                    # A mark added from a bare folder (no manifest) brings no name and no
                    # metadata: the row keeps the ones it had.
                    self._db.execute(
                        "UPDATE marks SET name=COALESCE(NULLIF(?, ''), name), source=?, sha256=?, "
                        "thumbnail=?, metadata=CASE WHEN ?='{}' THEN metadata ELSE ? END, "
                        "added_at=?, text=? WHERE serial=?",
                        (m.name, m.source, m.sha256, m.thumbnail, row[4], row[4], now, m.text,
                         m.serial))
                    ids.append(existing[m.serial])
                else:
                    cur = self._db.execute(
                        "INSERT INTO marks (name, source, sha256, thumbnail, metadata, added_at, "
                        "text, serial) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row + (m.serial,))
                    ids.append(cur.lastrowid)
                self._index_words(ids[-1], m.text)
        return ids, len(existing)

    def _index_words(self, mark_id: int, text: str) -> None:
        self._db.execute("DELETE FROM mark_words WHERE rowid=?", (mark_id,))
        self._db.execute("DELETE FROM mark_keys WHERE id=?", (mark_id,))
        found = words.words_of(text)
        if not found:
            return
        # Stored run together too, so that "visual studio code" is found as one word.
        self._db.execute("INSERT INTO mark_words (rowid, words) VALUES (?, ?)",
                         (mark_id, " ".join(found) + " " + "".join(found)))
        self._db.executemany("INSERT INTO mark_keys (key, id) VALUES (?, ?)",
                             [(k, mark_id) for k in words.keys(found)])

    def delete(self, serials: list[str]) -> dict[str, int]:
        """Delete serials; returns {serial: id} of those that existed."""
        found = self.ids_for(serials)
        with self._lock, self._db:
            for chunk in _chunks(list(found)):
                self._db.execute(f"DELETE FROM marks WHERE serial IN ({_marks(chunk)})", chunk)
            for chunk in _chunks(list(found.values())):
                self._db.execute(f"DELETE FROM mark_words WHERE rowid IN ({_marks(chunk)})", chunk)
                self._db.execute(f"DELETE FROM mark_keys WHERE id IN ({_marks(chunk)})", chunk)
        return found

    def refs(self, ids: list[int]) -> dict[int, MarkRef]:
        out = {}
        text = "text" if self.has_text_column else "''"
        for chunk in _chunks(ids):
            q = (f"SELECT id, serial, name, metadata, {text} FROM marks "
                 f"WHERE id IN ({_marks(chunk)})")
            out.update({r[0]: MarkRef(*r) for r in self._all(q, chunk)})
        return out

    def count_with_words(self) -> int:
        if not self.has_text_column:
            return 0
        return self._one("SELECT COUNT(*) FROM marks WHERE text != ''")[0]

    def texts(self, ids: list[int]) -> dict[int, str]:
        """{id: words} of those of `ids` that have words."""
        out = {}
        for chunk in _chunks(ids):
            out.update(self._all(f"SELECT id, text FROM marks WHERE id IN ({_marks(chunk)}) "
                                 "AND text != ''", chunk))
        return out

    def key_candidates(self, keys: list[str], limit: int) -> list[int]:
        """Ids of marks with one of these `keys` (indexer.words.keys), at most `limit`."""
        if not self.has_text_column or not keys:
            return []
        ids: dict[int, None] = {}
        for chunk in _chunks(keys):
            ids.update(dict.fromkeys(r[0] for r in self._all(
                f"SELECT DISTINCT id FROM mark_keys WHERE key IN ({_marks(chunk)}) LIMIT ?",
                [*chunk, limit - len(ids)])))
            if len(ids) >= limit:
                break
        return list(ids)

    def piece_candidates(self, pieces: list[str], limit: int) -> list[int]:
        """Ids of marks whose words share the most of these three-letter `pieces` (at most
        `limit`, by FTS5's bm25 rank). Slower than keys on a large register: FTS5 ranks
        every mark that shares one piece."""
        if not self.has_text_column or not pieces:
            return []
        match = " OR ".join('"' + p.replace('"', '""') + '"' for p in pieces)
        return [r[0] for r in self._all(
            "SELECT rowid FROM mark_words WHERE mark_words MATCH ? ORDER BY rank LIMIT ?",
            (match, limit))]

    def metadata_rows(self) -> list[tuple[int, str]]:
        """(id, metadata JSON) of every mark that has any (indexer.index.filters); a mark's
        words are its column `text` there, filterable like the others."""
        if not self.has_text_column:
            return self._all("SELECT id, metadata FROM marks WHERE metadata != '{}'")
        return self._all("SELECT id, CASE WHEN text != '' THEN json_set(metadata, '$.text', "
                         "text) ELSE metadata END FROM marks WHERE metadata != '{}' OR "
                         "text != ''")

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
