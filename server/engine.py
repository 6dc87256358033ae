"""The search engine behind the RPCs, free of gRPC: images in, decisions and matches out.

Thread-safe: the server's encoder lanes (server/batcher.py) call `search` side by side,
each with a batch of concurrent callers' images; searches of a GPU index take turns.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from indexer import geometry, words
from indexer.index import lowres, vectors, wordindex
from indexer.index.filters import Filter, FilterIndex, InvalidFilter
from indexer.index.reader import OpenIndex, encoder_for, open_index
from indexer.network.detector import Detector, iou
from indexer.network.encoder import Encoder
from indexer.network.locate import CUT_MARGIN, Part, locate
from indexer.network.preprocess import (BlankImageError, Prepared, Region, open_image,
                                        painted_over, prepare_query, to_query)
from server.settings import DEFAULT_MAX_K

log = logging.getLogger(__name__)

DEFAULT_K = 10


class InvalidRequest(ValueError):
    """The caller sent something this service cannot answer; the message says what."""


@dataclass(frozen=True)
class Hit:
    serial: str
    name: str
    score: float
    # The registered mark's similarity to the row's top hit (1.0 for the top hit), where
    # the decision needs it (indexer.decision.FAMILY): renditions of the top match are
    # not its runners-up.
    to_top: float = 1.0
    same_mark: bool = False  # a rendition of the top match (see indexer.decision)
    metadata: str = "{}"  # the manifest's other columns for this mark, JSON text
    text: str = ""  # the registered mark's words
    # How alike its words are to the query's (indexer.words.similarity); 0 where the
    # query has none.
    text_score: float = 0.0


@dataclass(frozen=True)
class Query:
    """One image to search: its bytes, the part of it to look at, the marks it may match."""

    image: bytes
    region: Region | None = None  # (x, y, width, height) in the pixels of the image sent
    filters: tuple[Filter, ...] = ()
    # The mark's words as the caller gives them (checked: indexer.words.check_text); with
    # no image, a search by words alone.
    text: str = ""
    # Read the words in the picture even where its answer is sure without them.
    read_words: bool = False


def as_query(item: "Query | bytes") -> Query:
    return item if isinstance(item, Query) else Query(item)


@dataclass(frozen=True)
class MarkAnswer:
    """The answer for one mark of a picture."""

    box: Region  # (x, y, width, height) in the pixels of the image sent
    exists: bool
    matched_serial: str
    top_score: float
    confidence: float
    hits: list[Hit]
    detected: float | None = None  # the detector's certainty, where it found the mark
    words: str = ""  # the mark's words, as read in the picture or given
    # The best match of those words among the register's (Hit.text_score); the mark
    # exists where confidence reaches its threshold or this the words' threshold.
    words_score: float = 0.0
    matched_by: str = ""  # "picture" or "words" where it exists (see SearchEngine.add_words)


@dataclass(frozen=True)
class Answer:
    exists: bool
    matched_serial: str
    top_score: float
    confidence: float  # the decision score (indexer.decision) compared with the threshold
    threshold: float
    hits: list[Hit]
    # Under filters: how many registered marks passed them, among which the decision was
    # taken; None without filters.
    candidates: int | None = None
    # Every mark found in the picture, those that exist first, most confident first
    # (SearchEngine.add_words); the fields above are the first one's. Empty where a
    # photograph showed no mark and nothing registered when searched whole (the fields
    # above are then the whole picture's).
    marks: tuple[MarkAnswer, ...] = ()
    words: str = ""
    words_score: float = 0.0
    matched_by: str = ""
    # The threshold of a match by words (indexer.word_calibration); None: the register
    # has no words.
    words_threshold: float | None = None
    # The picture was taken apart as a photograph (indexer.network.locate): marks may be
    # in it that the detector did not box.
    photograph: bool = False


# How an answer says why a mark exists: its picture's decision score, its words, or (a
# mark found in a photograph) its keypoints lined up with its first match's
# (SearchEngine.verify).
BY_PICTURE, BY_WORDS, BY_KEYPOINTS = "picture", "words", "keypoints"
# ... or (a clean mark) its picture with the words read beside it left out
# (SearchEngine._figure_alone).
BY_FIGURE = "figure"
# Words read in a picture confirm one of its first this many matches (SearchEngine.add_words).
CONFIRM_DEPTH = 3
# Registered marks' keypoints kept (SearchEngine._registered_keypoints), the most recently
# used: a few registered marks are the first match of many photographed ones (look-alikes
# that strangers' marks land on: in make eval's 997 public scenes, 2,737 marks compared
# named 544 registered marks, the most often one 146 times), and a thumbnail's SIFT costs
# ~8 ms. Up to ~300 KB each (500 keypoints and the 256 px grey picture).
KEYPOINTS_KEPT = 256
# Words read in a mark found in a photograph decide alone where they are a registered
# mark's words (SearchEngine._with_words): the same letters, at least EXACT_LETTERS of
# them, or, for words of SLIP_LETTERS letters or more, up to one slip in five (OCR of a
# photographed word misses a letter: "itpod" for GITPOD).
EXACT_LETTERS = 4
SLIP_LETTERS = 6
SLIP_SIMILARITY = 0.8
# Words read in a mark found in a photograph also confirm one of its picture's own first
# CONFIRM_DEPTH matches that reads alike: its words with up to one slip in four letters,
# four letters or more on both sides (_reads_alike). OCR of a photographed short word
# slips a letter as of a long one ("popm" under PNPM, "mest" under NEST, "ocairo" under
# CAIRO), which the words' threshold (typed words: one slip in ten) and _same_words (one in
# five, six letters or more) leave out; here the picture names the mark already, and the
# words only have to agree with it: alike in sight and in sound.
ALIKE_SIMILARITY = 0.75
# A mark found in a photograph that its picture leaves unsure has its words read in its
# box, closer than the photograph's read whole sees them (words.READ_SIDE), only where
# that read found words in the box, or saw the box under this many pixels on its longer
# side (too small for PP-OCR to find words in: it needs them ~8 px high or more). In 333
# public scenes, 748 of 993 unsure marks had no line of the whole read in their box;
# read closer, 15 of them gave words (misread textures: "BOVIRLE", "FOVHL"), none a
# registered mark's (docs/scenes.md).
WHOLE_READ_LEAST = 64


def _same_words(read: tuple[str, ...], registered: tuple[str, ...]) -> bool:
    a, b = "".join(read), "".join(registered)
    if a == b:
        return len(b) >= EXACT_LETTERS
    return len(b) >= SLIP_LETTERS and words.spelled(a, b) >= SLIP_SIMILARITY


def _reads_alike(read: tuple[str, ...], registered: tuple[str, ...]) -> bool:
    a, b = "".join(read), "".join(registered)
    return min(len(a), len(b)) >= EXACT_LETTERS and words.spelled(a, b) >= ALIKE_SIMILARITY


def _cut(picture: Image.Image, box: Region) -> Image.Image:
    x, y, w, h = box
    return picture.crop((x, y, x + w, y + h))


def _read_in_part(mark: MarkAnswer, text: str) -> bool:
    """Whether `mark` exists by words read in its box that are a part of `text`, the
    words of a block the whole photograph's read found there: read closer, a mark's words
    can come out cut ("apache" of APACHE CASSANDRA, "Github" of GITHUB ACTIONS) and name
    another registered mark."""
    if mark.matched_by != BY_WORDS:
        return False
    part, whole = words.words_of(mark.words), words.words_of(text)
    return 0 < len(part) < len(whole) and any(
        whole[i:i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def _scored(hits: list[Hit], query: tuple[str, ...], typed: bool = False) -> list[Hit]:
    """`hits` with their registered words scored against the words `query`
    (words.similarity; `typed`: words the caller gave, short ones counting)."""
    return [dataclasses.replace(h, text_score=words.similarity(query, words.words_of(h.text),
                                                               typed)) for h in hits]


def _unanswered(mark: MarkAnswer) -> MarkAnswer:
    return dataclasses.replace(mark, exists=False, matched_serial="", matched_by="")


class Picture:
    """The picture sent, decoded the first time a step after the search needs it (the
    encoder's batch decoded its own copy, scaled for the network)."""

    def __init__(self, data: bytes):
        self._data = data
        self._image: Image.Image | None = None

    def __call__(self) -> Image.Image:
        if self._image is None:
            self._image = open_image(self._data)
        return self._image


# What a search gives for one picture: each part searched, with the hits of each of its
# crops (Part.crops).
Found = list[tuple[Part, list[list[Hit]]]]


def paired(parts: list[Part], hits: list[list[Hit]]) -> Found:
    """The hits of every crop of `parts`, searched in order, given back to their parts."""
    found, at = [], 0
    for part in parts:
        found.append((part, hits[at:at + len(part.crops)]))
        at += len(part.crops)
    return found


@dataclass(frozen=True)
class EngineConfig:
    threshold: float | None = None  # None: the index manifest's default
    max_k: int = DEFAULT_MAX_K
    mmap: bool = False
    search_params: dict | None = None  # e.g. {"nprobe": 64}; None: the manifest's tuned ones
    gpu_index: bool = False  # search a GPU copy of the index (where FAISS has a GPU)
    # Finds the marks in photographs (indexer.network.locate); None searches every
    # picture whole.
    detector: Detector | None = None
    # The threads a call reads words with while no other call is being served (the
    # server's --threads); beside other calls, one: their encoder lanes have the rest.
    read_threads: int = 1


def check_threshold(value: float) -> float:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"threshold must be between 0 and 1, got {value}")
    return value


