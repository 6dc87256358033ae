"""The build pipeline: image files -> shards on disk -> a new index version.

Files are read and decoded by a pool of threads (Pillow releases the GIL while
decoding) a few batches ahead of the encoder, so decoding overlaps encoding.
Unreadable images are skipped and listed in the version's report.json; they never
abort a run. A build encodes a shard of marks at a time and checkpoints it
(indexer.shards), then writes the version from the shards read back one at a time: its
memory does not grow with the register beyond the index's own codes and a few hundred
bytes a mark of bookkeeping, and a killed build goes on where it stopped. `add` encodes
its marks in memory: it is meant for a register's new filings, not for millions.
"""
from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from collections import deque
from contextlib import nullcontext
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from indexer import (calibrate, decision, scene_calibration, shards, variants, word_calibration,
                     words)
from indexer.index import lowres, store, vectors
from indexer.index.catalog import Catalog, Mark
from indexer.index.reader import OpenIndex, encoder_for, open_index
from indexer.network import background
from indexer.network.detector import DetectorError, load_detector
from indexer.network.encoder import Encoder, default_lanes, lane_threads
from indexer.network.preprocess import ImageDecodeError
from indexer.network.projection import fit_pca_chunks
from indexer.pipeline import (DEFAULT_DIM, THUMBNAIL_SIZE, BuildError, BuildOptions,  # noqa: F401
                              Encoded, NothingToIndex, Prepared, RayOptions, Skipped,
                              catalog_row, encode_batch, prepare, reads_words)
from indexer.sources import ImageItem, prefetch

log = logging.getLogger(__name__)

@dataclass
class BuildResult:
    index_dir: str
    version: str
    indexed: int
    replaced: int
    skipped: list[Skipped]
    total: int
    seconds: float
    # Of `seconds`, reading, decoding and encoding the images; the rest is fitting the
    # PCA, building the FAISS index and calibrating (which encodes edited copies).
    encode_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def encode_images_per_s(self) -> float:
        return self.indexed / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"indexed {self.indexed} marks ({self.replaced} replaced), skipped "
                f"{len(self.skipped)}, in {self.seconds:.1f} s ({self.images_per_s:.1f} "
                f"images/s; {self.encode_images_per_s:.1f} images/s while encoding); index "
                f"{self.index_dir} version {self.version} holds {self.total}")


def _load_one(item: ImageItem, encoder: Encoder, opts: BuildOptions
              ) -> tuple[np.ndarray, np.ndarray | None, Mark]:
    prepared = prepare(item.path.read_bytes(), encoder.preprocess, opts, reads_words(item, opts))
    return prepared.array, prepared.small, catalog_row(item, prepared)


def _words_readable(items: Sequence[ImageItem], opts: BuildOptions) -> BuildOptions:
    """`opts`, without reading words where no OCR is installed (said once)."""
    if opts.read_words and any(i.text is None for i in items) and not words.can_read():
        log.warning("the words of marks are not read (no OCR here: pip install "
                    "rapidocr-onnxruntime==1.4.4); only a manifest's `text` is kept")
        return replace(opts, read_words=False)
    return opts


def encode_items(items: list[ImageItem], encoder: Encoder, opts: BuildOptions,
                 bar: tqdm | None = None) -> Encoded:
    """Backbone descriptors of every readable item; the rest are listed as skipped. With
    `opts.ray`, on a Ray cluster (indexer.ray_pipeline), else in this process. Progress
    goes to `bar` where given (a build's shards share one), else to a bar of its own."""
    opts = _words_readable(items, opts)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(items), unit="img", disable=not opts.progress,
                   desc="encoding (ray)" if opts.ray else "encoding")
    try:
        if opts.ray is not None:
            from indexer import ray_pipeline  # Ray is an optional extra
            return ray_pipeline.encode_items(items, encoder, opts, bar)
        return _encode_here(items, encoder, opts, bar)
    finally:
        if own_bar:
            bar.close()


