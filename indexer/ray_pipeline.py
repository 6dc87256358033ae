"""`indexer build|add --ray`: read -> expand and encode, as a Ray Data pipeline.

Reading a mark (decode, trim, thumbnail, words: indexer.pipeline.read) runs as Ray tasks
on the cluster's CPUs; a pool of actors, each loading the encoder once (one GPU each where
the cluster has GPUs, else some CPU threads each), makes each decoded mark's variants and
small copies (indexer.pipeline.expand) and encodes them. What crosses the object store
is the decoded mark (~150 KB), not its seven prepared versions (2.1 MB). The descriptors
stream back to the driver a shard at a time (indexer.shards: the build calls this once
per shard, inside one `session`), which writes each shard to disk and then the index
version exactly as a local build does: only build.encode_items is replaced, so the two
builds give the same index. A task or actor lost with its node is re-run by Ray Data;
results are keyed by the mark's position, so none is counted twice.

Every node reads the images at the paths the driver lists: on a cluster they must be on a
shared file system (or a volume mounted at the same path on every node), and the package
installed at the same version on every node (each actor checks the encoder's identity
against the driver's).
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from PIL import Image

from indexer.pipeline import (BuildError, BuildOptions, Encoded, Prepared,  # noqa: F401
                              RayOptions, Skipped, catalog_row, encode_batch, expand, read,
                              reads_words)
from indexer.network.encoder import Encoder, EncoderError, load_encoder
from indexer.network.options import CPU_BATCH, GPU_BATCH
from indexer.network.preprocess import ImageDecodeError, PreprocessConfig
from indexer.sources import ImageItem

log = logging.getLogger(__name__)

# Marks a reading task reads, as one batch (a block). A Ray Data task costs ~40 ms of
# scheduling and moving its block besides its work (2 cores, local Ray): an 8,192-mark
# shard of small synthetic marks (bench.build_scale) took 40 s in blocks of 16, 23 s in
# blocks of 512 read 16 at a time, 18 s read whole, as fast as the local build. A real
# mark takes ~10 ms to read, ~200 ms to expand and encode: 512 a task costs nothing there
# either; its block of decoded marks (~150 KB each, ~77 MB) is under Ray Data's 128 MB.
BLOCK = 512
# Blocks an actor gets at least (where there are marks enough, MIN_BLOCK each), so that a
# small register is still spread over every actor and reading overlaps encoding.
BLOCKS_AN_ACTOR = 4
MIN_BLOCK = 16
# CPUs a reading task reserves. Half a CPU: reading images from a shared file system
# waits as much as it computes. It also keeps the tasks apart from CPU encoder actors:
# Ray Data fuses two steps whose resources are equal, and a one-thread actor would then
# read and encode in turn, one CPU idle beside it.
READ_CPUS = 0.5


class RayUnavailable(BuildError):
    """--ray was asked for without Ray installed, or its cluster cannot be reached."""


def encode_items(items: list[ImageItem], encoder: Encoder, opts: BuildOptions,
                 bar: tqdm) -> Encoded:
    """build.encode_items on a Ray cluster: the same Encoded, in the items' order. Inside
    `session`, the cluster it joined is used; else it is joined (or started) for this call."""
    with session(opts.ray) as ray:
        return _run(ray, items, encoder, opts, opts.ray, bar)


@contextmanager
def session(ray_opts: RayOptions):
    """Ray joined (or a local Ray started) once for the calls inside, e.g. a build's
    shards; left (or stopped) at the end if this call joined it."""
    ray = _import_ray()
    started = _connect(ray, ray_opts.address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its Data library cannot build)
    except ImportError as e:
        raise RayUnavailable(f"--ray needs Ray Data ({e.name} is missing): "
                             'pip install ".[ray]"') from e
    return ray


def _connect(ray, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray; True if this call started it
    (and so must stop it)."""
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING,
                  configure_logging=False)
    try:
        if address is None:
            log.info("starting a local Ray on this machine (%d CPUs)", os.cpu_count() or 1)
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {e}"
                             f"{_auth_hint(e)}") from e
    return True


