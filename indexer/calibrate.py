"""Default existence threshold, estimated from the registry itself (no labels).

Queries for registered marks are edited copies of them; queries for unregistered marks
are other marks, clean or edited the same way. Both are simulated:
- *Positives*: a sample of indexed marks, each copied through the edits of
  `augment.CYCLE` (the mark untouched, each edit alone, two in a row, in equal shares)
  and searched. A copy's decision score, where its own mark (or a rendition of it) comes
  first, is what a registered mark scores after an edit; their share above the
  threshold is the estimated TPR.
- *Negatives*: the background set (indexer.network.background), brand-free marks that
  are in no register, untouched and edited, projected like queries and searched. The
  threshold holds both kinds to `target_fpr`: it is the lowest that at most that share
  of the clean and of the edited ones reach (`holding_to`); their share above it is the
  estimated FPR.

The negatives used to be the sampled marks themselves, searched with their own mark
left out. That fails on real registers, where most marks are filed in several
renditions: with its siblings still indexed, a left-out mark scores like a registered
one, and the threshold climbs until nothing is confirmed (LogoBench families: threshold
0.67, 1% of registered marks confirmed). An encoder without a background set (a custom
TorchScript file) still calibrates that way, and says so.

The family margin (indexer.decision) needs the similarity from which two registered
marks are renditions of one mark: the median similarity the positives keep to their own
mark. Two registered marks closer than a typical edited copy is to its original are the
same mark to this service.

The sampled marks are chosen before the index's PCA is learned and left out of its fit
(`pick_held_out`): a projection whitened on a mark spreads that mark away from the
others, so in-sample marks would score lower against strangers than unseen marks do.
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
from indexer.index import lowres, vectors
from indexer.network.augment import CYCLE, nth_edit
from indexer.network.background import Background
from indexer.network.encoder import CPU_BATCH, Encoder
from indexer.network.preprocess import ImageDecodeError, Prepared, open_image, to_query

log = logging.getLogger(__name__)

# When the registry is too small to say anything: a copy must stand this far out.
FALLBACK_THRESHOLD = {decision.TOP: 0.8, decision.MARGIN: 0.3, decision.FAMILY: 0.3}
MIN_MARKS = 10
# Under these, the estimate is too rough to trust, and the build says so.
MIN_POSITIVES = 200
MIN_NEGATIVES = 500
METHOD = "edited copies of registered marks; background marks as unregistered ones"
LEAVE_ONE_OUT = "edited copies of registered marks, leave-one-out negatives"


@dataclass
class Calibration:
    threshold: float
    target_fpr: float
    estimated_tpr: float
    positives: int
    negatives: int
    method: str = METHOD
    decision: str = decision.FAMILY
    family_similarity: float | None = None
    estimated_fpr: float | None = None
    held_out_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Copies:
    """The positives' search rows: scores, ids and each hit's similarity to the top hit,
    plus the id of the mark each copy was made from and the edit of the cycle it went
    through (None for untouched marks)."""
    scores: np.ndarray
    ids: np.ndarray
    to_top: np.ndarray
    marks: np.ndarray
    edits: np.ndarray | None = None


def prepare(images: list[Image.Image], encoder: Encoder) -> tuple[list[Prepared], list[int]]:
    """The images as queries, and the positions of those that are; an edit can leave a
    faint mark with nothing on it (BlankImageError), and that copy is left out."""
    prepared, kept = [], []
    for n, im in enumerate(images):
        try:
            prepared.append(to_query(im, encoder.preprocess))
            kept.append(n)
        except ImageDecodeError:
            pass
    return prepared, kept


def search(index: faiss.Index, encoder: Encoder, queries: list[Prepared], depth: int,
           reranker: lowres.Reranker | None = None, batch_size: int = CPU_BATCH):
    """Each query searched as the server searches one (small ones re-ranked by
    `reranker`), so the threshold fits the scores the server compares with it."""
    scores, ids = [], []
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        s, i = lowres.search(index.search, encoder.encode([q.array for q in batch]),
                             [q.mark_px for q in batch], depth, reranker)
        scores.append(s)
        ids.append(i)
    return np.concatenate(scores), np.concatenate(ids)


def edited_copies(index: faiss.Index, encoder: Encoder, marks: list[tuple[int, Image.Image]],
                  edits: int, seed: int = 0, reranker: lowres.Reranker | None = None) -> Copies:
    """`edits` copies of each mark, the i-th copy of all through edit i of the cycle."""
    rng = random.Random(seed)
    jobs = [(mid, im, n) for k, (mid, im) in enumerate(marks) for n in range(k * edits,
                                                                             (k + 1) * edits)]
    queries, kept = prepare([nth_edit(im, n, rng) for _, im, n in jobs], encoder)
    scores, ids = search(index, encoder, queries, decision.FAMILY_DEPTH + 1, reranker)
    return Copies(scores, ids, vectors.similarity_to_top(index, ids),
                  np.array([jobs[n][0] for n in kept], dtype=np.int64),
                  np.array([CYCLE[jobs[n][2] % len(CYCLE)] for n in kept]))


def own_similarity(copies: Copies) -> np.ndarray:
    """Each copy's similarity to its own mark; NaN where the search did not return it."""
    hit = copies.ids == copies.marks[:, None]
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), copies.scores[np.arange(len(first)), first], np.nan)


