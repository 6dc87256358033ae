"""Default existence threshold, estimated from the registry itself (no labels).

Queries for registered marks are edited copies of them; queries for unregistered
marks are edited copies of marks the registry does not hold. Both can be simulated
with the registry alone: take a sample of indexed marks, make edited copies of them
(indexer.augment), and search each copy.
- Its own mark's score is a *positive*: what a registered mark scores after an edit.
- Its best score among the *other* marks is a *negative*: what it would score if its
  own mark were left out of the index, i.e. what an unregistered mark scores.
The threshold is the (1 - target_fpr) quantile of the negatives, so about
`target_fpr` of unregistered marks are said to exist; the share of positives that
are ranked first and clear it is the estimated TPR.
"""
from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from indexer.augment import random_edit
from indexer.encoder import Encoder
from indexer.preprocess import ImageDecodeError, open_image, to_input

log = logging.getLogger(__name__)

FALLBACK_THRESHOLD = 0.8  # when the registry is too small to say anything
MIN_MARKS = 10
METHOD = "edited copies of registered marks, leave-one-out negatives"


@dataclass
class Calibration:
    threshold: float
    target_fpr: float
    estimated_tpr: float
    positives: int
    negatives: int
    method: str = METHOD

    def to_dict(self) -> dict:
        return asdict(self)


def copy_scores(index: faiss.Index, encoder: Encoder, marks: list[tuple[int, Image.Image]],
                edits: int, seed: int = 0, batch_size: int = 32):
    """(own score, own ranked first, best other score) per edited copy."""
    rng = random.Random(seed)
    own, first, other = [], [], []
    jobs = [(mid, im) for mid, im in marks for _ in range(edits)]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        arrays = [to_input(random_edit(im, rng), encoder.preprocess) for _, im in chunk]
        scores, ids = index.search(encoder.encode(arrays), 2)
        for (mid, _), s, i in zip(chunk, scores, ids):
            mine = i == mid
            own.append(float(s[mine][0]) if mine.any() else -1.0)
            first.append(bool(i[0] == mid))
            other.append(float(s[~mine][0]))
    return np.array(own), np.array(first), np.array(other)


def calibrate(index: faiss.Index, encoder: Encoder, marks: list[tuple[int, Image.Image]],
              target_fpr: float = 0.01, edits: int = 2, seed: int = 0) -> Calibration:
    if index.ntotal < MIN_MARKS or not marks:
        log.warning("only %d marks: using the fallback threshold %.2f", index.ntotal,
                    FALLBACK_THRESHOLD)
        return Calibration(FALLBACK_THRESHOLD, target_fpr, float("nan"), 0, 0, "fallback")
    own, first, other = copy_scores(index, encoder, marks, edits, seed)
    threshold = float(np.quantile(other, 1.0 - target_fpr))
    tpr = float((first & (own >= threshold)).mean())
    log.info("calibrated on %d edited copies: threshold %.4f, estimated TPR %.3f at FPR %.3f",
             len(own), threshold, tpr, target_fpr)
    return Calibration(round(threshold, 4), target_fpr, round(tpr, 4), len(own), len(other))


def load_marks(sources: list[tuple[int, str]], count: int, seed: int = 0
               ) -> list[tuple[int, Image.Image]]:
    """Up to `count` (id, image) pairs read from their source files; missing ones skipped."""
    picked = random.Random(seed).sample(sources, min(count, len(sources)))
    out = []
    for mid, path in picked:
        try:
            out.append((mid, open_image(Path(path).read_bytes())))
        except (OSError, ImageDecodeError) as e:
            log.warning("calibration skips %s: %s", path, e)
    return out
