"""Default existence threshold, estimated from the registry itself (no labels).

Queries for registered marks are edited copies of them; queries for unregistered
marks are other marks, clean or edited the same way. Both can be simulated with the
registry alone: take a sample of indexed marks, make edited copies of them
(indexer.network.augment), and search each copy and each clean mark.
- A copy's score against its own mark is a *positive*: what a registered mark scores
  after an edit.
- The best score against the *other* marks is a *negative*: what the mark would score if
  it were left out of the index, i.e. what an unregistered mark scores.
The threshold holds both kinds of unregistered query to `target_fpr`: it is the larger
of the (1 - target_fpr) quantiles of the clean and of the edited negatives (edits lower
every similarity, so clean strangers set the threshold on most registries: on
LogoBench, calibrating on edited copies alone let 12% of clean unregistered marks
through). The share of edited positives ranked first and above it is the estimated TPR.

The sampled marks are chosen before the index's PCA is learned and left out of its
fit (`pick_held_out`): a projection whitened on a mark spreads that mark away from
the others, so in-sample marks would score lower against strangers than truly
unseen marks do, and the threshold would come out too low (on LogoBench: 2.5% FPR
for a 1% target).
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from indexer import decision
from indexer.index import lowres
from indexer.network.augment import random_edit
from indexer.network.encoder import CPU_BATCH, Encoder
from indexer.network.preprocess import ImageDecodeError, open_image, to_query

log = logging.getLogger(__name__)

# When the registry is too small to say anything: a copy must stand this far out.
FALLBACK_THRESHOLD = {decision.TOP: 0.8, decision.MARGIN: 0.3}
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
    decision: str = decision.MARGIN
    held_out_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _split(scores: np.ndarray, ids: np.ndarray, mid: int, kind: str):
    """One search row -> (own decision score or -1, own ranked first, stranger's score).

    The stranger's score is what the row would give if `mid` were not in the index:
    the decision score of the row without it.
    """
    mine = ids == mid
    valid = ids >= 0
    others = scores[valid & ~mine]
    stranger = float(decision.decision_scores(kind, others[None])[0]) if len(others) else 0.0
    if not mine.any():
        return -1.0, False, stranger
    row = np.concatenate([scores[mine][:1], others])
    return float(decision.decision_scores(kind, row[None])[0]), bool(ids[0] == mid), stranger


def _search_depth(kind: str) -> int:
    return decision.neighbours_needed(kind) + 1  # one more: the mark itself may be among them


def copy_scores(index: faiss.Index, encoder: Encoder, marks: list[tuple[int, Image.Image]],
                edits: int, seed: int = 0, batch_size: int = CPU_BATCH,
                kind: str = decision.MARGIN, reranker: lowres.Reranker | None = None):
    """(own decision score, own ranked first, stranger's decision score) per copy.

    `edits=0` searches each mark as it is; otherwise `edits` edited copies of each. The
    copies are searched as the server searches queries (small ones re-ranked by
    `reranker`), so the threshold fits the scores the server compares with it.
    """
    rng = random.Random(seed)
    rows = []
    jobs = [(mid, im) for mid, im in marks for _ in range(max(edits, 1))]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        queries = [to_query(random_edit(im, rng) if edits else im, encoder.preprocess)
                   for _, im in chunk]
        scores, ids = lowres.search(index.search, encoder.encode([q.array for q in queries]),
                                    [q.mark_px for q in queries], _search_depth(kind), reranker)
        rows += [_split(s, i, mid, kind) for (mid, _), s, i in zip(chunk, scores, ids)]
    own, first, other = zip(*rows) if rows else ((), (), ())
    return np.array(own), np.array(first, dtype=bool), np.array(other)


def nearest_other(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray,
                  kind: str = decision.MARGIN) -> np.ndarray:
    """Each indexed vector's decision score with itself left out of the index."""
    scores, found = index.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                 _search_depth(kind))
    return np.array([_split(s, f, mid, kind)[2] for s, f, mid in zip(scores, found, ids)])


def stored_vectors(index: faiss.Index, ids: list[int]) -> np.ndarray | None:
    """The indexed vectors of `ids`, or None where the index type cannot give them back."""
    if not ids:
        return None
    try:
        return np.stack([index.reconstruct(int(i)) for i in ids])
    except RuntimeError:
        return None


def calibrate(index: faiss.Index, encoder: Encoder, marks: list[tuple[int, Image.Image]],
              target_fpr: float = 0.01, edits: int = 2, seed: int = 0,
              clean: np.ndarray | None = None, kind: str = decision.MARGIN,
              reranker: lowres.Reranker | None = None) -> Calibration:
    """`clean`: the marks' indexed vectors when the caller has them (saves encoding them).

    `kind`: the decision score the threshold applies to (indexer.decision); `reranker`:
    the index's small-copy vectors, if it has them.
    """
    if index.ntotal < MIN_MARKS or not marks:
        log.warning("only %d marks: using the fallback threshold %.2f", index.ntotal,
                    FALLBACK_THRESHOLD[kind])
        return Calibration(FALLBACK_THRESHOLD[kind], target_fpr, float("nan"), 0, 0, "fallback",
                           decision=kind)
    if clean is None:
        _, _, clean_other = copy_scores(index, encoder, marks, 0, seed, kind=kind,
                                        reranker=reranker)
    else:
        clean_other = nearest_other(index, np.array([mid for mid, _ in marks]), clean, kind)
    own, first, other = copy_scores(index, encoder, marks, edits, seed, kind=kind,
                                    reranker=reranker)
    threshold = float(max(np.quantile(clean_other, 1.0 - target_fpr),
                          np.quantile(other, 1.0 - target_fpr)))
    # Stored to 4 decimals, rounded up: rounding down could let a stranger that scored
    # just below the quantile through.
    threshold = math.ceil(threshold * 1e4) / 1e4
    tpr = float((first & (own >= threshold)).mean())
    log.info("calibrated on %d marks and %d edited copies: threshold %.4f on the %s, estimated "
             "TPR %.3f at FPR %.3f", len(clean_other), len(own), threshold,
             decision.describe(kind), tpr, target_fpr)
    return Calibration(threshold, target_fpr, round(tpr, 4), len(own),
                       len(other) + len(clean_other), decision=kind)


def pick_held_out(n: int, count: int, seed: int = 0) -> list[int]:
    """Positions of the marks to calibrate on and to leave out of the PCA fit.

    At most a quarter of the registry, so the projection is still learned on most of it.
    """
    return sorted(random.Random(seed).sample(range(n), min(count, n // 4)))


def load_marks(sources: list[tuple[int, str]]) -> list[tuple[int, Image.Image]]:
    """(id, image) pairs read from their source files; missing ones skipped."""
    out = []
    for mid, path in sources:
        try:
            out.append((mid, open_image(Path(path).read_bytes())))
        except (OSError, ImageDecodeError) as e:
            log.warning("calibration skips %s: %s", path, e)
    return out
