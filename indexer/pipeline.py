"""The steps of a build that every runner shares: a mark's file -> its prepared arrays,
catalog row and words -> its descriptors.

Two runners carry them out: indexer.build in this process (decoding threads and encoder
lanes) and indexer.ray_pipeline on a Ray cluster (preparing tasks and encoder actors).
Both import this module; neither imports the other's internals, and indexer.build writes
the index version from what either gives back.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from indexer import variants, words
from indexer.index import lowres, vectors
from indexer.index.catalog import Mark
from indexer.network.encoder import Encoder
from indexer.network.options import DEFAULT_ENCODER
from indexer.network.preprocess import PreprocessConfig, mark_of, open_scaled, views_of
from indexer.sources import ImageItem

THUMBNAIL_SIZE = 128
DEFAULT_DIM = 512


class BuildError(RuntimeError):
    """Nothing could be indexed, or the request cannot be carried out."""


class NothingToIndex(BuildError):
    """None of the images given could be read."""


@dataclass
class RayOptions:
    # "ray://HOST:10001", "HOST:6379" or "auto" (ray.init's address); None: this process's
    # Ray if it has one, else a local Ray started on this machine and stopped at the end.
    address: str | None = None
    # Encoder actors; None: one per GPU where the cluster has GPUs, else one per
    # `actor_threads` of the cluster's CPUs.
    actors: int | None = None
    # CPU actors: the encoder's threads, and the CPUs each one reserves.
    actor_threads: int = 1
    # What the actors load (indexer.network.encoder.load_encoder): the driver's encoder.
    encoder: str = DEFAULT_ENCODER
    runtime: str = "auto"


@dataclass
class BuildOptions:
    index_factory: str = vectors.DEFAULT_FACTORY
    batch_size: int | None = None  # None: the encoder's default_batch (CPU or GPU)
    workers: int = 4
    # Batches encoded side by side, each with its share of torch's threads; None: the
    # encoder's default (indexer.network.encoder.default_lanes).
    lanes: int | None = None
    dim: int = DEFAULT_DIM
    whiten: float = 0.5
    pca: bool = True
    target_fpr: float = 0.01
    calibration_marks: int = 500
    calibration_edits: int = 2
    # Set the threshold of marks found in photographs (indexer.scene_calibration); without
    # it they are decided with the marks' threshold.
    scene_calibration: bool = True
    progress: bool = True
    # Each registered mark is stored as the mean of its descriptors over these mild
    # variants and itself (indexer.variants); `add` uses the ones the index records.
    registry_variants: tuple[str, ...] = variants.DEFAULT
    # More vectors per mark, of small copies of it, for small queries (indexer.index.lowres);
    # None: none. `add` uses what the index records.
    lowres: lowres.LowResConfig | None = field(default_factory=lowres.LowResConfig)
    # Read the words of marks whose manifest gives none (indexer.words); False: only the
    # manifest's `text` is kept.
    read_words: bool = True
    # Prepare and encode on a Ray cluster (indexer.ray_pipeline); None: here.
    ray: RayOptions | None = None
    # Marks encoded and checkpointed at a time by `build` (indexer.shards): the most work
    # a killed build redoes, and what it holds in memory before writing to disk.
    shard_size: int = 2048


@dataclass
class Skipped:
    file: str
    reason: str


@dataclass
class Encoded:
    marks: list[Mark] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)
    # (marks, sizes, dim) descriptors of the small copies, where the index keeps them
    small_copies: list[np.ndarray] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def matrix(self, dim: int) -> np.ndarray:
        return np.concatenate(self.descriptors) if self.descriptors else np.zeros((0, dim),
                                                                                   np.float32)

    def small_copy_matrices(self) -> list[np.ndarray]:
        """One (marks, dim) matrix per small-copy size."""
        if not self.small_copies:
            return []
        stacked = np.concatenate(self.small_copies)
        return [stacked[:, j] for j in range(stacked.shape[1])]


@dataclass
class Prepared:
    """A mark made ready for the encoder from its file's bytes."""
    array: np.ndarray  # (1 + variants, views, S, S, 3) uint8: indexer.variants.expand
    small: np.ndarray | None  # (sizes, views, S, S, 3) uint8 small copies, where kept
    sha256: str
    thumbnail: bytes  # PNG, at most THUMBNAIL_SIZE a side
    text: str = ""  # the words read in the mark, where asked for


@dataclass
class Read:
    """A mark's file read: its decoded mark and what the catalog keeps of it."""
    mark: Image.Image  # RGB, trimmed: preprocess.mark_of
    sha256: str
    thumbnail: bytes  # PNG, at most THUMBNAIL_SIZE a side
    text: str = ""  # the words read in the mark, where asked for


def read(data: bytes, preprocess: PreprocessConfig, read_words: bool = False) -> Read:
    """Decode a mark's file; with `read_words`, read its words. ImageDecodeError if
    unreadable. The first half of `prepare`: a Ray build sends what it gives (127 KB a
    mark on the samples) to the encoder actors, which make the variants (`expand`, 2.11
    MB a mark with the shipped encoder's two views)."""
    im = open_scaled(data, preprocess).image
    mark_im = mark_of(im, preprocess)
    # Read in the picture as decoded (not the network's letterboxed copy): the words
    # keep their pixels.
    text = words.reader().read(mark_im) if read_words else ""
    thumb = im.copy() if mark_im is im else im  # thumbnail() works in place
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buf = io.BytesIO()
    # zlib's default level: optimize=True (level 9) took 3x as long for 4% fewer bytes,
    # a sixth of preparing a mark once the encoder ran on OpenVINO.
    thumb.save(buf, "PNG")
    return Read(mark_im, hashlib.sha256(data).hexdigest(), buf.getvalue(), text)


def expand(mark: Image.Image, preprocess: PreprocessConfig, opts: BuildOptions
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """The second half of `prepare`: a decoded mark's prepared array with its registry
    variants, and its small copies where the index keeps them."""
    array = variants.expand(views_of(mark, preprocess), opts.registry_variants)
    small = lowres.small_copies(mark, preprocess, opts.lowres.copy_px) \
        if opts.lowres else None
    return array, small


def prepare(data: bytes, preprocess: PreprocessConfig, opts: BuildOptions,
            read_words: bool = False) -> Prepared:
    """The mark's prepared array with its registry variants, its small copies (where the
    index keeps them), its thumbnail and, with `read_words`, the words read in it:
    everything but the encoder's work, run in the decoding threads. ImageDecodeError if
    unreadable."""
    r = read(data, preprocess, read_words)
    array, small = expand(r.mark, preprocess, opts)
    return Prepared(array, small, r.sha256, r.thumbnail, r.text)


def reads_words(item: ImageItem, opts: BuildOptions) -> bool:
    """Whether the build reads this mark's words: the manifest's, where given, are kept."""
    return opts.read_words and item.text is None


def catalog_row(item: ImageItem, prepared: Prepared) -> Mark:
    return Mark(item.serial, item.name, item.file, prepared.sha256, prepared.thumbnail,
                item.metadata, item.text if item.text is not None else prepared.text)


def encode_batch(encoder: Encoder, arrays: list[np.ndarray], smalls: list[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch's mean descriptors, and its small copies' (marks, sizes, dim) if any."""
    desc = encoder.mean_descriptors(arrays)
    if not smalls:
        return desc, None
    flat = encoder.descriptors([a for copies in smalls for a in copies])
    return desc, flat.reshape(len(smalls), len(smalls[0]), -1)
