"""FAISS index creation, training, id-stable updates, search parameters and (de)serialisation.

Vectors are L2-normalised and compared by inner product (= cosine). Our catalog ids
are the FAISS ids, so add and remove never renumber anything:
- IVF indexes hold ids themselves (`add_with_ids`, `remove_ids`); a hash-table direct
  map lets them `reconstruct` by id. They are NOT wrapped in IndexIDMap: its
  `remove_ids` compacts the id map as if the inner index renumbered, which IVF does
  not, and every later answer would name the wrong mark.
- Everything else (Flat, HNSW, an IVF-PQ whose candidates a flat copy re-ranks) sits in
  an `IndexIDMap2`. HNSW and re-ranked indexes cannot remove vectors.

Presets (`--index-factory`) pick a structure by registry size; their search parameter
(nprobe / efSearch) is tuned at build time on a sample and stored in the manifest, and
the server sets it once at start.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from indexer.index.faiss_gpu import usable_gpus

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "flat"
TRAIN_SAMPLE = 200_000  # vectors used to train IVF centroids / SQ ranges / PQ codebooks
KMEANS_ITERATIONS = 10  # FAISS's default 25 costs 2.5x the time for no measurable recall
TARGET_RECALL = 0.97  # tuned parameters aim here so that recall@10 >= 0.95 holds with margin
TUNE_QUERIES = 200  # exact search of these against 1 M vectors takes ~15 s on 2 cores
EXACT_CHUNK = 100_000  # stored vectors decoded at a time for the exact search (0.2 GB)
# Candidates kept while an HNSW graph is built. FAISS's default 40 leaves 512-d
# clustered vectors poorly linked: recall@10 stopped at 0.98 (200k) and 0.935 (1M) however
# high efSearch went. 80 reaches 1.000 at efSearch 64 on 200k for 1.8x the build time.
HNSW_EF_CONSTRUCTION = 80


@dataclass(frozen=True)
class Preset:
    """A named index structure; `factory(n)` gives the FAISS factory string for n vectors."""

    name: str
    help: str

    def factory(self, n: int) -> str:
        nlist = ivf_lists(n)
        return {"flat": "Flat", "ivf-sq8": f"IVF{nlist},SQ8", "hnsw": "HNSW32,Flat",
                "ivf-pq": f"IVF{nlist},PQ64,RFlat"}[self.name]


PRESETS = {p.name: p for p in (
    Preset("flat", "exact search; best up to ~1-2 M marks (2 KB per mark)"),
    Preset("ivf-sq8", "inverted lists + 8-bit scalar quantiser: 4x less memory than flat and "
           "far faster at 1 M+ (nprobe tuned at build)"),
    Preset("hnsw", "graph over full vectors: fast single queries, more memory than flat, slow "
           "to build, cannot remove marks (efSearch tuned at build)"),
    Preset("ivf-pq", "inverted lists + 64-byte product codes, the best candidates re-ranked "
           "exactly from the full vectors; with the server's --mmap only the codes (32x less "
           "than flat) stay in RAM: for the largest registries. Cannot remove marks "
           "(nprobe tuned)"),
)}
# Candidates the product codes pick, per result wanted, for exact re-ranking ("RFlat"):
# 64-byte codes alone found 0.66 of the true top 10 at 1 M; 4x as many re-ranked, 0.99.
# Tuning tries the larger factors only if every nprobe falls short with the smaller.
REFINE_K_FACTORS = (4, 8, 16)
# The knob each structure is tuned by, and the values tried (cheapest first).
KNOBS = {"nprobe": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
         "efSearch": (16, 32, 64, 128, 256, 512, 1024)}


def ivf_lists(n: int) -> int:
    """~4 sqrt(n) inverted lists (FAISS's guideline), a power of two, at least 39 training
    points each. The centroids are trained on at most TRAIN_SAMPLE vectors, so that caps
    the count too (4096 from ~1 M on): 16384 lists at 10 M would get 12 points each and
    cost 4x the k-means and the assignment of every vector added."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1)))))
    most = 2 ** int(math.log2(max(1, min(n, TRAIN_SAMPLE) // 39)))  # FAISS warns below 39
    return int(min(nlist, 65536, most))


@dataclass
class IndexSpec:
    factory: str
    preset: str = ""
    search_params: dict = field(default_factory=dict)  # tuned by `build`
    sampled_recall: float = 1.0


def resolve(spec: str, n: int) -> IndexSpec:
    """A preset name or a raw FAISS factory string -> what to build for n vectors."""
    preset = PRESETS.get(spec.lower())
    return IndexSpec(preset.factory(n), preset.name) if preset else IndexSpec(spec)


def _ivf(index: faiss.Index):
    index = faiss.downcast_index(index)
    return index if isinstance(index, faiss.IndexIVF) else None


def _searched_ivf(inner: faiss.Index):
    """The IVF that nprobe applies to: the index itself or the one a refine wraps."""
    inner = faiss.downcast_index(inner)
    return _ivf(inner.base_index) if isinstance(inner, faiss.IndexRefine) else _ivf(inner)


def new_index(dim: int, factory: str = "Flat") -> faiss.Index:
    """An empty index for a FAISS factory string (see `resolve` for presets)."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"bad --index-factory {factory!r}: {e}") from e
    ivf = _ivf(inner)
    if _searched_ivf(inner) is None and "IVF" in factory.upper():
        raise ValueError(f"--index-factory {factory!r}: put the IVF at the top (no transform "
                         "before it), e.g. IVF1024,SQ8")
    if ivf is not None:
        inner.this.disown()  # the downcast wrapper owns the C++ index from here on
        ivf.this.own(True)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return ivf
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if isinstance(inner, faiss.IndexRefine):
        inner.k_factor = REFINE_K_FACTORS[0]
    return faiss.IndexIDMap2(inner)


def _inner(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def train(index: faiss.Index, vectors: np.ndarray, sample: int = TRAIN_SAMPLE,
          seed: int = 0) -> None:
    """Train the index (IVF centroids, SQ ranges, PQ codebooks) on a sample; no-op for Flat.

    Training is the expensive part of building an approximate index, so it runs on
    the GPU when there is one; the trained index is copied back to the CPU because
    only CPU indexes can be written to disk.
    """
    inner = _inner(index)
    if inner.is_trained:
        return
    if len(vectors) == 0:
        raise ValueError("cannot train an approximate index on 0 vectors")
    rows = training_rows(len(vectors), sample, seed)
    if rows is not None:
        vectors = vectors[rows]
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ivf = _searched_ivf(inner)
    if ivf is not None:
        ivf.cp.niter = KMEANS_ITERATIONS
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.pq.cp.niter = KMEANS_ITERATIONS
        # Polysemous codes only serve Hamming-distance filtering, which we never use,
        # and their training took 15x as long as the rest (50 s for 20k vectors).
        ivf.do_polysemous_training = False
    if ivf is not None and usable_gpus() > 0:
        # Only the k-means of the coarse quantiser moves to the GPU; the codes stay put.
        log.info("training %s on the GPU with %d vectors", type(inner).__name__, len(vectors))
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    inner.train(vectors)
    if ivf is not None:
        ivf.clustering_index = None


def training_rows(n: int, sample: int = TRAIN_SAMPLE, seed: int = 0) -> np.ndarray | None:
    """The rows of n vectors an index is trained on, sorted; None: all of them."""
    if n <= sample:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def build_streamed(spec: str, n: int, dim: int,
                   chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
                   ) -> tuple[faiss.Index, IndexSpec]:
    """build() over n vectors that come as (ids, vectors) chunks, read from disk: the same
    index, trained on the same rows, with a chunk and the training sample in memory at a
    time. `chunks()` is called twice where the index needs training."""
    resolved = resolve(spec, n)
    index = new_index(dim, resolved.factory)
    if not _inner(index).is_trained:
        rows = training_rows(n)
        sample = np.empty((n if rows is None else len(rows), dim), np.float32)
        start = filled = 0
        for _, x in chunks():
            picked = x if rows is None else \
                x[rows[(rows >= start) & (rows < start + len(x))] - start]
            sample[filled:filled + len(picked)] = picked
            start, filled = start + len(x), filled + len(picked)
        train(index, sample[:filled])
        del sample
        log.info("%s trained on %d of %d vectors", resolved.factory, filled, n)
    ivf = _ivf(_inner(index))
    if ivf is not None:
        _reserve_lists(ivf, chunks)
    for ids, x in chunks():
        # Fresh ids: add() would look each chunk up among all the ids stored so far.
        index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32),
                           np.asarray(ids, dtype=np.int64))
    resolved.search_params, resolved.sampled_recall = tune(index)
    return index, resolved


def _reserve_lists(ivf: faiss.IndexIVF,
                   chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> None:
    """Give each inverted list the room it will need before it is filled. Grown an add at
    a time, a list's arrays double: filling 300 k marks' ivf-sq8 lists grew the build by
    321 MB against 210 MB sized once (docs/scale-out.md). One more pass assigns
    every vector to its list (as add does), each list is sized once to its count and
    emptied again: std::vector keeps its capacity when it shrinks, so the adds that
    follow fill it in place. The index is the same as without it."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.ArrayInvertedLists):
        return  # on-disk or other lists manage their own memory
    counts = np.zeros(ivf.nlist, np.int64)
    for _, x in chunks():
        _, assigned = ivf.quantizer.search(np.ascontiguousarray(x, dtype=np.float32), 1)
        counts += np.bincount(assigned[:, 0], minlength=ivf.nlist)
    for list_no in np.flatnonzero(counts):
        lists.resize(int(list_no), int(counts[list_no]))
        lists.resize(int(list_no), 0)


def build(spec: str, ids: np.ndarray | list[int], vectors: np.ndarray
          ) -> tuple[faiss.Index, IndexSpec]:
    """A preset or factory string -> a trained, filled index, its search parameter tuned
    (the cheapest nprobe/efSearch with sampled recall@10 >= TARGET_RECALL) and left set."""
    resolved = resolve(spec, len(vectors))
    index = new_index(vectors.shape[1], resolved.factory)
    train(index, vectors)
    add(index, ids, vectors)
    resolved.search_params, resolved.sampled_recall = tune(index)
    return index, resolved


def can_remove(index: faiss.Index) -> bool:
    return not isinstance(_inner(index), (faiss.IndexHNSW, faiss.IndexRefine))


def add(index: faiss.Index, ids: list[int] | np.ndarray, vectors: np.ndarray) -> None:
    """Add vectors under `ids`; ids already present are replaced."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return
    if index.ntotal and np.isin(ids, stored_ids(index)).any():
        remove(index, ids)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)


def remove(index: faiss.Index, ids: list[int] | np.ndarray) -> int:
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return 0
    if not can_remove(index):
        raise ValueError(f"this {describe(index)} index (preset hnsw or ivf-pq) cannot remove or "
                         "replace marks: rebuild it without them, or build with "
                         "--index-factory flat or ivf-sq8")
    # An IVF's hash-table direct map only accepts the array selector.
    sel = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)) if _ivf(index) is not None \
        else faiss.IDSelectorBatch(ids)
    return int(index.remove_ids(sel))


def stored_ids(index: faiss.Index) -> np.ndarray:
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = _ivf(index).invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(invlists.nlist) if invlists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def set_search_params(index: faiss.Index, params: dict) -> None:
    """nprobe / efSearch are fields of the index: set once, not per request."""
    # A GPU copy of an IVF index is no faiss.IndexIVF: only the GPU twin of the
    # ParameterSpace knows where its nprobe lives (seen on an H200, faiss-cuda 1.14.3).
    on_gpu = hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)
    ps = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError as e:
            raise ValueError(f"{name}={value} does not apply to a {describe(index)} index "
                             f"(nprobe is for IVF, efSearch for HNSW)") from e


def sampled_recall(index: faiss.Index, k: int = 10, queries: int = TUNE_QUERIES,
                   seed: int = 0, params: dict | None = None) -> float:
    """recall@k of the index against exact search over its own stored vectors.

    Queries are stored vectors (their own id left out of both lists), so this measures
    what the search structure loses (lists not probed, graph edges not followed), not
    the quantiser's rounding; bench/ measures both against the original floats.
    """
    if params:
        set_search_params(index, params)
    return _recall_fn(index, k, queries, seed)(None)


def knob(index: faiss.Index) -> str | None:
    """The search-time parameter of this structure: nprobe (IVF), efSearch (HNSW) or None."""
    inner = _inner(index)
    if _searched_ivf(inner) is not None:
        return "nprobe"
    return "efSearch" if isinstance(inner, faiss.IndexHNSW) else None


def tune(index: faiss.Index, target: float = TARGET_RECALL, k: int = 10) -> tuple[dict, float]:
    """The cheapest value of the index's knob that reaches `target` sampled recall@k, and
    that recall; the largest value tried if none does (the recall says so). Exact
    indexes: ({}, 1.0)."""
    name = knob(index)
    if name is None or index.ntotal <= k + 1:
        return {}, 1.0
    measure = _recall_fn(index, k, TUNE_QUERIES, 0)
    best = ({}, 0.0)
    inner = _inner(index)
    lists = _searched_ivf(inner).nlist if name == "nprobe" else None
    # A re-ranked index keeps its k_factor beside the knob (the server sets both); more
    # candidates are re-ranked only when probing every list is not enough.
    refined = isinstance(inner, faiss.IndexRefine)
    for fixed in ([{"k_factor_rf": f} for f in REFINE_K_FACTORS] if refined else [{}]):
        for value in KNOBS[name]:
            if lists is not None and value > lists:
                break
            params = {name: value} | fixed
            recall = measure(params)
            best = (params, recall)
            if recall >= target:
                return best
    return best


def _recall_fn(index: faiss.Index, k: int, queries: int, seed: int):
    ids = stored_ids(index)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(ids), min(queries, len(ids)), replace=False))
    q = _decode(index, ids, sample)
    heap = faiss.ResultHeap(len(q), k + 1, keep_max=True)
    # Exact search over the decoded vectors a chunk at a time: all of them at once would
    # take 2 GB at 1 M and more than the index itself at 10 M.
    for s in range(0, len(ids), EXACT_CHUNK):
        rows = np.arange(s, min(s + EXACT_CHUNK, len(ids)))
        scores, found = faiss.knn(q, _decode(index, ids, rows), k + 1,
                                  metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(found >= 0, rows[found], -1))
    heap.finalize()
    truth_ids = [set(ids[row].tolist()) - {ids[s]} for row, s in zip(heap.I, sample)]

    def measure(params: dict | None) -> float:
        if params:
            set_search_params(index, params)
        _, found = index.search(q, k + 1)
        hits = [len(t & (set(f.tolist()) - {ids[s]})) / max(1, len(t))
                for t, f, s in zip(truth_ids, found, sample)]
        return float(np.mean(hits))
    return measure


def all_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """Every id and its stored vector (decoded, so approximate for SQ/PQ codes)."""
    ids = stored_ids(index)
    return ids, _decode(index, ids, np.arange(len(ids)))


def renditions(index: faiss.Index, a: int, b: int, family_similarity: float | None) -> bool:
    """Whether stored marks `a` and `b` are renditions of one mark as the family margin
    (indexer.decision) tells them apart: the same mark, or as alike as its renditions;
    never for a decision without families (`family_similarity` None) or an id of -1."""
    if a == b:
        return True
    if a < 0 or b < 0 or family_similarity is None:
        return False
    sims = similarity_to_top(index, np.array([[a, b]], dtype=np.int64))
    return bool(sims[0, 1] >= family_similarity)


def similarity_to_top(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """(n, m) ids of search results -> each hit's similarity to its row's top hit, from
    the stored vectors (decoded, so approximate for SQ/PQ codes); -1 where a row has no
    hit there. What the family margin (indexer.decision) tells renditions apart with.

    The ids must come from a search of this index: FAISS's reconstruct_batch ends the
    process on an id it does not hold (see lowres._read)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.full(ids.shape, -1.0, dtype=np.float32)
    found = ids >= 0
    if not found.any():
        return out
    unique, inverse = np.unique(ids[found], return_inverse=True)
    vecs = index.reconstruct_batch(np.ascontiguousarray(unique))
    rows = np.full(ids.shape, -1, dtype=np.int64)
    rows[found] = inverse
    for r in np.flatnonzero(found[:, 0]):
        hit = rows[r] >= 0
        out[r, hit] = vecs[rows[r, hit]] @ vecs[rows[r, 0]]
    return out


def _decode(index: faiss.Index, ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The stored vectors of ids[rows] (ids as `stored_ids` orders them), by id: IVF's
    direct map and IndexIDMap2's reverse map both find them."""
    return index.reconstruct_batch(np.ascontiguousarray(ids[rows]))


def memory_bytes(path: Path) -> int:
    """RAM an index takes once loaded: its serialised size (codes, lists, graph)."""
    return Path(path).stat().st_size


def mapped_memory_bytes(factory: str, size: int, count: int, dim: int) -> int | None:
    """RAM a re-ranked index (ivf-pq) of `size` serialised bytes must hold when
    memory-mapped: all but its full vectors, which stay file-backed pages that the kernel
    reads in as searches re-rank them and may drop again under memory pressure (readahead
    pulls in more than the few vectors a search needs: 100 searches cached the whole 410 MB
    file of 200k vectors). None for other structures: their searches sweep whole lists or
    the whole matrix."""
    return size - count * dim * 4 if factory.upper().endswith(",RFLAT") else None


def save(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load(path: Path, mmap: bool = False) -> faiss.Index:
    """With mmap, flat codes and inverted lists stay in the page cache, shared and lazy."""
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC
                                | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        # FAISS maps inverted lists only at the top level; under a refine (ivf-pq) the
        # lists are read and only the full vectors, the bulk of the file, are mapped.
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


def describe(index: faiss.Index) -> str:
    return type(_inner(index)).__name__


class Searcher:
    """Searches an index through its inner structure, on the GPU where FAISS has one.

    IndexIDMap2 translates labels to ids after searching its inner index; doing the
    same here (a numpy gather) lets the inner index alone move to the GPU, and the CPU
    path runs the very same code. Not thread-safe: callers serialise searches.
    """

    def __init__(self, index: faiss.Index, params: dict | None = None, use_gpu: bool = False):
        self.index = index
        self.ntotal = index.ntotal
        self._ids = stored_ids(index) if isinstance(index, faiss.IndexIDMap2) else None
        inner = _inner(index)
        set_search_params(inner, params or {})
        self._cpu = inner  # filtered searches run here: GPU indexes take no ID selector
        self._sorted_ids: tuple[np.ndarray, np.ndarray] | None = None
        # FAISS has no GPU HNSW, and no GPU copy of a re-ranked index.
        self.on_gpu = use_gpu and not isinstance(
            inner, (faiss.IndexHNSW, faiss.IndexRefine)) and usable_gpus() > 0
        if self.on_gpu:
            self._res = faiss.StandardGpuResources()
            opts = faiss.GpuClonerOptions()
            opts.useFloat16 = True  # halves GPU memory of flat codes; scores differ ~1e-3
            inner = faiss.index_cpu_to_gpu(self._res, 0, inner, opts)
            set_search_params(inner, params or {})
        self._inner = inner

    def search(self, x: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The k best of the stored vectors for each row of `x`; with `allowed` (ids), of
        those only (indexer.index.filters), as many as pass up to k."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if allowed is None:
            scores, labels = self._inner.search(x, k)
        else:
            scores, labels = self._search_among(x, k, self._labels_of(allowed))
        if self._ids is None:
            return scores, labels
        return scores, np.where(labels >= 0, self._ids[np.maximum(labels, 0)], -1)

    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Ids -> the inner index's labels (positions), those it holds."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._ids is None:
            return ids[(ids >= 0) & (ids < self.ntotal)]
        if self._sorted_ids is None:
            order = np.argsort(self._ids, kind="stable")
            self._sorted_ids = order, self._ids[order]
        order, sorted_ids = self._sorted_ids
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return order[pos[sorted_ids[pos] == ids]] if len(sorted_ids) else ids[:0]

    def _search_among(self, x: np.ndarray, k: int, labels: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Search the CPU index through an ID selector (a bitmap over labels).

        An approximate structure looks at a share of the register per query; only `frac`
        of what it looks at passes, so its knob (nprobe, efSearch) is first raised by
        1 / frac, which keeps the candidates that pass as many as without the filter.
        That holds the recall when many pass (1 M synthetic vectors, ivf-sq8, 10%
        passing: recall@10 0.996 against exact filtered search, 0.985 unfiltered) but not
        when few do: their nearest are then spread over unrelated lists (1%: 0.834). Up
        to EXACT_PASSING marks, an IVF index scans every list, which costs a bitmap test
        per stored vector and a distance per passing one. Rows still short of
        min(k, passing) answers double the knob again, up to exhaustive."""
        n = len(labels)
        if n == 0:
            return (np.full((len(x), k), -np.inf, np.float32), np.full((len(x), k), -1, np.int64))
        mask = np.zeros(self.ntotal, dtype=bool)
        mask[labels] = True
        bitmap = np.packbits(mask, bitorder="little")  # bit i of byte i >> 3, as FAISS reads it
        sel = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bitmap))
        want = min(k, n)
        widen = max(1.0, self.ntotal / n)
        if n <= EXACT_PASSING and faiss.try_extract_index_ivf(self._cpu) is not None:
            widen = float(self.ntotal)  # every list
        while True:
            params, exhaustive = _selector_params(self._cpu, sel, widen)
            scores, labels_out = self._cpu.search(x, k, params=params)
            if exhaustive or (labels_out[:, :want] >= 0).all():
                return scores, labels_out
            widen *= 2


REFINE_UNDER_FILTER = 4
# Up to this many marks passing a filter, an IVF index scans all its lists (Searcher).
EXACT_PASSING = 50_000


def _selector_params(index: faiss.Index, sel, widen: float):
    """SearchParameters carrying `sel`, with the index's own knob times `widen`, and
    whether that search is exhaustive (nothing left to widen)."""
    if isinstance(index, faiss.IndexRefine):
        base, exhaustive = _selector_params(faiss.downcast_index(index.base_index), sel, widen)
        params = faiss.IndexRefineSearchParameters()
        # 4x the candidates re-scored exactly: the passing ones spread over more unrelated
        # marks, where PQ's rough order costs more (IVF32,PQ8 at 20% passing: recall@10
        # 0.78 with the index's own factor of 1, 1.0 with 4).
        params.k_factor, params.base_index_params = REFINE_UNDER_FILTER * index.k_factor, base
        params.referenced_objects = [base]  # SWIG keeps a bare pointer: base must outlive it
        return params, exhaustive
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.sel = sel
        params.nprobe = int(min(ivf.nlist, np.ceil(ivf.nprobe * widen)))
        return params, params.nprobe >= ivf.nlist
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.sel = sel
        params.efSearch = int(min(index.ntotal, np.ceil(index.hnsw.efSearch * widen)))
        return params, params.efSearch >= index.ntotal
    params = faiss.SearchParameters()  # flat: exact, every passing vector scored
    params.sel = sel
    return params, True
