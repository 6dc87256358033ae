"""Word-element search: the registered marks whose words match a query's.

Candidates come from the catalog's indexes (indexer.index.catalog: keys of the words,
and FTS5 trigrams of them), never from a scan of the register; each candidate is then
scored by indexer.words.similarity, exactly as the build's calibration scores made-up
words (indexer.word_calibration).
"""
from __future__ import annotations

from dataclasses import dataclass

from indexer import words
from indexer.index.catalog import Catalog

# Candidates fetched before scoring: first those that share a key with the query (a word,
# a sound, or a word one slip away: indexer.words.keys, B-tree lookups), and only where
# none of them scores KEYS_ENOUGH, those that share the most three-letter pieces (FTS5).
CANDIDATES = 200
KEYS_ENOUGH = 0.8


@dataclass(frozen=True)
class WordHit:
    id: int
    score: float  # indexer.words.similarity, in [0, 1]
    text: str  # the registered mark's words


def search(catalog: Catalog, query: tuple[str, ...], k: int, short: bool = False,
           candidates: int = CANDIDATES) -> list[WordHit]:
    """The `k` registered marks whose words are most like `query` (indexer.words.words_of),
    best first (ties: the marks registered first); `short`: as indexer.words.similarity."""
    if not query:
        return []
    hits = _scored(catalog, catalog.key_candidates(words.keys(query), candidates),
                   query, short)
    if not hits or hits[0].score < KEYS_ENOUGH:
        # Nothing one slip away: look wider, by shared three-letter pieces.
        seen = {h.id for h in hits}
        more = [i for i in catalog.piece_candidates(words.trigrams(query), candidates)
                if i not in seen]
        hits = sorted(hits + _scored(catalog, more, query, short),
                      key=lambda h: (-h.score, h.id))
    return hits[:k]


def _scored(catalog: Catalog, ids: list[int], query: tuple[str, ...],
            short: bool) -> list[WordHit]:
    hits = [WordHit(i, words.similarity(query, words.words_of(t), short), t)
            for i, t in catalog.texts(ids).items()]
    return sorted(hits, key=lambda h: (-h.score, h.id))
