"""Train the similarity head on top of the frozen backbone, copy-detection style.

    python -m indexer.train --images data/train-marks --out indexer/weights/lite0_head.pt

Each mark is seen clean (what a registry holds) and through `views` random edits
(indexer.augment: what queries go through). The backbone is frozen, so the GeM
descriptors of every view are computed once and cached; the head (a linear map
1280 -> 512, started from PCA) is then trained in seconds with:
- InfoNCE between each edited view and the clean marks of its batch (SSCD/SimCLR
  style: the edited copy must be nearer its own mark than any other mark);
- a KoLeo term (Sablayrolles et al.) spreading the clean marks apart, so unrelated
  marks score low and one threshold separates copies from strangers.
A tenth of the marks is held out: the record reports, per epoch, recall@1 of their
edited copies and the TPR at 1% FPR when half of them are left out of the gallery.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexer.augment import random_edit
from indexer.encoder import Head, load_backbone_encoder
from indexer.preprocess import open_image, to_input
from indexer.projection import fit_pca
from indexer.sources import iter_image_files

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    views: int = 6
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3
    temperature: float = 0.05
    koleo: float = 0.05
    dim: int = 512
    val_fraction: float = 0.1
    seed: int = 0


# -- features ------------------------------------------------------------------------
def _views(path: Path, cfg, views: int, seed: int) -> list[np.ndarray]:
    rng = random.Random(f"{seed}:{path.name}")
    im = open_image(path.read_bytes())
    return [to_input(im, cfg)] + [to_input(random_edit(im, rng), cfg) for _ in range(views)]


def cache_features(files: list[Path], views: int, seed: int, cache: Path) -> np.ndarray:
    """(N, 1 + views, D) backbone descriptors: view 0 is the clean mark."""
    key = hashlib.sha256(f"{views}:{seed}:".encode() + "\n".join(
        f.name for f in files).encode()).hexdigest()[:16]
    path = cache / f"features-{key}.npy"
    if path.is_file():
        log.info("using cached features %s", path)
        return np.load(path)
    encoder = load_backbone_encoder()
    per_batch = 8  # marks per encoder call: 8 x (1 + views) images keeps the batch large
    out = []
    with ThreadPoolExecutor(2) as pool, tqdm(total=len(files), unit="mark", desc="views") as bar:
        loaded = pool.map(lambda f: _views(f, encoder.preprocess, views, seed), files)
        chunk: list[list[np.ndarray]] = []
        for arrays in loaded:
            chunk.append(arrays)
            if len(chunk) == per_batch or len(out) + len(chunk) == len(files):
                desc = encoder.descriptors([a for arrs in chunk for a in arrs])
                out.extend(desc.reshape(len(chunk), 1 + views, -1))
                bar.update(len(chunk))
                chunk = []
    feats = np.stack(out).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


# -- training ------------------------------------------------------------------------
def koleo(x: torch.Tensor) -> torch.Tensor:
    """-mean log distance to the nearest neighbour: large when points crowd together."""
    d = torch.cdist(x, x) + torch.eye(len(x), device=x.device) * 1e3
    return -torch.log(d.min(dim=1).values + 1e-6).mean()


def pca_init(head: Head, clean: np.ndarray, dim: int) -> None:
    p = fit_pca(clean, dim, whiten=0.5)
    with torch.no_grad():
        head.proj.weight.copy_(torch.from_numpy(p.matrix.T))
        head.proj.bias.copy_(torch.from_numpy(-p.mean @ p.matrix))


@torch.no_grad()
def evaluate(head: Head, feats: np.ndarray, val: np.ndarray, train: np.ndarray) -> dict:
    """Held-out marks: recall@1 of their edits; TPR at 1% FPR with half of them unknown."""
    emb = head(torch.from_numpy(feats)).numpy()
    known, unknown = val[: len(val) // 2], val[len(val) // 2:]
    gallery_ids = np.concatenate([train, known])
    gallery = emb[gallery_ids, 0]
    def top(ids):
        q = emb[ids, 1:].reshape(-1, emb.shape[-1])
        s = q @ gallery.T
        return gallery_ids[s.argmax(1)], s.max(1), np.repeat(ids, emb.shape[1] - 1)
    got, score, want = top(known)
    _, neg, _ = top(unknown)
    thr = np.quantile(neg, 0.99)
    return {"val_recall@1": float((got == want).mean()),
            "val_tpr@fpr1%": float(((score > thr) & (got == want)).mean()),
            "val_threshold@fpr1%": float(thr)}


def train_head(feats: np.ndarray, cfg: TrainConfig) -> tuple[Head, list[dict]]:
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    order = rng.permutation(len(feats))
    n_val = max(2, int(len(feats) * cfg.val_fraction))
    val, train = order[:n_val], order[n_val:]
    head = Head(feats.shape[-1], cfg.dim)
    pca_init(head, feats[train, 0], cfg.dim)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    x = torch.from_numpy(feats)
    history = [{"epoch": 0, "loss": None} | evaluate(head, feats, val, train)]
    log.info("epoch 0 (PCA): %s", history[-1])
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for batch in np.array_split(rng.permutation(train), max(1, len(train) // cfg.batch_size)):
            views = torch.from_numpy(rng.integers(1, feats.shape[1], len(batch)))
            clean = head(x[batch, 0])
            edited = head(x[batch, views])
            logits = edited @ clean.T / cfg.temperature
            target = torch.arange(len(batch))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            loss = loss + cfg.koleo * koleo(clean)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        history.append({"epoch": epoch, "loss": float(np.mean(losses))}
                       | evaluate(head, feats, val, train))
        log.info("epoch %d: %s", epoch, history[-1])
    return head, history


def save_head(head: Head, path: Path, record: dict) -> None:
    """Tensors only (loadable with weights_only=True) plus a JSON record beside them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().clone() for k, v in head.state_dict().items()}, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m indexer.train", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, required=True, help="folder of clean marks")
    p.add_argument("--out", type=Path, required=True, help="head weights file (.pt)")
    p.add_argument("--describe", default="", help="where the marks came from, for the record")
    p.add_argument("--cache", type=Path, default=Path("out/train-cache"),
                   help="where view descriptors are cached (default: %(default)s)")
    g = p.add_argument_group("training")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        g.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                       help="(default: %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    torch.set_num_threads(torch.get_num_threads())
    files = iter_image_files(args.images)
    t0 = time.perf_counter()
    feats = cache_features(files, cfg.views, cfg.seed, args.cache)
    t_feats = time.perf_counter() - t0
    head, history = train_head(feats, cfg)
    record = {
        "data": {"images": str(args.images), "description": args.describe,
                 "marks": len(files), "views_per_mark": cfg.views},
        "config": asdict(cfg), "history": history,
        "seconds": {"features": round(t_feats, 1),
                    "training": round(time.perf_counter() - t0 - t_feats, 1)},
        "hardware": f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    save_head(head, args.out, record)
    print(f"head written to {args.out}; held-out: {history[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
