"""The encoder's network run through OpenVINO on a CPU: the same function, about twice as fast.

On the 2-core machines this project runs on, OpenVINO's CPU plugin ran the folded
EfficientNet-Lite0 (both views, GeM, head) in 11.6 ms for one mark against PyTorch's
27 ms, and 8 marks in 94 against 160-200 ms, with descriptors equal to 2e-7 (fp32). So
on a CPU the encoder converts its network once (`openvino.convert_model` traces the
torch module), puts the input conversion in the graph (uint8 NHWC -> float NCHW,
minus the mean, over the std: a PrePostProcessor step that OpenVINO fuses into the
first convolution, 3 ms faster than doing it in the traced graph), and compiles it.

The converted model is kept on disk, keyed by everything that decides its output (the
encoder's identity, the OpenVINO and torch versions), and OpenVINO keeps its compiled
blob beside it (CACHE_DIR), so a server's second start skips the conversion (~4 s).
Anything that goes wrong here (OpenVINO missing, a network it cannot convert) is the
caller's cue to stay on PyTorch: `convert` raises OpenVinoUnavailable and nothing else.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# Bump when the converted graph changes for the same identity (a new input step, say).
CACHE_FORMAT = 1
CACHE_ENV = "TRADEMARK_SEARCH_CACHE"


class OpenVinoUnavailable(RuntimeError):
    """OpenVINO is not installed, or cannot convert or compile this network."""


def cache_root() -> Path:
    """Where converted models live: $TRADEMARK_SEARCH_CACHE, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trademark-search"


