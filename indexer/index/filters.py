"""Filters on the register's data: which marks a search may return.

A manifest's extra columns are kept as each mark's metadata (catalog.py). A filter is a
column and the values it may take (any of them); every filter of a request must hold.
A cell may hold several values separated by `;` (`nice_classes` = `9;42`), each matched
on its own, as examiners search by class. Values are compared as text, trimmed.

The ids that pass go to FAISS as a selector (vectors.Searcher.search), so the search
itself skips the rest and k answers come back whenever k marks pass; post-filtering the
k best would return fewer.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SEPARATOR = ";"
RECENT = 64  # filter combinations whose passing ids are kept


class InvalidFilter(ValueError):
    """A filter this index cannot apply (an unknown column, no values); says which."""


@dataclass(frozen=True)
class Filter:
    column: str
    values: tuple[str, ...]


def cell_values(cell) -> list[str]:
    """A metadata cell -> the values it holds (`9;42` -> ["9", "42"])."""
    if cell is None:
        return []
    if isinstance(cell, (list, tuple)):
        return [str(v).strip() for v in cell if str(v).strip()]
    return [v.strip() for v in str(cell).split(SEPARATOR) if v.strip()]


class FilterIndex:
    """{column: {value: sorted ids}} of a catalog's metadata, made once per loaded index."""

    def __init__(self, postings: dict[str, dict[str, np.ndarray]]):
        self._postings = postings
        self._recent: dict[tuple[Filter, ...], np.ndarray] = {}  # a stream repeats its filters
        self._lock = threading.Lock()  # the server's encoder lanes ask side by side

    @classmethod
    def from_rows(cls, rows) -> "FilterIndex":
        """`rows`: (id, metadata JSON text) pairs, as catalog.Catalog.metadata_rows gives."""
        t0 = time.perf_counter()
        lists: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        n = 0
        for mark_id, text in rows:
            n += 1
            for column, cell in json.loads(text).items():
                for value in cell_values(cell):
                    lists[column][value].append(mark_id)
        postings = {c: {v: np.unique(np.asarray(ids, dtype=np.int64)) for v, ids in values.items()}
                    for c, values in lists.items()}
        log.info("filterable columns of %d marks: %s (%.2f s)", n,
                 ", ".join(sorted(postings)) or "none", time.perf_counter() - t0)
        return cls(postings)

    @property
    def columns(self) -> list[str]:
        return sorted(self._postings)

    def ids(self, filters: list[Filter] | tuple[Filter, ...]) -> np.ndarray:
        """The sorted ids that pass every filter; InvalidFilter for an unknown column."""
        key = tuple(filters)
        with self._lock:
            if key in self._recent:
                return self._recent[key]
        out = self._intersect(key)
        with self._lock:
            if len(self._recent) >= RECENT:
                self._recent.pop(next(iter(self._recent)))
            self._recent[key] = out
        return out

    def _intersect(self, filters: tuple[Filter, ...]) -> np.ndarray:
        out: np.ndarray | None = None
        for f in filters:
            if f.column not in self._postings:
                known = ", ".join(self.columns) or "none (the manifest had no extra columns)"
                raise InvalidFilter(f"no column {f.column!r} to filter on; the index has: {known}")
            if not f.values:
                raise InvalidFilter(f"filter on {f.column!r} names no value")
            column = self._postings[f.column]
            parts = [column[v] for v in f.values if v in column]
            passing = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
            out = passing if out is None else np.intersect1d(out, passing, assume_unique=True)
        return np.empty(0, np.int64) if out is None else out
