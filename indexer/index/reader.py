"""Opening one version of an index: manifest, FAISS index, catalog and projection together."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss

from indexer.index import lowres, store, vectors
from indexer.index.catalog import Catalog
from indexer.index.verify import checksum_problems
from indexer.network.encoder import Encoder, EncoderIdentity
from indexer.network.projection import Projection


@dataclass
class OpenIndex:
    path: Path
    manifest: store.Manifest
    index: faiss.Index
    catalog: Catalog
    projection: Projection | None
    reranker: lowres.Reranker | None = None  # small-copy vectors, where the build made them

    def close(self) -> None:
        self.catalog.close()


def open_index(root: str | Path, *, readonly: bool = True, mmap: bool = False) -> OpenIndex:
    """Open the live version of `root`; IndexFormatError with a fix if it is not usable."""
    vdir = store.current_version_dir(root)
    manifest = store.Manifest.read(vdir / store.MANIFEST)
    needed = [store.INDEX_FILE, store.CATALOG_FILE] + [manifest.projection] * bool(
        manifest.projection) + lowres.files(manifest.lowres)
    missing = [n for n in needed if not (vdir / n).is_file()]
    if missing:
        raise store.IndexFormatError(f"{vdir} lacks {', '.join(missing)}: rebuild the index")
    # Hashing costs ~1 s per GB; it keeps a torn or bit-rotted file from being served.
    damaged = checksum_problems(vdir, manifest)
    if damaged:
        raise store.IndexFormatError(f"{vdir}: {'; '.join(damaged)}; restore the directory or "
                                     "rebuild the index (`python -m indexer verify` explains)")
    index = _load_vectors(vdir / store.INDEX_FILE, manifest, mmap)
    vectors.set_search_params(index, manifest.search_params)
    projection = Projection.load(vdir / manifest.projection) if manifest.projection else None
    small = lowres.LowResConfig.from_dict(manifest.lowres)
    reranker = lowres.Reranker([_load_vectors(vdir / name, manifest, mmap)
                                for name in small.files()], small) if small else None
    return OpenIndex(vdir, manifest, index, Catalog(vdir / store.CATALOG_FILE, readonly),
                     projection, reranker)


def _load_vectors(path: Path, manifest: store.Manifest, mmap: bool) -> faiss.Index:
    try:
        index = vectors.load(path, mmap=mmap)
    except RuntimeError as e:
        raise store.IndexFormatError(f"{path} is not a readable FAISS index: {e}") from e
    if index.ntotal != manifest.count or index.d != manifest.dim:
        raise store.IndexFormatError(
            f"{path} holds {index.ntotal} x {index.d}-d vectors, manifest says "
            f"{manifest.count} x {manifest.dim}-d: the index is damaged, rebuild it")
    return index


def check_encoder(manifest: store.Manifest, encoder: Encoder) -> None:
    """Refuse to pair an index with an encoder other than the one that built it."""
    built_with = EncoderIdentity.from_dict(manifest.encoder)
    problem = encoder.identity.mismatch(built_with)
    if problem:
        raise store.IndexFormatError(
            f"the index was built with encoder {built_with.short()}, not "
            f"{encoder.identity.short()} ({problem}); start with the encoder it was built with "
            "(--encoder) or rebuild the index")


def encoder_for(index: OpenIndex, encoder: Encoder) -> Encoder:
    """`encoder` with the index's projection, once it is the encoder that built the index
    and gives vectors of the index's dimension; IndexFormatError otherwise."""
    check_encoder(index.manifest, encoder)
    paired = encoder.with_projection(index.projection)
    if paired.dim != index.manifest.dim:
        raise store.IndexFormatError(
            f"{index.path} holds {index.manifest.dim}-d vectors but its encoder "
            f"{'and projection give' if index.projection else 'gives'} "
            f"{paired.dim}-d; rebuild the index with `python -m indexer build`")
    return paired