def version() -> str | None:
    """OpenVINO's version, or None where it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.get_version().split("-")[0]  # "2026.4.1-22982-e213a14...": the release


# The process's first inference through OpenVINO's Python binding runs alone. It sets up
# function-local statics of the binding (its element-type tables) that, entered by two
# threads at once, deadlocked: one thread waited for the GIL inside the static's
# initialisation while the other held the GIL waiting for that initialisation
# (__cxa_guard_acquire; seen with OpenVINO 2026.4.1 in a build's two encoder lanes, 200
# marks, hung for 10 minutes). Waiting on a Python lock releases the GIL, so a second lane
# waits here instead.
_first_inference = threading.Lock()
_first_inference_done = threading.Event()


def _alone_at_first():
    """The process's first inference, or what must not run beside it, holds this; later
    calls go through (see _first_inference)."""
    return nullcontext() if _first_inference_done.is_set() else _first_inference


def _cpu_properties(streams: int, threads_each: int, pin: bool) -> dict:
    """OpenVINO's CPU plugin settings for `streams` streams of `threads_each` threads.
    fp32: bf16 was slower on the 2-core Xeon (no AMX) and moved the descriptors (cosine
    0.993-0.995), and a CPU with bf16 should read and encode as this one does."""
    return {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * threads_each,
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": pin}


class OpenVinoNetwork:
    """A converted network: (M, S, S, 3) uint8 images -> (M, D) float32, callable from any
    thread, each with its own infer request.

    Compiled once per share of the threads that callers ask for, as the encoder lanes of
    the server and the build use PyTorch's threads (indexer.network.encoder.default_lanes):
    a caller with all `threads` gets one stream of all of them (one mark: 13 ms, against 22
    on one thread, 2 cores); a caller with a share gets a model of threads // share streams
    of that many threads each, and lanes side by side infer on streams of their own. On 2
    cores, with the build's decoding threads busy beside them, two one-thread lanes kept
    the cores fuller than one two-thread stream (see docs/speed.md)."""

    def __init__(self, core, model, threads: int, source: str):
        self._core, self._model = core, model
        self.threads = threads
        self.source = source  # "converted" or "cache"
        self._compiled: dict[int, object] = {}
        self._lock = threading.Lock()
        # OpenVINO pins its threads to the first cores, not knowing of other processes:
        # two one-thread Ray actors on one host then shared one core and ran at half
        # speed (401 vs 187 ms for 8 marks). Pinned only where this network's threads
        # take every core (the server's and the local build's lanes: 74-78 against 70
        # marks/s unpinned, two A/B rounds).
        self._pin = threads >= (os.cpu_count() or 1)  # as --threads counts them
        self._local = threading.local()

    def _share(self, threads: int | None) -> int:
        """A caller's threads, within 1..all of them (None: all)."""
        return max(1, min(threads or self.threads, self.threads))

    def compiled(self, threads: int):
        """The model compiled for callers with `threads` each (at most all of them)."""
        share = self._share(threads)
        with self._lock:
            if share not in self._compiled:
                self._compiled[share] = self._core.compile_model(
                    self._model, "CPU",
                    _cpu_properties(max(1, self.threads // share), share, self._pin))
            return self._compiled[share]

    def __call__(self, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        """`threads`: the caller's share (default: all)."""
        share = self._share(threads)
        requests = self._local.__dict__.setdefault("requests", {})
        if share not in requests:
            requests[share] = self.compiled(share).create_infer_request()
        # share_inputs: the batch is read where it lies, not copied into the request.
        return infer(requests[share], np.ascontiguousarray(images))


def infer(request, inputs: np.ndarray) -> np.ndarray:
    """`request`'s first output for `inputs`, the process's first inference alone (see
    _first_inference): the encoder's and the word reader's requests share the binding."""
    with _alone_at_first():
        out = request.infer({0: inputs}, share_inputs=True)[0]
    _first_inference_done.set()
    return out


_onnx_models: dict[tuple[str, int], object] = {}
_onnx_lock = threading.Lock()


def compile_onnx(path: str | Path, threads: int):
    """An ONNX model (a file shipped in another package's wheel) compiled for this CPU to
    run on `threads` threads, once per process: callers make their own infer requests.

    As many streams of `threads` as the cores hold: callers are threads (a build's
    decoding threads, a server's calls) that infer at once, and requests of one stream
    take turns (PP-OCR's detection from two threads: 54 against 48 inferences/s on one
    stream, 99 on two; 2 cores). No pinning: OpenVINO pins to the first cores, not
    knowing of the encoder's lanes. Raises OpenVinoUnavailable where OpenVINO is missing
    or cannot compile it."""
    key = (str(path), threads)
    with _onnx_lock:
        if key not in _onnx_models:
            try:
                import openvino as ov
            except ImportError as e:
                raise OpenVinoUnavailable(
                    "openvino is not installed (pip install openvino)") from e
            try:
                # Not beside the process's first inference (a server compiles these while
                # its encoder warms up): the binding's statics again.
                with _alone_at_first():
                    core = ov.Core()
                    streams = max(1, (os.cpu_count() or 1) // threads)
                    _onnx_models[key] = core.compile_model(
                        core.read_model(str(path)), "CPU",
                        _cpu_properties(streams, threads, pin=False))
            except (RuntimeError, OSError) as e:
                raise OpenVinoUnavailable(f"{type(e).__name__}: {e}") from e
        return _onnx_models[key]


def convert(net: nn.Module, size: int, mean: float, std: float, identity: dict,
            threads: int, cache: Path | None = None) -> OpenVinoNetwork:
    """`net` (float (M, 3, size, size) -> (M, D)) converted for this CPU with the input
    normalisation in front, from the cache where an earlier conversion left it, and
    compiled for callers with all `threads` (a test that it compiles at all)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise OpenVinoUnavailable("openvino is not installed (pip install openvino)") from e
    cache = cache_root() if cache is None else cache
    key = _cache_key(identity, size, mean, std, ov.get_version())  # the full build string
    path = cache / "openvino" / key / "model.xml"
    core = ov.Core()
    try:
        if path.is_file():
            model, source = core.read_model(path), "cache"
        else:
            model, source = _convert(ov, net, size, mean, std), "converted"
            if _save(ov, model, path):
                # Read back: the saved model computes 6e-8 away from the one in memory,
                # and every run, first or later, should give the same vectors.
                model = core.read_model(path)
        try:
            # OpenVINO's own cache of compiled blobs, beside the model it compiles.
            core.set_property({"CACHE_DIR": str(path.parent / "compiled")})
        except RuntimeError as e:  # a read-only cache: compile each start instead
            log.debug("no compiled-model cache: %s", e)
        network = OpenVinoNetwork(core, model, threads, source)
        network.compiled(threads)
    except (RuntimeError, OSError, TypeError, ValueError, *_frontend_failures()) as e:
        # The first line says which: the frontend's report runs to a page.
        first = str(e).strip().splitlines()
        failed = [l.strip("- ") for l in first if l.startswith("-- Conversion is failed for")]
        raise OpenVinoUnavailable(f"{type(e).__name__}: "
                                  f"{failed[0] if failed else first[0] if first else ''}") from e
    return network


def adopt(what: str, make: Callable[[], OpenVinoNetwork], refused: str | None,
          required: bool, error: type[Exception], logger: logging.Logger
          ) -> OpenVinoNetwork | None:
    """`make()`'s network for the `what` ("encoder", "detector") to run on, or None where
    it cannot be had and PyTorch goes on; one line in `logger` says which and why.
    `refused`: why not, without trying (None: try). `required`: raise `error`, saying how
    to fix it, instead of None."""
    why, network = refused, None
    if why is None:
        try:
            network = make()
        except OpenVinoUnavailable as e:
            why = str(e)
    if network is not None:
        logger.info("%s on OpenVINO %s (%s, %d threads)", what, version(), network.source,
                    network.threads)
        return network
    if required:
        raise error(f"cannot run the {what} through OpenVINO: {why}; use --runtime torch, "
                    "or --runtime auto to fall back by itself")
    logger.warning("%s on PyTorch: OpenVINO unavailable (%s)", what, why)
    return None


def _frontend_failures() -> tuple[type[Exception], ...]:
    """OpenVINO's frontend errors (a TorchScript it cannot convert raises
    OpConversionFailure, a plain Exception), where this OpenVINO has them."""
    try:
        from openvino import frontend
    except ImportError:
        return ()
    return tuple(getattr(frontend, n) for n in ("GeneralFailure", "OpConversionFailure",
                                                 "OpValidationFailure", "NotImplementedFailure")
                 if isinstance(getattr(frontend, n, None), type))


def _cache_key(identity: dict, size: int, mean: float, std: float, ov_version: str) -> str:
    parts = {"identity": identity, "size": size, "mean": mean, "std": std,
             "openvino": ov_version, "torch": torch.__version__, "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _convert(ov, net: nn.Module, size: int, mean: float, std: float):
    from openvino.preprocess import PrePostProcessor
    example = torch.zeros(2, 3, size, size)
    # Tracing takes the plain convolution path of efficientnet.SameConv2d (torch.jit.is_tracing).
    # The tracer warns of every Python branch on a shape (the padding's); the traced shapes
    # are the only ones the model takes (batch apart), so those branches hold.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(net.eval(), example_input=example,
                                 input=[ov.PartialShape([-1, 3, size, size])])
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(mean).scale(std)
    return ppp.build()


def _save(ov, model, path: Path) -> bool:
    """Written to a temporary folder and renamed into place: two servers converting at
    once, or one killed halfway, never leave a half-written model to read. False where
    the cache cannot be written."""
    try:
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.parent.name}.", dir=path.parent.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from the other users of a shared cache
        ov.save_model(model, tmp / path.name, compress_to_fp16=False)
        try:
            os.replace(tmp, path.parent)
        except OSError:  # another process got there first: theirs is the same model
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except OSError as e:  # no writable cache: convert again at the next start
        log.warning("cannot cache the converted encoder in %s: %s", path.parent, e)
        return False
