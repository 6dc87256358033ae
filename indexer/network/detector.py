"""Where the marks are in a photograph: a small detector over the encoder's own backbone.

A photograph of a sign or a label holds one mark or several among other things; each is
searched on its own. The detector is a CenterNet-style head (a heatmap of mark centres,
each centre's box size) on the stride-16 map of the ImageNet EfficientNet-Lite0 stages
the similarity network leaves untouched (the stem and blocks 0-10), so it costs one
backbone pass over the scene at DETECT_SIZE px and no second network. On a CPU it runs
through OpenVINO where it can, as the encoder does (indexer.network.openvino_runtime):
25 ms on two cores against PyTorch's 35-38, the same heatmaps. Trained on brand-free
scenes only (indexer.network.scenes; python -m indexer.network.train_detector), never on
a photograph of the evaluation sets.

    scene (RGB) -> letterboxed DETECT_SIZE square -> blocks 0-10 (112 x S/16 x S/16)
    -> head -> heatmap, size -> peaks -> boxes in the scene's pixels
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from indexer.network import openvino_runtime
from indexer.network.efficientnet import EfficientNetLite, fold_batchnorms
from indexer.network.encoder import file_sha256, imagenet_lite0
from indexer.network.options import RUNTIMES

log = logging.getLogger(__name__)

DETECTOR_FILE = Path(__file__).resolve().parent / "weights" / "detector.pt"
# The scene's longer side as the detector sees it, and where the backbone is cut:
# blocks 0-10 (ImageNet's, which the similarity network does not retrain), stride 16.
DETECT_SIZE = 512
CUT = 11
STRIDE = 16
CHANNELS = 112
FILL = 127  # the letterbox's grey: the network's zero
# A centre's heatmap value from which it is a mark, and the most marks one picture gives.
MIN_SCORE = 0.3  # for weights whose meta names none (train_detector chooses it)
MAX_MARKS = 6
# A peak whose box overlaps a surer peak's this much is the same mark boxed again (the
# heatmap of a wide mark or of a mark on a card has two or three maxima): it is dropped
# before the MAX_MARKS are counted, so that it neither costs a search nor takes the place
# of another mark (the usual non-maximum suppression, at the usual 0.5).
SAME_MARK_IOU = 0.5


class DetectorError(RuntimeError):
    """The detector's weights are missing or do not fit; the message says how to fix it."""


class DetectorHead(nn.Module):
    """112-channel stride-16 features -> 3 maps: centre logit, log width and log height
    (in cells). No offset map: a box is centred on the heat-weighted mean of the 3x3
    cells around its peak."""

    def __init__(self, in_ch: int = CHANNELS, width: int = 64):
        super().__init__()
        # Whole feature channels dropped in training: the head overfit 6,000 scenes'
        # fixed maps (held-out marks found fell from 0.90 at epoch 5 to 0.85 at 20).
        # No parameters: weights trained without it load as they are.
        self.drop = nn.Dropout2d(0.1)
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
        )
        self.centre = nn.Conv2d(width, 1, 1)
        self.size = nn.Conv2d(width, 2, 1)
        # Few cells are centres: start the heatmap near 1% (CenterNet's prior).
        nn.init.constant_(self.centre.bias, -4.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.drop(x))
        return torch.cat([self.centre(h), self.size(h)], dim=1)


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, width, height in the scene's pixels
    score: float  # the centre's heatmap value in [0, 1]


def letterbox(im: Image.Image, size: int = DETECT_SIZE) -> tuple[np.ndarray, float]:
    """The scene fitted into a `size` square (top-left, grey beyond), and its scale."""
    scale = size / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    canvas = np.full((size, size, 3), FILL, np.uint8)
    canvas[:h, :w] = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR,
                                                         reducing_gap=2.0))
    return canvas, scale


# The backbone's units: (pixel - MEAN) / STD.
MEAN, STD = 127.0, 128.0


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in the backbone's units."""
    return (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - MEAN) / STD


def backbone_lite0() -> EfficientNetLite:
    """The ImageNet EfficientNet-Lite0 of the PyPI package (the detector's frozen part)."""
    return imagenet_lite0()[0]


def iou(a, b) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / max(1e-9, a[2] * a[3] + b[2] * b[3] - inter)


