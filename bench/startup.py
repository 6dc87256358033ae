"""Server start-up with a large index: a real index directory holding synthetic vectors.

The directory is written through the same store (catalog, FAISS file, manifest with
checksums) as `indexer build` writes, with the shipped encoder's identity, so the
server opens it exactly as it would open a registry of that size; only the vectors
are synthetic (bench.synthetic) and the catalog rows have no thumbnails.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from bench.procs import rss_mb, start_server, stop_server
from indexer.index import store, vectors
from indexer.index.catalog import Catalog, Mark
from indexer.network.encoder import Encoder
from indexer.network.projection import Projection

CATALOG_CHUNK = 100_000  # catalog rows written per transaction


def write_synthetic_index(root: Path, encoder: Encoder, db: np.ndarray,
                          preset: str = "flat", **manifest) -> dict:
    return write_index_dir(root, encoder, len(db), db.shape[1],
                           lambda ids: vectors.build(preset, ids, db), **manifest)


def write_index_dir(root: Path, encoder: Encoder, count: int, dim: int,
                    build: Callable[[np.ndarray], tuple[faiss.Index, vectors.IndexSpec]],
                    **manifest) -> dict:
    """A registry of `count` synthetic marks whose FAISS index `build(ids)` makes;
    `manifest`: fields of the manifest to set (store.Manifest), e.g. the decision."""
    t0 = time.perf_counter()
    with store.write_version(root, new=True) as writer:
        catalog = Catalog(writer.path / store.CATALOG_FILE)
        ids = np.empty(count, np.int64)
        for s in range(0, count, CATALOG_CHUNK):
            rows = range(s, min(s + CATALOG_CHUNK, count))
            ids[s:s + len(rows)] = catalog.upsert(
                [Mark(f"SYN{i:08d}", f"synthetic {i}") for i in rows])[0]
        catalog.close()
        index, spec = build(ids)
        vectors.save(index, writer.path / store.INDEX_FILE)
        projection = _projection(encoder.descriptor_dim, dim)
        if projection is not None:
            projection.save(writer.path / store.PROJECTION_FILE)
        writer.commit(store.Manifest(
            encoder=encoder.identity.to_dict(), dim=dim, index_type=spec.factory,
            count=count, threshold_method="fixed (synthetic benchmark)",
            index_preset=spec.preset, search_params=spec.search_params,
            sampled_recall=spec.sampled_recall,
            projection=store.PROJECTION_FILE if projection is not None else None,
            **({"threshold": 0.7} | manifest)))
    return {"write_s": time.perf_counter() - t0,
            "index_mb": vectors.memory_bytes(store.current_version_dir(root) /
                                             store.INDEX_FILE) / 1e6}


def _projection(in_dim: int, out_dim: int) -> Projection | None:
    """The synthetic vectors are already in index space; a server still needs a map from
    its encoder's descriptors to it (a random orthonormal one will do for timing)."""
    if in_dim == out_dim:
        return None
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((in_dim, out_dim)))
    return Projection(np.zeros(in_dim, np.float32), q.astype(np.float32), whiten=0.0)


def time_startup(index: Path, mmap: bool) -> dict:
    proc, _, seconds = start_server(index, *(["--mmap"] if mmap else []))
    try:
        return {"mmap": mmap, "startup_s": seconds, "rss_mb": rss_mb(proc.pid)}
    finally:
        stop_server(proc)
