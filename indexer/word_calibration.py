"""The threshold of a match by words alone, set without labels.

A register's words are searched with made-up words (indexer.words.made_up_word: random
syllables, one or two words), which no registered mark's words should match; the
threshold is the score that no more than the target share of them reaches. No brand's
name is used, so the figure holds for any register. Where a register has no words, no
threshold is set and the service decides by the picture alone, as before words were
read.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass

import numpy as np

from indexer import words
from indexer.index import wordindex
from indexer.index.catalog import Catalog

log = logging.getLogger(__name__)

NEGATIVES = 2000
# Never below this, whatever the made-up words scored: one letter wrong in five.
FLOOR = 0.8


@dataclass
class WordCalibration:
    threshold: float
    negatives: int
    target_fpr: float
    # The share of the made-up words that reach `threshold`: the estimated FPR of a match
    # by words alone.
    estimated_fpr: float
    marks_with_words: int

    def to_dict(self) -> dict:
        return asdict(self)


def negatives(count: int = NEGATIVES, seed: int = 0) -> list[tuple[str, ...]]:
    """`count` made-up texts of one word, or two for a third of them."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = " ".join(words.made_up_word(rng) for _ in range(1 + (rng.random() < 1 / 3)))
        out.append(words.words_of(text))
    return out


def calibrate_words(catalog: Catalog, target_fpr: float,
                    count: int = NEGATIVES) -> WordCalibration | None:
    """The words' threshold for this catalog; None where no mark has words."""
    with_words = catalog.count_with_words()
    if not with_words:
        return None
    # Scored as a typed query is (short words count): the stricter of the two ways.
    scores = np.array([hits[0].score if (hits := wordindex.search(catalog, q, 1, short=True))
                       else 0.0
                       for q in negatives(count)])
    # The smallest score that at most target_fpr of the negatives reach (a tie at the
    # quantile counts against it).
    level = float(np.quantile(scores, 1 - target_fpr, method="higher"))
    if np.mean(scores >= level) > target_fpr:
        level = float(np.nextafter(level, 2.0))
    # Stored with four decimals, rounded up so that it still holds.
    threshold = max(FLOOR, math.ceil(level * 1e4) / 1e4)
    cal = WordCalibration(threshold, len(scores), target_fpr,
                          float(np.mean(scores >= threshold)), with_words)
    log.info("words: threshold %.4f (%d made-up words, %.4f of them reach it; %d marks "
             "with words)", cal.threshold, cal.negatives, cal.estimated_fpr, with_words)
    return cal