def _encode_here(items: list[ImageItem], encoder: Encoder, opts: BuildOptions,
                 bar: tqdm) -> Encoded:
    out = Encoded()

    def collect(desc: np.ndarray, small: np.ndarray | None) -> None:
        out.descriptors.append(desc)
        if small is not None:
            out.small_copies.append(small)
        bar.update(len(desc))

    batch_size = opts.batch_size or encoder.default_batch
    with ThreadPoolExecutor(max(1, opts.workers)) as pool, \
            _Lanes(encoder, opts.lanes, collect) as lanes:
        depth = max(2 * batch_size, 4 * opts.workers)
        load = partial(_load_one, encoder=encoder, opts=opts)
        arrays: list[np.ndarray] = []
        smalls: list[np.ndarray] = []
        for item, fut in prefetch(pool, load, items, depth):
            try:
                array, small, mark = fut.result()
            except (ImageDecodeError, OSError) as e:
                out.skipped.append(Skipped(item.file, str(e)))
                log.warning("skipped %s: %s", item.path, e)
                bar.update(1)
                continue
            arrays.append(array)
            if small is not None:
                smalls.append(small)
            out.marks.append(mark)
            if len(arrays) >= batch_size:
                lanes.submit(arrays, smalls)
                arrays, smalls = [], []
        if arrays:
            lanes.submit(arrays, smalls)
    return out


class _Lanes:
    """Batches encoded in `lanes` threads side by side, each with its share of torch's
    threads, as the server's encoder lanes do (indexer.network.encoder.default_lanes); results
    go to `collect` in submission order. With one lane, batches are encoded in the
    calling thread: another thread with its own OpenMP team of all the threads would
    make libgomp throttle both (see server.app)."""

    def __init__(self, encoder: Encoder, lanes: int | None, collect):
        threads = torch.get_num_threads()
        self.lanes = default_lanes(encoder.device.type, threads) if lanes is None else lanes
        if self.lanes < 1:
            raise BuildError(f"lanes must be >= 1, got {self.lanes}")
        self.encoder, self._collect = encoder, collect
        self._pool = (ThreadPoolExecutor(self.lanes, thread_name_prefix="encoder",
                                         initializer=torch.set_num_threads,
                                         initargs=(lane_threads(threads, self.lanes),))
                      if self.lanes > 1 else None)
        self._in_flight: deque[Future] = deque()

    def submit(self, arrays: list[np.ndarray], smalls: list[np.ndarray]) -> None:
        if self._pool is None:
            self._collect(*encode_batch(self.encoder, arrays, smalls))
            return
        self._in_flight.append(self._pool.submit(encode_batch, self.encoder, arrays, smalls))
        # At most a batch per lane in flight: memory stays bounded, and decoding runs
        # no further ahead than its prefetch depth.
        while len(self._in_flight) > self.lanes:
            self._collect(*self._in_flight.popleft().result())

    def __enter__(self) -> "_Lanes":
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            while self._in_flight and exc_type is None:
                self._collect(*self._in_flight.popleft().result())
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)


def calibrate_index(index, encoder: Encoder, sources: list[tuple[int, str]],
                    opts: BuildOptions, reranker: lowres.Reranker | None = None
                    ) -> tuple[calibrate.Calibration, scene_calibration.SceneCalibration | None]:
    """The default threshold for `index`, from the marks at `sources` and the encoder's
    background set (indexer.network.background), and the one for marks found in
    photographs (indexer.scene_calibration; None where there is no detector)."""
    marks = calibrate.load_marks(sources)
    cal = calibrate.calibrate(index, encoder, marks, opts.target_fpr,
                              opts.calibration_edits, background=background.for_encoder(encoder),
                              reranker=reranker)
    cal.held_out_ids = [mid for mid, _ in sources]
    scenes = None
    if opts.scene_calibration:
        try:
            detector = load_detector()
        except DetectorError as e:
            log.warning("photographs keep the marks' threshold: %s", e)
        else:
            scenes = scene_calibration.calibrate_scenes(
                index, encoder, decision.rule_of(cal.decision, cal.family_similarity),
                cal.threshold, detector, marks, opts.target_fpr, reranker)
    return cal, scenes


def _set_thresholds(manifest: store.Manifest, cal: calibrate.Calibration,
                    scenes: scene_calibration.SceneCalibration | None) -> None:
    manifest.threshold, manifest.threshold_method = cal.threshold, cal.method
    manifest.decision, manifest.family_similarity = cal.decision, cal.family_similarity
    manifest.calibration = cal.to_dict()
    manifest.scene_threshold = scenes.threshold if scenes else None
    manifest.scene_calibration = scenes.to_dict() if scenes else {}


def _set_words_threshold(manifest: store.Manifest, catalog_file: Path,
                         target_fpr: float | None = None) -> None:
    """The words' threshold of the catalog at `catalog_file` (None where no mark has words):
    cheap (a second for 2,000 made-up words), so set anew whenever the marks change."""
    target = target_fpr or manifest.words_calibration.get("target_fpr") or \
        manifest.calibration.get("target_fpr", 0.01)
    catalog = Catalog(catalog_file)
    try:
        cal = word_calibration.calibrate_words(catalog, target)
    finally:
        catalog.close()
    manifest.words_threshold = cal.threshold if cal else None
    manifest.words_calibration = cal.to_dict() if cal else {}


