"""FAISS index creation, training, id-stable updates and (de)serialisation.

Every index is an `IndexIDMap2` around a FAISS factory string, with the inner
product metric over L2-normalised vectors (= cosine). IDMap2 keeps our catalog ids
as the FAISS ids and supports `remove_ids` and `reconstruct`, so add and remove
never renumber anything.
"""
from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "Flat"


def gpu_count() -> int:
    # faiss-cpu has no get_num_gpus in some builds.
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def new_index(dim: int, factory: str = DEFAULT_FACTORY) -> faiss.IndexIDMap2:
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"bad --index-factory {factory!r}: {e}") from e
    return faiss.IndexIDMap2(inner)


def train(index: faiss.IndexIDMap2, vectors: np.ndarray) -> None:
    """Train the inner index (IVF centroids, PQ codebooks); a no-op for Flat.

    Training is the expensive part of building an approximate index, so it runs on
    the GPU when there is one; the trained index is copied back to the CPU because
    only CPU indexes can be written to disk.
    """
    inner = faiss.downcast_index(index.index)
    if inner.is_trained:
        return
    if len(vectors) == 0:
        raise ValueError("cannot train an approximate index on 0 vectors")
    if gpu_count() > 0:
        log.info("training %s on the GPU with %d vectors", type(inner).__name__, len(vectors))
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, 0, inner)
        gpu.train(vectors)
        index.index = faiss.index_gpu_to_cpu(gpu)
        index.own_fields = True
    else:
        inner.train(vectors)


def add(index: faiss.IndexIDMap2, ids: list[int] | np.ndarray, vectors: np.ndarray) -> None:
    """Add vectors under `ids`; ids already present are replaced."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return
    remove(index, ids)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)


def remove(index: faiss.IndexIDMap2, ids: list[int] | np.ndarray) -> int:
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(ids)))


def stored_ids(index: faiss.IndexIDMap2) -> np.ndarray:
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def save(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load(path: Path, mmap: bool = False) -> faiss.Index:
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(str(path), flags)


def describe(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    return type(inner).__name__