class SearchEngine:
    def __init__(self, encoder: Encoder, index: OpenIndex, config: EngineConfig = EngineConfig()):
        self.encoder = encoder_for(index, encoder)
        self.index = index
        self.max_k = config.max_k
        self.detector = config.detector
        self.rule = index.manifest.rule
        # Searches return at least this many hits, so the decision score is exact
        # whatever k the caller asked for.
        self._depth = self.rule.depth()
        self.threshold = check_threshold(
            index.manifest.threshold if config.threshold is None else config.threshold)
        # Marks found in photographs have a threshold of their own where the build
        # calibrated one (indexer.scene_calibration); the server's --threshold sets both.
        scene = index.manifest.scene_threshold
        self.scene_threshold = check_threshold(
            self.threshold if config.threshold is not None or scene is None else scene)
        # Words are matched where the build kept any (indexer.word_calibration); a register
        # without words is searched by its pictures alone.
        self.words_threshold = index.manifest.words_threshold
        params = index.manifest.search_params | (config.search_params or {})
        self.searcher = vectors.Searcher(index.index, params, use_gpu=config.gpu_index)
        # FAISS GPU indexes must not be searched from two threads; CPU indexes may be,
        # and the server's encoder lanes (server/batcher.py) do.
        self._search_lock = threading.Lock() if self.searcher.on_gpu else nullcontext()
        self.read_threads = max(1, config.read_threads)
        # A lone photograph's cuts are prepared, and its marks' keypoints found, on the
        # read threads' cores side by side (_lone_map); made at the first photograph.
        self._pool: ThreadPoolExecutor | None = None
        self._serving = 0  # calls in progress (serving())
        self._serving_lock = threading.Lock()
        self._filters: FilterIndex | None = None  # made at the first filtered request
        self._filters_lock = threading.Lock()
        self._registered_keypoints = functools.lru_cache(KEYPOINTS_KEPT)(self._keypoints_of)
        log.info("serving %s: %d marks, %s %s%s, threshold %.4f on the %s", index.path,
                 index.index.ntotal, index.manifest.index_type, params or "exact",
                 " on the GPU" if self.searcher.on_gpu else "", self.threshold,
                 self.rule.describe())

    @classmethod
    def open(cls, index_dir: str | Path, encoder: Encoder,
             config: EngineConfig = EngineConfig()) -> "SearchEngine":
        index = open_index(index_dir, mmap=config.mmap)
        try:
            return cls(encoder, index, config)
        except BaseException:  # refused (another encoder, a bad threshold): let go of it
            index.close()
            raise

    def close(self) -> None:
        self.index.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- request checks -------------------------------------------------------------
    def check_k(self, k: int | None) -> int:
        k = DEFAULT_K if k is None else k
        if not 1 <= k <= self.max_k:
            raise InvalidRequest(f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def resolve_threshold(self, threshold: float | None) -> float:
        return self.threshold if threshold is None else check_threshold(threshold)

    def threshold_for(self, part: Part, threshold: float | None) -> float:
        """A request's threshold, else the one for this kind of part: marks found in a
        photograph have their own (`scene_threshold`)."""
        if threshold is not None:
            return threshold
        return self.scene_threshold if part.detected is not None else self.threshold

    @property
    def filter_index(self) -> FilterIndex:
        """The catalog's metadata by column and value, read once (1 M marks: seconds)."""
        with self._filters_lock:
            if self._filters is None:
                self._filters = FilterIndex.from_rows(self.index.catalog.metadata_rows())
            return self._filters

    def allowed(self, filters: tuple[Filter, ...]) -> np.ndarray | None:
        """The ids that pass `filters` (None: no filter); InvalidRequest for a bad one."""
        if not filters:
            return None
        try:
            return self.filter_index.ids(filters)
        except InvalidFilter as e:
            raise InvalidRequest(str(e)) from None

    @staticmethod
    def check_region(region: Region | None) -> Region | None:
        if region is not None and (region[2] <= 0 or region[3] <= 0 or min(region[:2]) < 0):
            raise InvalidRequest(f"region x={region[0]} y={region[1]} width={region[2]} "
                                 f"height={region[3]} is empty or starts outside the image: "
                                 "give x, y >= 0 and width, height > 0")
        return region

    # -- the data path: bytes -> array -> vector -> ids -> serials ----------------------
    def prepare(self, query: Query | bytes) -> Prepared:
        """Decode, crop to the region, trim and letterbox; raises ImageDecodeError for bad
        bytes or a region outside the image."""
        query = as_query(query)
        return prepare_query(query.image, self.encoder.preprocess, query.region)

    def locate(self, query: Query | bytes) -> list[Part]:
        """The parts of the picture to search: the picture (or the caller's region) as one
        mark, or each mark the detector finds in a photograph (indexer.network.locate);
        raises ImageDecodeError as `prepare` does."""
        query = as_query(query)
        return locate(query.image, self.encoder.preprocess, query.region, self.detector,
                      self._lone_map())

    def hits_needed(self, k: int) -> int:
        """Hits `decide` needs to answer with k of them: the decision looks further."""
        return max(k, self._depth)

    def search(self, queries: list[Prepared], k: int,
               filters: list[tuple[Filter, ...]] | None = None) -> list[list[Hit]]:
        """Top `hits_needed(k)` hits for each prepared image, one encoder batch and one
        FAISS call per set of filters (small marks' candidates re-ranked:
        indexer.index.lowres); `decide` cuts them to k. Under filters, only marks that
        pass them are searched (indexer.index.filters)."""
        if not queries:
            return []
        kk = min(self.hits_needed(k), self.index.index.ntotal)
        vecs = self.encoder.encode([q.array for q in queries])
        if kk == 0:
            return [[] for _ in queries]
        filters = filters or [()] * len(queries)
        scores = np.full((len(queries), kk), -np.inf, np.float32)
        ids = np.full((len(queries), kk), -1, np.int64)
        for key in dict.fromkeys(filters):  # one FAISS call per set of filters, in order
            rows = [i for i, f in enumerate(filters) if f == key]
            search = functools.partial(self.searcher.search, allowed=self.allowed(key))
            with self._search_lock:
                s, i = lowres.search(search, vecs[rows], [queries[r].mark_px for r in rows],
                                     kk, self.index.reranker)
            scores[rows], ids[rows] = s, i
        # From the CPU index's stored vectors: a GPU copy need not be locked for it.
        to_top = vectors.similarity_to_top(self.index.index, ids) \
            if self.rule.needs_vectors else np.ones_like(scores)
        refs = self.index.catalog.refs(sorted({int(i) for i in ids.ravel() if i >= 0}))
        same = self.rule.family(to_top) if self.rule.needs_vectors else \
            np.arange(to_top.shape[1])[None, :] == 0
        return [[Hit(refs[i].serial, refs[i].name, float(s), float(t), bool(m), refs[i].metadata,
                     refs[i].text)
                 for s, i, t, m in zip(row_s, row_i, row_t, row_m) if i >= 0 and i in refs]
                for row_s, row_i, row_t, row_m in zip(scores, ids.tolist(), to_top, same)]

    def decide(self, hits: list[Hit], threshold: float, k: int,
               filters: tuple[Filter, ...] = ()) -> Answer:
        """The yes/no from all of `hits` (as `search` gave them), and the first k of them;
        under `filters`, among the marks that pass them (the answer counts them)."""
        candidates = len(self.allowed(filters)) if filters else None
        if not hits:
            return Answer(False, "", 0.0, 0.0, threshold, [], candidates)
        scores = np.array([[h.score for h in hits]], dtype=np.float32)
        to_top = np.array([[h.to_top for h in hits]], dtype=np.float32)
        confidence = float(self.rule.scores(scores, to_top)[0])
        exists = confidence >= threshold
        return Answer(exists, hits[0].serial if exists else "", hits[0].score, confidence,
                      threshold, hits[:k], candidates, matched_by=BY_PICTURE if exists else "")

    def answer(self, found: Found, threshold: float | None, k: int,
               filters: tuple[Filter, ...] = ()) -> Answer:
        """One answer for a picture from its parts' hits (as `search` gave them): each mark
        decided on its own, by its surest crop, most confident first; the answer's own
        fields are the first one's. A photograph is searched whole too (Part.is_mark
        False): where that is surer than every mark found, it answers, and if it
        exists it is listed first, with the box of the mark found whose top match it
        shares (that mark, answered by the whole picture), else the whole picture's.
        `threshold`: the request's (checked), None for the defaults."""
        # Filters count their candidates once for the answer, not once for every crop
        # (`decide` counts them from the catalog's metadata).
        candidates = len(self.allowed(filters)) if filters else None
        decided = [(part, max((self.decide(hits, self.threshold_for(part, threshold), k)
                               for hits in crops), key=lambda a: a.confidence))
                   for part, crops in found]
        if not decided:
            return self.decide([], self.resolve_threshold(threshold), k, filters)
        listed = sorted(((p, a) for p, a in decided if p.is_mark),
                        key=lambda pa: pa[1].confidence, reverse=True)
        whole = next(((p, a) for p, a in decided if not p.is_mark), None)
        if whole is not None and (not listed or whole[1].confidence > listed[0][1].confidence):
            top = whole[1]
            if top.exists:
                # The mark found that the whole picture's answer is about keeps its box.
                same = [p for p, a in listed if a.hits and a.hits[0].serial == top.hits[0].serial]
                listed = [(same[0] if same else whole[0], top)] + [
                    (p, a) for p, a in listed if p not in same]
        else:
            top = listed[0][1]
        marks = [MarkAnswer(p.box, a.exists, a.matched_serial, a.top_score, a.confidence,
                            a.hits, p.detected, matched_by=a.matched_by) for p, a in listed]
        return dataclasses.replace(top, marks=tuple(marks), candidates=candidates,
                                   photograph=whole is not None)

    def respond(self, found: Found, query: Query, threshold: float | None, k: int) -> Answer:
        """A picture's whole answer from its parts' hits: each mark decided (`answer`),
        those found in a photograph that their picture leaves unsure checked by their
        keypoints (`verify`), then their words (`add_words`)."""
        picture = Picture(query.image)
        answer = self.verify(self.answer(found, threshold, k, query.filters), picture)
        return self.add_words(answer, query, k, picture)

    def verify(self, answer: Answer, picture: Picture) -> Answer:
        """Each mark found in a photograph that does not exist by its picture's decision
        score is compared with the thumbnail of its first match (indexer.geometry): where
        their keypoints line up under one perspective, it exists, that match its serial.
        Perspective and light lower a photographed mark's margin more than they move its
        corners and strokes, and seen through that perspective it is its registered mark
        again; a stranger's look-alike lines up nowhere. The detector can box one mark
        twice, overlapping: of overlapping boxes lined up with one registered mark (or a
        rendition of it), the one with most keypoints lined up is the mark, and none
        where a box around it already exists by its picture."""
        unsure = [i for i, m in enumerate(answer.marks)
                  if m.detected is not None and not m.exists and m.hits]
        if not unsure:
            return answer
        aligned = self.alignments([answer.marks[i] for i in unsure], picture)
        lined_up = [(a.inliers, i) for i, a in zip(unsure, aligned) if a.verified]
        marks = list(answer.marks)
        for _, i in sorted(lined_up, reverse=True):
            m, serial = marks[i], marks[i].hits[0].serial
            if any(o.exists and iou(o.box, m.box) > 0 and self._same_brand(o.matched_serial,
                                                                          serial)
                   for o in marks):
                continue  # that mark, boxed again
            marks[i] = dataclasses.replace(m, exists=True, matched_serial=serial,
                                           matched_by=BY_KEYPOINTS)
        return self._with_marks(answer, marks)

    def alignments(self, marks: list[MarkAnswer], picture: Picture) -> list[geometry.Alignment]:
        """How each mark (with hits) lines up with its first match's thumbnail under one
        perspective (indexer.geometry); no keypoints where the catalog keeps no thumbnail.
        A registered mark's keypoints are kept for the next time (KEYPOINTS_KEPT); a lone
        call's marks are lined up side by side (_lone_map)."""
        registered = {s: self._registered_keypoints(s)
                      for s in dict.fromkeys(m.hits[0].serial for m in marks)}
        im = picture() if any(f is not None for f in registered.values()) else None

        def aligned(m: MarkAnswer) -> geometry.Alignment:
            serial = m.hits[0].serial
            if registered[serial] is None:
                return geometry.Alignment(0, 0.0)
            x, y, w, h = m.box
            pad = round(CUT_MARGIN * max(w, h))  # as the mark was cut for its search
            crop = im.crop((max(0, x - pad), max(0, y - pad), min(im.width, x + w + pad),
                            min(im.height, y + h + pad)))
            return geometry.align(geometry.features(crop), registered[serial])
        # SIFT on a 256 px mark: 10 ms one after another, 5.5 side by side on 2 cores.
        return list(self._lone_map()(aligned, marks))

    def _keypoints_of(self, serial: str) -> geometry.Features | None:
        """A registered mark's keypoints, from its thumbnail; None where it has none."""
        thumb = self.index.catalog.thumbnails([serial]).get(serial)
        return None if thumb is None else geometry.features(Image.open(io.BytesIO(thumb[1])))

    @staticmethod
    def _with_marks(answer: Answer, marks: list[MarkAnswer]) -> Answer:
        """The answer with its marks changed: those that exist first, most confident
        first; the answer's own fields are the first one's."""
        if marks == list(answer.marks):
            return answer
        marks = sorted(marks, key=lambda m: (m.exists, m.confidence, m.words_score),
                       reverse=True)
        top = marks[0]
        return dataclasses.replace(
            answer, exists=top.exists, matched_serial=top.matched_serial,
            top_score=top.top_score, confidence=top.confidence, hits=top.hits,
            marks=tuple(marks), words=top.words, words_score=top.words_score,
            matched_by=top.matched_by)

    def thumbnails(self, serials: list[str]) -> list[tuple[str, str, bytes]]:
        found = self.index.catalog.thumbnails(serials)
        return [(s, *found[s]) for s in dict.fromkeys(serials) if s in found]

    # -- words: read, given, matched (indexer.words, indexer.index.wordindex) ----------
    def check_text(self, text: str) -> str:
        try:
            text = words.check_text(text)
        except words.WordsError as e:
            raise InvalidRequest(str(e)) from None
        if text and self.words_threshold is None:
            raise InvalidRequest("this register keeps no words (built without a manifest "
                                 "`text` column and without reading them): search it by "
                                 "picture alone")
        return text

    def search_text(self, text: str, k: int, filters: tuple[Filter, ...] = ()) -> Answer:
        """A search by words alone: the registered marks whose words match `text` (checked
        with check_text), best first; exists where the best reaches the words' threshold."""
        allowed = self.allowed(filters)
        found = [h for h in self._words_found(words.words_of(text), k, True, allowed)
                 if h.score > 0]
        hits = self._word_hits(found[:k])
        best = hits[0].text_score if hits else 0.0
        exists = best >= self.words_threshold
        by = BY_WORDS if exists else ""
        mark = MarkAnswer((0, 0, 0, 0), exists, hits[0].serial if exists else "", 0.0, 0.0,
                          hits, words=text, words_score=best, matched_by=by)
        return Answer(exists, mark.matched_serial, 0.0, 0.0, self.threshold, hits,
                      len(allowed) if allowed is not None else None, (mark,), text, best, by,
                      self.words_threshold)

    def add_words(self, answer: Answer, query: Query, k: int,
                  picture: Picture | None = None) -> Answer:
        """The answer with each mark's words matched against the register's: words given
        with the query stand for the first mark's; otherwise a mark's words are read in its
        box where they can change its answer (it does not exist by its picture) or the
        query asks. A registered mark whose words reach the words' threshold exists by
        its words; such marks rank first, after the picture's top match where that
        exists. A photograph is read whole first, for marks the detector missed
        (_marks_by_their_words), and its marks are read closer only where that read
        found words in them (_may_hold_words). A clean mark that exists by neither is
        searched again without the words read beside it (_figure_alone). A register
        without words: the answer unchanged."""
        if self.words_threshold is None:
            return answer
        picture = picture or Picture(query.image)
        marks = list(answer.marks)
        # Marks found by their words pass the query's filters too, as its hits do.
        allowed = self.allowed(query.filters)
        whole = self.read_lines(picture()) if answer.photograph and not query.text else None
        for i, m in enumerate(marks):
            text, lines = (query.text if i == 0 and query.text else ""), []
            if not text and (query.read_words or not m.exists and (
                    whole is None or self._may_hold_words(m.box, whole, picture().size))):
                lines = self.read_box(picture(), m.box)
                text = " ".join(t for _, t in lines)
            if text:
                typed = i == 0 and bool(query.text)
                marks[i] = self._with_words(m, text, k, typed,
                                            photographed=m.detected is not None and not typed,
                                            allowed=allowed)
            if lines and not marks[i].exists and not answer.photograph:
                marks[i] = self._figure_alone(marks[i], lines, picture, query,
                                              answer.threshold, k)
        if whole is not None:
            marks = self._marks_by_their_words(words.blocks(whole), marks, k, allowed)
        return dataclasses.replace(self._with_marks(answer, marks),
                                   words_threshold=self.words_threshold)

    def _words_found(self, query: tuple[str, ...], k: int, short: bool,
                     allowed: np.ndarray | None) -> list[wordindex.WordHit]:
        """The registered marks whose words are most like `query`, best first, those of
        them among `allowed` (the sorted ids a query's filters pass; None: all); at least
        k where there are k, as wordindex.search gives them."""
        if allowed is None:
            return wordindex.search(self.index.catalog, query, k, short=short)
        # Under filters, look further: the best matches may not pass them.
        found = wordindex.search(self.index.catalog, query, max(k, wordindex.CANDIDATES),
                                 short=short)
        if not found or not len(allowed):
            return []
        # A few hundred ids looked up in the sorted array, not the array made a set on
        # every request (100,000 ids passing a filter of a 1 M register).
        ids = np.array([h.id for h in found], dtype=np.int64)
        at = np.minimum(np.searchsorted(allowed, ids), len(allowed) - 1)
        return [h for h, ok in zip(found, allowed[at] == ids) if ok]

    def _word_hits(self, found: list[wordindex.WordHit]) -> list[Hit]:
        """Marks found by their words alone, as hits: score 0 (their picture was not
        compared), their words and how alike those are to the query's."""
        refs = self.index.catalog.refs([h.id for h in found]) if found else {}
        return [Hit(refs[h.id].serial, refs[h.id].name, 0.0, metadata=refs[h.id].metadata,
                    text=h.text, text_score=h.score) for h in found if h.id in refs]

    @staticmethod
    def _may_hold_words(box: Region, whole: list[words.Line], size: tuple[int, int]) -> bool:
        """Whether a mark found in a photograph is worth reading closer (in its box):
        the photograph's read (`whole`, its lines in a picture of `size`) found words in
        its box, or saw the box too small to find any (WHOLE_READ_LEAST)."""
        x, y, w, h = box
        if max(w, h) * words.reading_scale(size) < WHOLE_READ_LEAST:
            return True
        return any(x0 < x + w and x1 > x and y0 < y + h and y1 > y
                   for (x0, y0, x1, y1), _ in whole)

    def _marks_by_their_words(self, blocks: list[words.Line], marks: list[MarkAnswer], k: int,
                              allowed: np.ndarray | None = None) -> list[MarkAnswer]:
        """A photograph read whole (its `blocks`): each block of words that is a registered
        mark's words (_same_words) and not the words of a mark already answered is a mark,
        answered by its words; the mark the detector found around it where there is one
        (its box kept), else a mark of its own, boxed by its words. The detector misses
        marks (docs/scenes.md) that words still name. A mark that exists by words read
        closer in its box that are a part of the words such a block names, where the
        block was read, was a cut read of them (_read_in_part): it names no mark of its
        own."""
        marks = list(marks)
        for (x0, y0, x1, y1), text in blocks:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            around = next((i for i, m in enumerate(marks) if m.detected is not None
                           and m.box[0] <= cx <= m.box[0] + m.box[2]
                           and m.box[1] <= cy <= m.box[1] + m.box[3]), None)
            box = (round(x0), round(y0), round(x1 - x0), round(y1 - y0))
            # Marks that exist by words read closer that are a part of these words, where
            # these were read: perhaps cut reads of them.
            partial = {i for i, m in enumerate(marks) if m.detected is not None
                       and iou(m.box, box) > 0 and _read_in_part(m, text)}
            if not partial and around is not None and marks[around].exists:
                continue  # its words are that mark's
            # Answered on a mark of its own beside one that exists for other reasons.
            apart = around is None or marks[around].exists and around not in partial
            mark = MarkAnswer(box, False, "", 0.0, 0.0, []) if apart else marks[around]
            answered = self._with_words(_unanswered(mark), text, k, typed=False,
                                        photographed=True, allowed=allowed)
            if not answered.exists:
                continue
            named = next((h.text for h in answered.hits
                          if h.serial == answered.matched_serial), "")
            cut = {i for i in partial if _read_in_part(marks[i], named)}
            # A mark around it that exists by words of its own in the block stands.
            held = around is not None and marks[around].exists and around not in cut
            already = any(self._same_brand(answered.matched_serial, m.matched_serial)
                          for i, m in enumerate(marks)
                          if m.exists and i not in cut and (held or i != around))
            if held and not already:
                continue  # two marks' words read as one block: that mark's stand
            for i in cut:  # a cut read of a mark's words names no mark of its own
                marks[i] = _unanswered(marks[i])
            if not held and not already:
                if around is None:
                    marks.append(answered)
                else:
                    marks[around] = answered
        return marks

    def _same_brand(self, a: str, b: str) -> bool:
        """Whether registered marks `a` and `b` are renditions of one mark: the same
        serial, the same words, or (family margin) as alike as its renditions are
        (indexer.decision). A mark's words beside its picture are not a second mark."""
        if a == b:
            return True
        cat = self.index.catalog
        ids = cat.ids_for([a, b])
        if len(ids) < 2:
            return False
        texts = cat.texts([ids[a], ids[b]])
        said = words.words_of(texts.get(ids[a], ""))
        if said and said == words.words_of(texts.get(ids[b], "")):
            return True
        return vectors.renditions(self.index.index, ids[a], ids[b], self.rule.family_similarity)

    @contextmanager
    def serving(self, calls: int = 1):
        """Counts `calls` while a call (a Search, a stream) is served, for _read_threads."""
        with self._serving_lock:
            self._serving += calls
        try:
            yield
        finally:
            with self._serving_lock:
                self._serving -= calls

    def _lone_map(self):
        """How a call maps a step over its parts: on a pool of the read threads while it is
        the only call served (a photograph's ~10 cuts prepared side by side, most of it
        Pillow's C code, which lets go of the GIL; its unsure marks' keypoints, OpenCV's),
        one after another beside other calls (their lanes have the other cores)."""
        if self.read_threads == 1 or self._serving > 1:
            return map
        with self._serving_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="lone")
        return self._pool.map

    def _read_threads(self) -> int:
        """A lone call reads words with all the read threads, as the batcher encodes a
        lone request with all of its (a photograph read whole: 87-95 against 137-143 ms on
        2 cores); beside other calls, one each: two threads each under 16 callers
        oversubscribed the cores (their rate 0.7-0.85x)."""
        return self.read_threads if self._serving <= 1 else 1

    def read_lines(self, picture: Image.Image) -> list[words.Line]:
        """The lines read in a whole picture."""
        return self._read(picture)

    def read_box(self, picture: Image.Image, box: Region) -> list[words.Line]:
        """The lines read in `box` of the picture, in the box's pixels."""
        return self._read(_cut(picture, box))

    def _read(self, picture: Image.Image) -> list[words.Line]:
        try:
            return words.reader().read_lines(picture, self._read_threads())
        except words.ReaderUnavailable as e:
            log.warning("%s", e)
            return []

    def _figure_alone(self, mark: MarkAnswer, lines: list[words.Line], picture: Picture,
                      query: Query, threshold: float, k: int) -> MarkAnswer:
        """A clean mark that exists neither by its picture nor by its words (`lines`, read
        in its box) searched again without them, where they stand apart from the rest on
        a plain background (preprocess.painted_over): a device with a company name, a
        slogan or a product line set under or beside it is registered as the device
        alone as often as with those words, and an examiner compares the figurative
        element on its own. Where that exists by its picture (the same threshold), so
        does the mark (BY_FIGURE). Words inside the device, or cutting into it, leave it
        as it is."""
        figure = painted_over(_cut(picture(), mark.box), [box for box, _ in lines])
        if figure is None:
            return mark
        try:
            prepared = to_query(figure, self.encoder.preprocess)
        except BlankImageError:
            return mark
        found = self.decide(self.search([prepared], k, [query.filters])[0], threshold, k,
                            query.filters)
        if not found.exists:
            return mark
        return dataclasses.replace(mark, exists=True, matched_serial=found.matched_serial,
                                   top_score=found.top_score, confidence=found.confidence,
                                   hits=_scored(found.hits, words.words_of(mark.words)),
                                   matched_by=BY_FIGURE)

    def _with_words(self, mark: MarkAnswer, text: str, k: int, typed: bool,
                    photographed: bool, allowed: np.ndarray | None = None) -> MarkAnswer:
        """The mark's answer with its words matched. Words the caller typed are evidence of
        their own: the register's marks that bear them rank first (after the picture's
        top match where that exists) and make the mark exist. Words read in a clean
        picture only confirm it: one of the picture's first CONFIRM_DEPTH matches whose
        words match comes first and makes the mark exist. (On LogoBench, read words that
        matched a mark the picture did not rank were all unregistered brands that share
        a word with a registered one: "Express", "uber"; those that confirmed a match
        were nearly all right.) In a mark found in a photograph, where perspective and
        light leave the picture unsure, words read that are a registered mark's words
        (_same_words) decide as typed words do: the same words are a conflict whatever
        the picture. `photographed`: the mark is a photograph's (found by the detector,
        or by its words), its words read. `allowed`: the ids the query's filters pass
        (None: no filter); marks found by their words are among them."""
        query = words.words_of(text)
        scored = _scored(mark.hits, query, typed)
        word_hits: list[Hit] = []  # the register's marks that bear these words
        if typed or photographed:
            found = self._words_found(query, k, typed, allowed)
            if photographed:
                found = [h for h in found if _same_words(query, words.words_of(h.text))]
            word_hits = self._word_hits(found[:k])
        seen = {h.serial for h in scored}
        by_words = [h for h in word_hits if h.serial not in seen]
        named = {h.serial for h in word_hits}
        if typed:
            candidates = scored + by_words
        else:  # the picture's first matches, and (photographed) those its exact words name
            candidates = scored[:CONFIRM_DEPTH] + [
                h for h in scored[CONFIRM_DEPTH:] if h.serial in named] + by_words
        # Photographed, a registered mark's words (_same_words) decide: one slip in five
        # of a word read is OCR's (a slip in a word of 6-10 letters scores under the words'
        # threshold, which is set for typed words); and words that read like one of the
        # picture's first matches' (_reads_alike) confirm it.
        decide: set[str] = set()
        if photographed and not typed:
            decide = named | {h.serial for h in scored[:CONFIRM_DEPTH]
                              if _reads_alike(query, words.words_of(h.text))}
        matched = sorted([h for h in candidates
                          if h.text_score >= self.words_threshold or h.serial in decide],
                         key=lambda h: (h.text_score, h.score), reverse=True)
        best = max((h.text_score for h in scored + by_words), default=0.0)
        mark = dataclasses.replace(mark, words=text, words_score=best)
        if mark.exists:  # the picture's top match stays first
            rest = [h for h in matched if h.serial != scored[0].serial]
            hits = scored[:1] + rest + [h for h in scored[1:] if h not in rest]
            return dataclasses.replace(mark, hits=hits[:k])
        hits = matched + [h for h in scored if h not in matched]
        if not matched:
            return dataclasses.replace(mark, hits=hits[:k])
        return dataclasses.replace(mark, hits=hits[:k], exists=True,
                                   matched_serial=matched[0].serial, matched_by=BY_WORDS)