def peaks(out: torch.Tensor, scale: float, image_size: tuple[int, int], min_score: float,
          max_marks: int) -> list[Detection]:
    """One output (3, h, w) -> boxes at the heatmap's local maxima over `min_score`, surest
    first, at most `max_marks`, none over a surer one (SAME_MARK_IOU)."""
    heat = torch.sigmoid(out[0])
    local = F.max_pool2d(heat[None, None], 3, stride=1, padding=1)[0, 0]
    ys, xs = torch.nonzero((heat == local) & (heat >= min_score), as_tuple=True)
    order = torch.argsort(heat[ys, xs], descending=True)
    found: list[Detection] = []
    h, w = heat.shape
    for y, x in zip(ys[order].tolist(), xs[order].tolist()):
        if len(found) == max_marks:
            break
        # The centre as the heat-weighted mean of the 3x3 cells around the peak.
        y0, y1, x0, x1 = max(0, y - 1), min(h, y + 2), max(0, x - 1), min(w, x + 2)
        patch = heat[y0:y1, x0:x1]
        gy, gx = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
        cy = float((patch * gy).sum() / patch.sum()) + 0.5
        cx = float((patch * gx).sum() / patch.sum()) + 0.5
        bw, bh = (float(np.exp(v)) for v in out[1:3, y, x].tolist())
        x0p = (cx - bw / 2) * STRIDE / scale
        y0p = (cy - bh / 2) * STRIDE / scale
        x1p = (cx + bw / 2) * STRIDE / scale
        y1p = (cy + bh / 2) * STRIDE / scale
        x0p, y0p = max(0, round(x0p)), max(0, round(y0p))
        x1p, y1p = min(image_size[0], round(x1p)), min(image_size[1], round(y1p))
        box = (x0p, y0p, x1p - x0p, y1p - y0p)
        if box[2] >= 8 and box[3] >= 8 and all(iou(box, f.box) < SAME_MARK_IOU for f in found):
            found.append(Detection(box, float(heat[y, x])))
    return found


class _Network(nn.Module):
    """The detector's network in one module (blocks 0-10, then the head), for OpenVINO to
    trace."""

    def __init__(self, backbone: EfficientNetLite, head: DetectorHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.stem_to(x, CUT))


class Detector:
    """Finds marks in scenes. Thread-safe (torch modules in inference mode are, and an
    OpenVINO network gives each thread its own request)."""

    def __init__(self, head: DetectorHead, backbone: EfficientNetLite, meta: dict,
                 min_score: float = MIN_SCORE, max_marks: int = MAX_MARKS, sha256: str = ""):
        self.head = head.eval()
        self.sha256 = sha256
        self.backbone = fold_batchnorms(backbone).eval()
        self.meta = meta
        self.size = int(meta.get("size", DETECT_SIZE))
        self.min_score = min_score
        self.max_marks = max_marks
        self._compiled: openvino_runtime.OpenVinoNetwork | None = None

    @property
    def runtime(self) -> str:
        return "torch" if self._compiled is None else "openvino"

    def use_openvino(self, threads: int, required: bool = False) -> bool:
        """Run the network through OpenVINO from now on, converting it or taking the
        conversion from the cache (keyed by the weights' digest); False, with one log line,
        where that cannot be done and PyTorch goes on (`required`: DetectorError instead)."""
        self._compiled = openvino_runtime.adopt(
            "detector", lambda: openvino_runtime.convert(
                _Network(self.backbone, self.head), self.size, MEAN, STD,
                {"detector": self.sha256, "cut": CUT}, max(1, threads)),
            # The digest keys the converted model's cache: without it, another's model.
            None if self.sha256 else "weights not loaded from a file (no digest to key "
            "the converted model by)", required, DetectorError, log)
        return self._compiled is not None

    @property
    def identity(self) -> dict:
        """What a calibration made with it records."""
        return {"sha256": self.sha256, "size": self.size, "min_score": self.min_score,
                "max_marks": self.max_marks}

    @torch.inference_mode()
    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        """Each scene's marks, most certain first."""
        if not images:
            return []
        boxed = [letterbox(im, self.size) for im in images]
        batch = np.stack([b for b, _ in boxed])
        if self._compiled is not None:
            # A copy: the request's output buffer is overwritten by its next inference.
            out = torch.from_numpy(np.array(self._compiled(batch)))
        else:
            out = self.head(self.backbone.stem_to(to_tensor(batch), CUT))
        return [peaks(o, s, im.size, self.min_score, self.max_marks)
                for o, (_, s), im in zip(out, boxed, images)]


_lock = threading.Lock()


@functools.cache
def _load(path: Path, runtime: str, threads: int) -> Detector:
    if not path.is_file():
        raise DetectorError(f"no detector weights at {path}: train them with "
                            "`python -m indexer.network.train_detector` (docs/scenes.md)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = DetectorHead(width=int(state["meta"]["width"]))
    head.load_state_dict(state["head"])
    meta = state["meta"]
    detector = Detector(head, backbone_lite0(), meta,
                        min_score=float(meta.get("min_score", MIN_SCORE)),
                        sha256=file_sha256(path))
    if runtime != "torch":
        detector.use_openvino(threads, required=runtime == "openvino")
    return detector


def load_detector(path: str | Path = DETECTOR_FILE, runtime: str = "auto",
                  threads: int | None = None) -> Detector:
    """The shipped detector, or the weights at `path` (made once per process for each
    runtime and threads, shared). `runtime` as the encoder's (indexer.network.encoder.
    load_encoder): "auto" runs the network through OpenVINO on a CPU where it can, else
    PyTorch; "openvino" insists; "torch" never tries. `threads`: OpenVINO's (default: all
    the CPUs); PyTorch's are the caller's."""
    if runtime not in RUNTIMES:
        raise DetectorError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    with _lock:
        return _load(Path(path).resolve(), runtime, max(1, threads or os.cpu_count() or 1))