def recalibrate(index_dir: str | Path, encoder: Encoder, opts: BuildOptions
                ) -> calibrate.Calibration:
    """A new version whose manifest carries a freshly estimated threshold."""
    current = open_index(index_dir)
    try:
        paired = encoder_for(current, encoder)
        # The marks the build held out of the PCA fit, where they still exist.
        held = set(current.manifest.calibration.get("held_out_ids", []))
        sources = [(mid, src) for mid, src in current.catalog.sources() if mid in held]
        if not sources:
            log.warning("no held-out calibration marks recorded: calibrating on marks the "
                        "projection was fitted on, which tends to set the threshold low")
            sources = current.catalog.sources()
            sources = [sources[i] for i in calibrate.pick_held_out(len(sources),
                                                                    opts.calibration_marks)]
        cal, scenes = calibrate_index(current.index, paired, sources, opts, current.reranker)
        manifest = current.manifest
    finally:
        current.close()
    with store.write_version(index_dir) as writer:
        writer.copy_from_base(store.INDEX_FILE, store.CATALOG_FILE, store.PROJECTION_FILE,
                              *lowres.files(manifest.lowres))
        _set_thresholds(manifest, cal, scenes)
        _set_words_threshold(manifest, writer.path / store.CATALOG_FILE, opts.target_fpr)
        writer.commit(manifest)
    return cal


def _write_report(writer: store.VersionWriter, result: BuildResult) -> None:
    report = asdict(result) | {"images_per_s": result.images_per_s,
                               "encode_images_per_s": result.encode_images_per_s}
    (writer.path / store.REPORT_FILE).write_text(json.dumps(report, indent=2))


def build(items: Sequence[ImageItem], out_dir: str | Path, encoder: Encoder,
          opts: BuildOptions, restart: bool = False) -> BuildResult:
    """A new index from `items`, replacing whatever `out_dir` held, atomically.

    Marks are encoded a shard at a time into out_dir/.building (indexer.shards); a build
    that was killed goes on from its last shard when called again with the same items and
    options. One that finds an unfinished build of other inputs refuses to mix them
    (UnfinishedBuildError) unless `restart`, which discards it."""
    t0 = time.perf_counter()
    if not items:
        raise BuildError("no images to index: the folder or manifest is empty")
    store.check_build_target(out_dir)
    variants.check(opts.registry_variants)
    _check_batching(opts)
    opts = _words_readable(items, opts)
    key = shards.build_key(items, encoder.identity.to_dict(), opts, opts.shard_size)
    created = not Path(out_dir).exists()
    with shards.Checkpoints(out_dir, key, len(items), opts.shard_size, restart) as done:
        try:
            _encode_shards(items, encoder, opts, done)
            t_encode = time.perf_counter() - t0
            result = _write_build(items, out_dir, encoder, opts, done, t0, t_encode)
        except BuildError as e:
            # Shards are kept where encoding is worth going on with (a Ray cluster lost
            # halfway, say), not where nothing was or could be encoded.
            if isinstance(e, NothingToIndex) or not any(map(done.done, range(done.count))):
                done.discard()
                if created:
                    shutil.rmtree(out_dir, ignore_errors=True)
            raise
        done.discard()
    return result