def _auth_hint(e: Exception) -> str:
    """Ray >= 2.59 turns token authentication on for clusters started with `ray start`, and
    a driver without the token only hears "Failed to connect" (the cluster's log says
    InvalidAuthToken): name the likely cause and its fix, unless the driver already
    sends a token."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    said = "the cluster wants a token" if "auth" in str(e).lower() else \
        "if the cluster's log says InvalidAuthToken, it wants a token"
    return (f"; {said} (Ray >= 2.59 turns token authentication on for clusters started "
            "with `ray start`): run the build with RAY_AUTH_MODE=token in its environment, "
            "with the cluster's token in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH "
            "names, or in Ray's default token file on this machine (`ray get-auth-token` "
            "on the head prints it)")


@dataclass
class _Plan:
    actors: int
    gpus: bool
    cpus_per_actor: float


def plan(resources: dict, ray_opts: RayOptions) -> _Plan:
    """How many encoder actors, and on what, for a cluster with `resources`
    (ray.cluster_resources())."""
    gpus = int(resources.get("GPU", 0))
    threads = max(1, ray_opts.actor_threads)
    if gpus:
        actors = ray_opts.actors or gpus
        return _Plan(actors, True, 1.0)
    cpus = int(resources.get("CPU", 1))
    # Every CPU to an actor: the actors do most of the work (variants and encoding, ~200
    # CPU-ms a mark; reading it is a few), and on 2 CPUs two actors built 1.5x faster than
    # one (bench.ray_build).
    actors = ray_opts.actors or max(1, cpus // threads)
    if actors * threads > cpus - READ_CPUS:
        # Actors that held every CPU would leave none to the tasks that read their
        # input, and the pipeline would stall; Ray's CPUs are logical, so reserve less.
        return _Plan(actors, False, (cpus - READ_CPUS) / actors)
    return _Plan(actors, False, float(threads))


def blocks_for(marks: int, actors: int) -> int:
    """Blocks (reading tasks) to cut `marks` into: of BLOCK marks at most, whatever the
    number of marks (a block is read as one batch: its memory is bounded by BLOCK, not by
    the register), and at least BLOCKS_AN_ACTOR an actor where blocks of MIN_BLOCK marks
    or more allow it."""
    blocks = max(math.ceil(marks / BLOCK), min(marks // MIN_BLOCK, BLOCKS_AN_ACTOR * actors))
    return max(1, blocks)


def _run(ray, items: list[ImageItem], encoder: Encoder, opts: BuildOptions,
         ray_opts: RayOptions, bar: tqdm) -> Encoded:
    p = plan(ray.cluster_resources(), ray_opts)
    batch_size = opts.batch_size or (GPU_BATCH if p.gpus else CPU_BATCH)
    blocks = blocks_for(len(items), p.actors)
    actors = min(p.actors, blocks)  # an actor more than there are blocks would only load
    log.info("Ray build: %d encoder actor(s) on %s, batches of %d marks", actors,
             "GPUs" if p.gpus else f"CPUs ({ray_opts.actor_threads} thread(s) each)",
             batch_size)
    # Our own progress bar, counting marks; Ray Data's bars and its per-run log lines
    # would print over it (its warnings and errors still come through).
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
    rows = [{"i": i, "path": item.file, "read": reads_words(item, opts)}
            for i, item in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(_read_batch, batch_size=None, batch_format="numpy",
                        fn_kwargs={"preprocess": encoder.preprocess}, num_cpus=READ_CPUS)
    ds = ds.map_batches(
        _EncodeActor, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"spec": ray_opts.encoder, "runtime": ray_opts.runtime,
                               "device": "cuda" if p.gpus else "cpu",
                               "threads": max(1, ray_opts.actor_threads),
                               "identity": encoder.identity.to_dict(),
                               "batch_size": batch_size, "opts": _portable(opts)},
        num_gpus=1 if p.gpus else 0, num_cpus=p.cpus_per_actor)

    results: dict[int, dict] = {}
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for j, i in enumerate(batch["i"]):
                results[int(i)] = {k: v[j] for k, v in batch.items()}
            bar.update(len(batch["i"]))
    except ray.exceptions.RayError as e:
        raise BuildError(f"the Ray pipeline failed: {_cause(e)}") from e
    log.debug("Ray Data's account of the run:\n%s", ds.stats())
    return _assemble(items, results)


def _portable(opts: BuildOptions) -> BuildOptions:
    """The options as an actor gets them: without the Ray options themselves."""
    return replace(opts, ray=None, progress=False)


def _cause(e: Exception) -> str:
    """The first line of what failed inside a Ray task, not the whole remote traceback."""
    cause = getattr(e, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]


def _assemble(items: list[ImageItem], results: dict[int, dict]) -> Encoded:
    out = Encoded()
    for i, item in enumerate(items):
        r = results.get(i)
        if r is None:
            raise BuildError(f"the Ray pipeline returned no result for {item.path}")
        if r["error"]:
            out.skipped.append(Skipped(item.file, str(r["error"])))
            log.warning("skipped %s: %s", item.path, r["error"])
            continue
        out.marks.append(catalog_row(item, Prepared(None, None, str(r["sha256"]),
                                                    bytes(r["thumbnail"]), str(r["text"]))))
        out.descriptors.append(np.asarray(r["descriptor"], np.float32)[None])
        if "small" in r:
            out.small_copies.append(np.asarray(r["small"], np.float32)[None])
    return out


def _read_batch(batch: dict[str, np.ndarray], preprocess: PreprocessConfig) -> dict[str, np.ndarray]:
    """A Ray task: read a batch of marks (decode, trim, words, thumbnail). The decoded
    marks go on as raw RGB bytes with their sizes (~150 KB a mark): the actors make the
    variants and small copies (2.1 MB a mark) themselves, where they are encoded. An
    unreadable mark carries its reason in `error` and fails alone, as in a local build.
    Every column has one type and shape in every block (Ray Data cannot join a block
    where a column holds arrays to one where it holds None)."""
    n = len(batch["i"])
    errors, hashes, texts = [""] * n, [""] * n, [""] * n
    marks, thumbs, sizes = np.empty(n, object), np.empty(n, object), np.zeros((n, 2), np.int64)
    for j, (path, words) in enumerate(zip(batch["path"], batch["read"])):
        marks[j] = thumbs[j] = b""
        try:
            with open(path, "rb") as f:
                r = read(f.read(), preprocess, bool(words))
        except (ImageDecodeError, OSError) as e:
            # Never empty: an empty `error` means the mark was read.
            errors[j] = str(e) or type(e).__name__
            continue
        marks[j], sizes[j] = r.mark.tobytes(), r.mark.size
        hashes[j], thumbs[j], texts[j] = r.sha256, r.thumbnail, r.text
    return {"i": batch["i"], "mark": marks, "size": sizes, "error": np.array(errors),
            "sha256": np.array(hashes), "thumbnail": thumbs, "text": np.array(texts)}


class _EncodeActor:
    """Loads the encoder once; each call expands and encodes a batch of decoded marks."""

    def __init__(self, spec: str, runtime: str, device: str, threads: int, identity: dict,
                 batch_size: int, opts: BuildOptions):
        import torch

        from indexer.network.encoder import EncoderIdentity
        torch.set_num_threads(threads)
        self.encoder = load_encoder(spec, device, runtime, threads)
        differs = self.encoder.identity.mismatch(EncoderIdentity.from_dict(identity))
        if differs:  # another version of the package, or other weights, on this node
            raise EncoderError(f"a Ray worker's encoder is not the driver's: {differs}")
        self.batch_size, self.opts = batch_size, opts
        self.small_sizes = len(opts.lowres.copy_px) if opts.lowres else 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["i"])
        good = [j for j in range(n) if not batch["error"][j]]
        dim = self.encoder.descriptor_dim
        desc = np.zeros((n, dim), np.float32)
        # Always there when the index keeps small copies, so every block has one schema.
        small = np.zeros((n, self.small_sizes, dim), np.float32) if self.small_sizes else None
        for start in range(0, len(good), self.batch_size):
            rows = good[start:start + self.batch_size]
            arrays, smalls = [], []
            for j in rows:
                mark = Image.frombytes("RGB", tuple(batch["size"][j]), batch["mark"][j])
                array, small_copies = expand(mark, self.encoder.preprocess, self.opts)
                arrays.append(array)
                if small_copies is not None:
                    smalls.append(small_copies)
            d, s = encode_batch(self.encoder, arrays, smalls)
            desc[rows] = d
            if small is not None:
                small[rows] = s
        out = {"i": batch["i"], "error": batch["error"], "sha256": batch["sha256"],
               "thumbnail": batch["thumbnail"], "text": batch["text"], "descriptor": desc}
        if small is not None:
            out["small"] = small
        return out
