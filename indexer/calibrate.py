"""Default existence threshold, estimated from the registry itself (no labels).

A query for an unregistered mark is answered with the registered mark that looks
most like it. The closest stand-in for such queries that every registry has is its
own marks searched against the rest of it (leave-one-out): the score of each mark's
nearest *other* mark. The threshold is the (1 - target_rate) quantile of those
scores, so about `target_rate` of distinct registered marks would be taken for each
other.
"""
from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)

FALLBACK_THRESHOLD = 0.8  # when the registry is too small to say anything
MAX_SAMPLE = 20_000
METHOD = "leave-one-out nearest-neighbour quantile"


def nearest_other_scores(index: faiss.Index, ids: np.ndarray, vecs: np.ndarray,
                         seed: int = 0) -> np.ndarray:
    """Score of each (sampled) indexed vector's best match other than itself."""
    if len(ids) > MAX_SAMPLE:
        pick = np.random.default_rng(seed).choice(len(ids), MAX_SAMPLE, replace=False)
        ids, vecs = ids[pick], vecs[pick]
    scores, found = index.search(np.ascontiguousarray(vecs, dtype=np.float32), 2)
    # The first hit is the vector itself, except where an exact duplicate comes first.
    not_self = found[:, 0] != ids
    return np.where(not_self, scores[:, 0], scores[:, 1])


def leave_one_out_threshold(index: faiss.Index, ids: np.ndarray, vecs: np.ndarray,
                            target_rate: float = 0.01) -> float:
    if index.ntotal < 10:
        log.warning("only %d marks: using the fallback threshold %.2f", index.ntotal,
                    FALLBACK_THRESHOLD)
        return FALLBACK_THRESHOLD
    scores = nearest_other_scores(index, ids, vecs)
    return float(np.quantile(scores, 1.0 - target_rate))
