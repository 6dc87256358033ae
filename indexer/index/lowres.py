"""Registered marks as small copies of them look, for queries whose mark is small.

A favicon, a thumbnail or a mark cut from a scanned letter reaches the service with a
few dozen pixels. The network sees its 224 px upscale, soft and blocky, and its vector
lands among other soft marks more than near the sharp registered file: a 50 px JPEG of
the "mahindra" wordmark scored 0.34 with its own mark and 0.53 with another wide
wordmark. Averaging a low-resolution variant into the registered vector
(indexer.variants) moves it only part of the way. So the index keeps more vectors per
mark: the mark shrunk to each of `copy_px` pixels on its longer side and prepared as a
query is. A query whose mark is under `below_px` (half the network's input) is searched
as usual; then its first `depth` candidates are re-ranked by their copies of the size
nearest its own, which compares the two marks at about the query's own resolution.
Larger queries are answered from the main index alone.

Each size's vectors sit in a FAISS index of their own (`lowres32.faiss`...: IDMap2 over
fp16 codes, under the catalog ids), read back by id for the few candidates of a small
query and never searched, so any main index structure can go with them. `add` and
`remove` keep them in step with the main index.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from PIL import Image

from indexer.network.preprocess import PreprocessConfig, views_of

log = logging.getLogger(__name__)

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class LowResConfig:
    """Recorded in the manifest, so that `add` and the server use what the build used."""

    # A favicon's and a thumbnail's size. Chosen over one size (32 or 45 px) and over
    # three (32, 45, 64) by the build's label-free calibration estimate (see the README).
    copy_px: tuple[int, ...] = (32, 64)
    below_px: int = 112  # queries whose mark is smaller than this are re-ranked
    depth: int = 50  # candidates of the main search re-ranked

    def __post_init__(self):
        object.__setattr__(self, "copy_px", tuple(self.copy_px))  # a list, read from JSON
        if not self.copy_px or min(self.copy_px) < 1:
            raise ValueError(f"small-copy sizes must be positive pixels, got {self.copy_px}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["copy_px"] = list(self.copy_px)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "LowResConfig | None":
        return cls(**d) if d else None

    def files(self) -> list[str]:
        return [file_name(px) for px in self.copy_px]

    def nearest(self, mark_px: int) -> int:
        """Position in `copy_px` of the size nearest `mark_px`, by ratio."""
        return int(np.argmin([abs(np.log(max(mark_px, 1) / px)) for px in self.copy_px]))


def file_name(px: int) -> str:
    return f"lowres{px}.faiss"


def files(recorded: dict) -> list[str]:
    """The small-copy files of an index whose manifest records `recorded` (its `lowres`)."""
    config = LowResConfig.from_dict(recorded)
    return config.files() if config else []


def small_copies(mark: Image.Image, cfg: PreprocessConfig, sizes: Sequence[int]) -> np.ndarray:
    """(len(sizes), views, size, size, 3): the mark (trimmed: preprocess.mark_of) shrunk
    to each size, prepared."""
    return np.stack([views_of(_shrunk(mark, px), cfg) for px in sizes])


def _shrunk(mark: Image.Image, px: int) -> Image.Image:
    scale = px / max(mark.size)
    if scale >= 1.0:
        return mark
    # Pixel means (BOX), as a camera or a browser's downscaling gives them.
    size = (max(1, round(mark.width * scale)), max(1, round(mark.height * scale)))
    return mark.resize(size, Image.Resampling.BOX)


def new_index(dim: int) -> faiss.Index:
    """fp16 codes: half the memory of floats, scores within ~1e-3, no training needed."""
    return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))


class Reranker:
    """Re-ranks the candidates of small queries by their small copies' vectors."""

    def __init__(self, indexes: list[faiss.Index], config: LowResConfig):
        if len(indexes) != len(config.copy_px):
            raise ValueError(f"{len(indexes)} small-copy indexes for sizes {config.copy_px}")
        self.indexes, self.config = indexes, config

    def small(self, mark_px: Sequence[int]) -> np.ndarray:
        return np.asarray(mark_px) < self.config.below_px

    def rerank(self, vecs: np.ndarray, mark_px: Sequence[int], scores: np.ndarray,
               ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of small queries re-scored and re-sorted; the others as they were."""
        scores, ids = scores.copy(), ids.copy()
        for row in np.flatnonzero(self.small(mark_px)):
            cand = ids[row][ids[row] >= 0]
            copies = _read(self.indexes[self.config.nearest(mark_px[row])], cand)
            if copies is None:
                continue  # answered from the main index, as if the query were large
            sims = copies @ vecs[row]
            order = np.argsort(-sims, kind="stable")
            scores[row, :len(cand)], ids[row, :len(cand)] = sims[order], cand[order]
        return scores, ids


def _read(index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
    """The stored vectors of `ids`; None if one is missing, which only a faulty writer
    leaves (`verify` names it). One id at a time, because FAISS's reconstruct_batch ends
    the whole process on a missing id (an exception inside an OpenMP loop); re-ranking
    costs ~0.5 ms a small query this way (0.1 ms with the batch call), against ~45 ms to
    encode it."""
    if len(ids) == 0:
        return None
    try:
        return np.stack([index.reconstruct(int(i)) for i in ids])
    except RuntimeError as e:
        log.error("a candidate has no small-copy vector (%s): answering from the main index; "
                  "run `python -m indexer verify`", str(e).splitlines()[0][-60:])
        return None


def search(search_fn: SearchFn, vecs: np.ndarray, mark_px: Sequence[int], k: int,
           reranker: Reranker | None) -> tuple[np.ndarray, np.ndarray]:
    """`search_fn(vecs, k)`, with small queries' candidates re-ranked where the index
    has small copies. The one search path of the server and of the calibration."""
    if reranker is None or not reranker.small(mark_px).any():
        return search_fn(vecs, k)
    scores, ids = search_fn(vecs, max(k, reranker.config.depth))
    scores, ids = reranker.rerank(vecs, mark_px, scores, ids)
    return scores[:, :k], ids[:, :k]