def _phase(what: str, *args) -> None:
    """A step of writing the version done: minutes each at millions of marks."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux
    log.info(what + "; peak memory so far %.2f GB", *args, peak / 1e9)


def _check_batching(opts: BuildOptions) -> None:
    """Before anything is written: settings that cannot work."""
    for name, value in (("lanes", opts.lanes), ("batch size", opts.batch_size),
                        ("shard size", opts.shard_size)):
        if value is not None and value < 1:
            raise BuildError(f"{name} must be >= 1, got {value}")


def _encode_shards(items: Sequence[ImageItem], encoder: Encoder, opts: BuildOptions,
                   done: shards.Checkpoints) -> None:
    """Every shard not yet on disk, encoded and written; one shard in memory at a time."""
    todo = [k for k in range(done.count) if not done.done(k)]
    bar = tqdm(total=len(items), unit="img", disable=not opts.progress,
               desc="encoding (ray)" if opts.ray else "encoding",
               initial=sum(len(range(*done.bounds(k))) for k in range(done.count)
                           if done.done(k)))
    if opts.ray is not None:
        from indexer import ray_pipeline  # Ray is an optional extra
        joined = ray_pipeline.session(opts.ray)
    else:
        joined = nullcontext()
    try:
        with joined:
            for k in todo:
                start, stop = done.bounds(k)
                done.write(k, items[start:stop],
                           encode_items(items[start:stop], encoder, opts, bar))
    finally:
        bar.close()


def _write_build(items: Sequence[ImageItem], out_dir: str | Path, encoder: Encoder,
                 opts: BuildOptions, done: shards.Checkpoints, t0: float,
                 t_encode: float) -> BuildResult:
    """The new version from the shards, read back one at a time: catalog, PCA (fitted on
    every mark, from disk), FAISS index, small copies, calibration."""
    heads = [done.head(k) for k in range(done.count)]
    each = [p for p, _ in heads]
    positions = np.concatenate(each)
    n = len(positions)
    if not n:
        raise NothingToIndex(f"none of the {len(items)} images could be read; see the log")
    starts = np.cumsum([0] + [len(p) for p in each])  # each shard's first mark's rank
    held = calibrate.pick_held_out(n, opts.calibration_marks)
    fitted = np.ones(n, bool)
    fitted[held] = False

    def shard_vectors():
        """(first mark's rank, shard) of each shard with marks, descriptors read."""
        for k in range(done.count):
            if starts[k + 1] > starts[k]:
                yield int(starts[k]), done.read(k)

    # PCA learned on this registry: it reduces larger descriptors to `dim`, and its partial
    # whitening lifts the directions that tell this registry's marks apart (on LogoBench
    # it adds more to the trained head than the head adds to PCA alone). The calibration
    # marks stay out of the fit so that they score like unseen marks.
    dim = min(opts.dim, encoder.descriptor_dim)
    projection = fit_pca_chunks(
        lambda: (s.descriptors[fitted[r:r + len(s.positions)]] for r, s in shard_vectors()),
        dim, opts.whiten) if opts.pca else None
    paired = encoder.with_projection(projection)
    _phase("projection fitted on %d marks", n - len(held))
    with store.write_version(out_dir, new=True) as writer:
        catalog = Catalog(writer.path / store.CATALOG_FILE)
        ids = np.zeros(n, np.int64)
        for r, s in shard_vectors():
            ids[r:r + len(s.positions)] = catalog.upsert(s.marks(items))[0]
        catalog.close()
        _phase("catalog written")
        # Approximate indexes come back with their tuned nprobe/efSearch set: it serves
        # the calibration below and is stored for the server.
        index, spec = vectors.build_streamed(
            opts.index_factory, n, dim,
            lambda: ((ids[r:r + len(s.positions)], paired.project(s.descriptors))
                     for r, s in shard_vectors()))
        vectors.save(index, writer.path / store.INDEX_FILE)
        _phase("%s index filled and tuned (%s)", spec.factory, spec.search_params or "exact")
        reranker = None
        if opts.lowres:
            small = [lowres.new_index(dim) for _ in opts.lowres.copy_px]
            for r, s in shard_vectors():
                for j, into in enumerate(small):
                    into.add_with_ids(paired.project(s.small[:, j]),
                                      ids[r:r + len(s.positions)])
            for into, name in zip(small, opts.lowres.files(), strict=True):
                vectors.save(into, writer.path / name)
            reranker = lowres.Reranker(small, opts.lowres)
        if projection:
            projection.save(writer.path / store.PROJECTION_FILE)
        cal, scenes = calibrate_index(
            index, paired, [(int(ids[i]), items[positions[i]].file) for i in held], opts,
            reranker)
        manifest = store.Manifest(
            encoder=encoder.identity.to_dict(), dim=dim, index_type=spec.factory,
            index_preset=spec.preset, search_params=spec.search_params,
            sampled_recall=round(spec.sampled_recall, 4),
            count=int(index.ntotal), threshold=cal.threshold,
            projection=store.PROJECTION_FILE if projection else None,
            registry_variants=list(opts.registry_variants),
            lowres=opts.lowres.to_dict() if opts.lowres else {})
        _set_thresholds(manifest, cal, scenes)
        _set_words_threshold(manifest, writer.path / store.CATALOG_FILE, opts.target_fpr)
        skipped = [Skipped(items[p].file, reason) for _, lost in heads for p, reason in lost]
        result = BuildResult(str(out_dir), "", n, 0, skipped, int(index.ntotal),
                             time.perf_counter() - t0, t_encode)
        _write_report(writer, result)
        result.version = writer.commit(manifest)
    return result


def add(items: list[ImageItem], index_dir: str | Path, encoder: Encoder,
        opts: BuildOptions) -> BuildResult:
    """New marks into the live index; a serial already there is replaced in place."""
    t0 = time.perf_counter()
    current = open_index(index_dir)
    try:
        paired = encoder_for(current, encoder)
        _refuse_replacing(current, items)
        t_start = time.perf_counter()
        # New marks are stored as the build stored the others.
        opts = replace(opts, registry_variants=tuple(current.manifest.registry_variants),
                       lowres=lowres.LowResConfig.from_dict(current.manifest.lowres))
        enc = encode_items(items, encoder, opts)
        t_encode = time.perf_counter() - t_start
        if not enc.marks:
            raise NothingToIndex(f"none of the {len(items)} images could be read; index unchanged")
        vecs = paired.project(enc.matrix(encoder.descriptor_dim))
        small_vecs = [paired.project(m) for m in enc.small_copy_matrices()]
        index = current.index  # already read by open_index; the new version is built on it
        reranker = current.reranker
        manifest = current.manifest
    finally:
        current.close()
    with store.write_version(index_dir) as writer:
        writer.copy_from_base(store.CATALOG_FILE, store.PROJECTION_FILE)
        catalog = Catalog(writer.path / store.CATALOG_FILE)
        ids, replaced = catalog.upsert(enc.marks)
        catalog.close()
        if replaced:  # the command line says so too (BuildResult.replaced)
            log.info("%d serial(s) were already indexed and have been replaced", replaced)
        vectors.add(index, ids, vecs)
        vectors.save(index, writer.path / store.INDEX_FILE)
        if reranker is not None:
            _add_small_copies(writer.path, reranker.config, reranker.indexes, ids, small_vecs)
        manifest.count = int(index.ntotal)
        _set_words_threshold(manifest, writer.path / store.CATALOG_FILE)
        result = BuildResult(str(index_dir), "", len(ids), replaced, enc.skipped,
                             manifest.count, time.perf_counter() - t0, t_encode)
        _write_report(writer, result)
        result.version = writer.commit(manifest)
    return result


def _add_small_copies(path: Path, config: lowres.LowResConfig, indexes: list,
                      ids: list[int], per_size: list[np.ndarray]) -> None:
    """Each size's vectors into its index (ids already there replaced), saved in `path`."""
    for index, name, vecs in zip(indexes, config.files(), per_size, strict=True):
        vectors.add(index, ids, vecs)
        vectors.save(index, path / name)


def _refuse_replacing(current: OpenIndex, items: list[ImageItem]) -> None:
    """Before any image is encoded: an index that cannot remove marks cannot replace them."""
    if vectors.can_remove(current.index):
        return
    present = current.catalog.ids_for([item.serial for item in items])
    if present:
        raise BuildError(
            f"{len(present)} of these serials are already indexed (e.g. {next(iter(present))}) "
            f"and a {current.manifest.index_preset or current.manifest.index_type} index cannot "
            "replace marks: leave them out, or rebuild the index")


@dataclass
class RemoveResult:
    version: str
    removed: list[str]
    not_found: list[str]
    total: int


def remove(serials: list[str], index_dir: str | Path) -> RemoveResult:
    serials = list(dict.fromkeys(s.strip() for s in serials if s.strip()))
    if not serials:
        raise BuildError("no serials given to remove")
    with store.write_version(index_dir) as writer:
        writer.copy_from_base(store.CATALOG_FILE, store.PROJECTION_FILE)
        manifest = store.Manifest.read(writer.base / store.MANIFEST)
        index = vectors.load(writer.base / store.INDEX_FILE)
        catalog = Catalog(writer.path / store.CATALOG_FILE)
        found = catalog.delete(serials)
        catalog.close()
        not_found = [s for s in serials if s not in found]
        if not found:
            return RemoveResult(manifest.version, [], not_found, manifest.count)
        vectors.remove(index, list(found.values()))
        vectors.save(index, writer.path / store.INDEX_FILE)
        for name in lowres.files(manifest.lowres):
            small = vectors.load(writer.base / name)
            vectors.remove(small, list(found.values()))
            vectors.save(small, writer.path / name)
        manifest.count = int(index.ntotal)
        _set_words_threshold(manifest, writer.path / store.CATALOG_FILE)
        version = writer.commit(manifest)
    return RemoveResult(version, list(found), not_found, manifest.count)