def family_similarity(copies: Copies) -> float:
    own = own_similarity(copies)
    return math.ceil(float(np.nanmedian(own)) * 1e4) / 1e4 if np.isfinite(own).any() else 1.0


def positive_scores(index: faiss.Index, copies: Copies, rule: decision.Rule
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(decision score, own mark or a rendition of it ranked first) per copy."""
    score = rule.scores(copies.scores, copies.to_top)
    top = copies.ids[:, 0]
    first = top == copies.marks
    if rule.kind == decision.FAMILY:
        # A rendition of the mark first is a right answer too: the top hit is at least
        # as close to the copy's own mark as renditions are to each other.
        pairs = np.stack([top, copies.marks], axis=1)
        sims = vectors.similarity_to_top(index, pairs[top >= 0])[:, 1]
        first[top >= 0] |= sims >= rule.family_similarity
    return score, first


def background_scores(index: faiss.Index, background: Background, encoder: Encoder,
                      rule: decision.Rule) -> tuple[np.ndarray, np.ndarray]:
    """The decision scores of the background marks, clean and edited, in this index."""
    out = []
    for raw in (background.clean, background.edited):
        vecs = encoder.project(raw)  # unit length, as the index's vectors
        scores, ids = index.search(np.ascontiguousarray(vecs, dtype=np.float32), rule.depth())
        out.append(rule.scores(scores, vectors.similarity_to_top(index, ids)
                               if rule.needs_vectors else None))
    return out[0], out[1]


def leave_one_out_scores(index: faiss.Index, encoder: Encoder,
                         marks: list[tuple[int, Image.Image]], copies: Copies,
                         rule: decision.Rule, reranker: lowres.Reranker | None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Without a background set: the sampled marks, clean and edited, each searched with
    itself left out of the results."""
    queries, kept = prepare([im for _, im in marks], encoder)
    scores, ids = search(index, encoder, queries, rule.depth() + 1, reranker)
    clean = Copies(scores, ids, vectors.similarity_to_top(index, ids),
                   np.array([marks[n][0] for n in kept], dtype=np.int64))
    return _without_own(index, clean, rule), _without_own(index, copies, rule)


def _without_own(index: faiss.Index, copies: Copies, rule: decision.Rule) -> np.ndarray:
    keep = copies.ids != copies.marks[:, None]
    n = keep.sum(axis=1).min()
    scores = np.stack([s[k][:n] for s, k in zip(copies.scores, keep)])
    ids = np.stack([i[k][:n] for i, k in zip(copies.ids, keep)])
    return rule.scores(scores, vectors.similarity_to_top(index, ids)
                       if rule.needs_vectors else None)


def calibrate(index: faiss.Index, encoder: Encoder, marks: list[tuple[int, Image.Image]],
              target_fpr: float = 0.01, edits: int = 2, seed: int = 0,
              background: Background | None = None,
              reranker: lowres.Reranker | None = None) -> Calibration:
    """`encoder`: paired with the index's projection; `background`: the background set
    of this encoder, or None to fall back on leave-one-out negatives; `reranker`: the
    index's small-copy vectors, if it has them."""
    if index.ntotal < MIN_MARKS or not marks:
        log.warning("only %d marks: using the fallback threshold %.2f", index.ntotal,
                    FALLBACK_THRESHOLD[decision.FAMILY])
        return Calibration(FALLBACK_THRESHOLD[decision.FAMILY], target_fpr, float("nan"), 0, 0,
                           "fallback", family_similarity=1.0,
                           warnings=[f"only {index.ntotal} marks: a fixed threshold"])
    copies = edited_copies(index, encoder, marks, edits, seed, reranker)
    rule = decision.Rule(decision.FAMILY, family_similarity(copies))
    own, first = positive_scores(index, copies, rule)
    if background is not None:
        clean_neg, edited_neg = background_scores(index, background, encoder, rule)
        method = METHOD
    else:
        clean_neg, edited_neg = leave_one_out_scores(index, encoder, marks, copies, rule,
                                                     reranker)
        method = LEAVE_ONE_OUT
    threshold = max(holding_to(clean_neg, target_fpr), holding_to(edited_neg, target_fpr))
    tpr = float((first & (own >= threshold)).mean())
    negatives = np.concatenate([clean_neg, edited_neg])
    fpr = float((negatives >= threshold).mean())
    cal = Calibration(threshold, target_fpr, round(tpr, 4), len(own), len(negatives), method,
                      rule.kind, rule.family_similarity, round(fpr, 4))
    cal.warnings = _warnings(cal, len(marks), edits)
    log.info("calibrated on %d edited copies of %d marks and %d unregistered ones: threshold "
             "%.4f on the %s, estimated TPR %.3f at FPR %.3f", len(own), len(marks),
             len(negatives), threshold, rule.describe(), tpr, fpr)
    for w in cal.warnings:
        log.warning("calibration: %s", w)
    return cal


def holding_to(negatives: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold, to 4 decimals, that at most `target_fpr` of `negatives` reach.

    Not np.quantile: between two scores it interpolates, and the score above it is then
    one more negative than the rate allows where len(negatives) * target_fpr is not whole
    (100 of 1,998 at 5%). Stored to 4 decimals, so the threshold is the grid point just
    above the first negative that must stay out."""
    allowed = math.floor(target_fpr * len(negatives) + 1e-9)
    if allowed >= len(negatives):
        return math.floor(float(np.min(negatives)) * 1e4) / 1e4
    out = float(np.sort(negatives)[::-1][allowed])  # the highest that must not pass
    step = math.floor(out * 1e4) + 1
    # Scores are float32 and compare with the threshold in float32 (NumPy's rule for a
    # Python float): a grid point that rounds onto a score would let it through.
    while (negatives >= step / 1e4).sum() > allowed:
        step += 1
    return step / 1e4


def _warnings(cal: Calibration, marks: int, edits: int) -> list[str]:
    """What makes this estimate one not to rely on, in words a user can act on."""
    out = []
    if cal.positives < MIN_POSITIVES:
        out.append(f"the estimate rests on {cal.positives} edited copies of {marks} marks "
                   f"(fewer than {MIN_POSITIVES}): TPR {cal.estimated_tpr:.3f} is rough; index "
                   f"more marks or raise --calibration-edits (now {edits})")
    if cal.negatives < MIN_NEGATIVES:
        out.append(f"only {cal.negatives} unregistered marks measured the threshold (fewer than "
                   f"{MIN_NEGATIVES}): the false-positive rate it gives is rough")
    if cal.method == LEAVE_ONE_OUT:
        out.append("no background set for this encoder: unregistered marks were simulated by "
                   "leaving registered ones out, which sets the threshold too high on a "
                   "register of several renditions per mark")
    if cal.estimated_tpr < 0.5:
        out.append(f"at this threshold only {cal.estimated_tpr:.0%} of edited registered marks "
                   f"would be confirmed: the encoder does not tell this register's marks from "
                   f"unregistered ones at FPR {cal.target_fpr}")
    return out


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

