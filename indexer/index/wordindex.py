"""Word-element search: the registered marks whose words match a query's.

Candidates come from the catalog's indexes (indexer.index.catalog: FTS5 trigrams of the
words, and their sounds), never from a scan of the register; each candidate is then
scored by indexer.words.similarity, exactly as the build's calibration scores made-up
words (indexer.word_calibration).
"""
from __future__ import annotations

from dataclasses import dataclass

from indexer import words
from indexer.index.catalog import Catalog

# Candidates fetched by their shared three-letter pieces before scoring: a one-letter
# slip keeps most pieces of a word, so the right mark is among the first few.
CANDIDATES = 200


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
    ids = catalog.word_candidates(words.trigrams(query), words.keys(query, query=True),
                                  candidates)
    texts = catalog.texts(ids)
    hits = [WordHit(i, words.similarity(query, words.words_of(t), short), t)
            for i, t in texts.items()]
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits[:k]
