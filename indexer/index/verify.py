"""`python -m indexer verify`: do the manifest, the FAISS index and the catalog agree?

Checks, in order, stopping at the first that makes the rest meaningless:
- CURRENT names a version whose manifest is readable and of a known format;
- every file the manifest lists is there with the SHA-256 it recorded;
- the FAISS index loads with the manifest's count and dimension;
- the catalog holds the same count, and exactly the ids the FAISS index holds;
- the small-copy vectors (if any, indexer.index.lowres) are there for exactly those ids;
- the projection (if any) maps the encoder's descriptors to the index dimension;
- the encoder identity names a model, a weights hash and its preprocessing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indexer.index import lowres, store, vectors
from indexer.index.catalog import Catalog
from indexer.network.projection import Projection


@dataclass
class VerifyReport:
    version: str = ""
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def checksum_problems(vdir: Path, manifest: store.Manifest) -> list[str]:
    problems = []
    for name, digest in sorted(manifest.checksums.items()):
        path = vdir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif store.sha256_file(path) != digest:
            problems.append(f"{name} does not match its recorded SHA-256 (damaged or truncated)")
    return problems


def _small_copy_problems(path: Path, ids: set[int]) -> list[str]:
    try:
        small = vectors.load(path)
    except RuntimeError as e:
        return [f"{path.name} does not load: {e}"]
    small_ids = set(vectors.stored_ids(small).tolist())
    if small_ids != ids:
        return [f"{path.name}: {len(ids - small_ids)} marks have no small-copy vector and "
                f"{len(small_ids - ids)} small-copy vectors no mark"]
    return []


def verify(root: str | Path) -> VerifyReport:
    report = VerifyReport()
    try:
        vdir = store.current_version_dir(root)
        manifest = store.Manifest.read(vdir / store.MANIFEST)
    except store.IndexFormatError as e:
        report.problems.append(str(e))
        return report
    report.version = manifest.version
    report.checked.append("manifest")
    report.problems += checksum_problems(vdir, manifest)
    if report.problems:
        return report
    report.checked.append(f"checksums of {len(manifest.checksums)} files")
    try:
        index = vectors.load(vdir / store.INDEX_FILE)
    except RuntimeError as e:
        report.problems.append(f"FAISS index does not load: {e}")
        return report
    if (index.ntotal, index.d) != (manifest.count, manifest.dim):
        report.problems.append(f"FAISS holds {index.ntotal} x {index.d}-d, manifest says "
                               f"{manifest.count} x {manifest.dim}-d")
    catalog = Catalog(vdir / store.CATALOG_FILE, readonly=True)
    try:
        faiss_ids, catalog_ids = set(vectors.stored_ids(index).tolist()), set(catalog.all_ids())
    finally:
        catalog.close()
    if len(catalog_ids) != manifest.count:
        report.problems.append(f"catalog holds {len(catalog_ids)} marks, manifest says "
                               f"{manifest.count}")
    if faiss_ids != catalog_ids:
        report.problems.append(
            f"{len(faiss_ids - catalog_ids)} FAISS ids have no catalog row and "
            f"{len(catalog_ids - faiss_ids)} catalog rows have no vector")
    report.checked.append(f"{len(faiss_ids)} ids in FAISS and catalog")
    for name in lowres.files(manifest.lowres):
        report.problems += _small_copy_problems(vdir / name, faiss_ids)
    if manifest.lowres:
        report.checked.append(f"small copies ({', '.join(map(str, manifest.lowres['copy_px']))}"
                              " px) of each mark")
    enc = manifest.encoder
    if not all(enc.get(k) for k in ("name", "weights_sha256", "preprocess", "descriptor_dim")):
        report.problems.append(f"encoder identity is incomplete: {enc}")
    if manifest.projection:
        p = Projection.load(vdir / manifest.projection)
        if (p.in_dim, p.out_dim) != (enc.get("descriptor_dim"), manifest.dim):
            report.problems.append(f"projection maps {p.in_dim} -> {p.out_dim}, expected "
                                   f"{enc.get('descriptor_dim')} -> {manifest.dim}")
    report.checked.append("encoder identity and projection")
    return report
