"""The two reference methods LogoBench quotes, run in-process on the same queries.

- raw: 1280-d global-average-pooled EfficientNet-Lite0 ImageNet features of the image
  letterboxed to 224 px (no trimming, no head), cosine similarity;
- phash: 64-bit perceptual hash (imagehash), similarity 1 - Hamming distance / 64.
Each returns result dicts shaped like the client's JSONL, so one scorer serves all;
`exists` is False because neither has a calibrated threshold.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from indexer.network.encoder import load_backbone_encoder
from indexer.network.preprocess import PreprocessConfig, open_image, views_of

K = 10


def _rows(data: Path) -> list[dict]:
    with open(data / "registry.csv", newline="") as f:
        return list(csv.DictReader(f))


def registry_root(data: Path, rows: list[dict] | None = None) -> Path:
    """The folder registry.csv's paths start from: `data` itself where they name
    `registry/<file>` (LogoBench), `data/registry` where they name the bare file (the
    embedded samples, whose manifest `make demo` reads with `--images samples/registry`).
    `rows`: the manifest's rows, where the caller has read them."""
    rows = _rows(data) if rows is None else rows
    return data if not rows or (data / rows[0]["file"]).is_file() else data / "registry"


def _registry(data: Path) -> tuple[list[str], list[Path]]:
    rows = _rows(data)
    root = registry_root(data, rows)
    return [r["serial"] for r in rows], [root / r["file"] for r in rows]


def _results(query_files: list[Path], sims: np.ndarray, serials: list[str]) -> list[dict]:
    order = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    return [{"file": str(f), "exists": False, "error": None,
             "top_score": float(sims[i, order[i, 0]]),
             "matches": [{"serial": serials[j]} for j in order[i]]}
            for i, f in enumerate(query_files)]


def raw_pooled(data: Path, query_files: list[Path], batch_size: int = 64) -> list[dict]:
    encoder = load_backbone_encoder()
    cfg = PreprocessConfig(trim=False)

    @torch.inference_mode()
    def embed(files: list[Path]) -> np.ndarray:
        out = []
        for i in range(0, len(files), batch_size):
            # The whole image letterboxed, as LogoBench's reference protocol has it: no
            # trimming, and no refusing blank images as the service does.
            t = encoder.input_batch([views_of(open_image(f.read_bytes()), cfg)
                                     for f in files[i:i + batch_size]])
            out.append(torch.nn.functional.normalize(
                encoder.net.backbone.features(t).mean(dim=(2, 3)), dim=1).numpy())
        return np.concatenate(out)

    serials, files = _registry(data)
    return _results(query_files, embed(query_files) @ embed(files).T, serials)


def phash(data: Path, query_files: list[Path]) -> list[dict]:
    import imagehash

    def bits(files: list[Path]) -> np.ndarray:
        return np.array([imagehash.phash(open_image(f.read_bytes())).hash.ravel()
                         for f in files], dtype=np.float32)

    serials, files = _registry(data)
    q, r = bits(query_files), bits(files)
    hamming = q @ (1 - r).T + (1 - q) @ r.T
    return _results(query_files, 1.0 - hamming / q.shape[1], serials)
