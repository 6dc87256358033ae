"""Train the similarity network copy-detection style: the last backbone stages and a head.

    python -m indexer.network.train --images data/train-marks --out indexer/network/weights/lite0_similarity.pt

Each mark is seen clean (what a registry holds) and through `views` random edits
(indexer.network.augment: what queries go through), each of them through the encoder's image
views (`image_views`: the colours and the ink, indexer.network.preprocess.VIEWS); the loss is
taken on the descriptor the encoder ships, the views' unit vectors side by side. The
early stages of the backbone stay frozen: ImageNet's edges and textures serve any mark,
and freezing them is what makes training affordable on a CPU. Their output for every
view is computed once and cached (`--cache`); training then runs only the stages from
block `tune_from` on, on 14x14 maps.
1. Head: a linear map 1280 -> 512 of the frozen network's GeM descriptors, started
   from their PCA, trained alone for `head_epochs` (fast: the descriptors are fixed).
2. Fine-tuning: the last stages and the head together for `epochs`, the pretrained
   blocks at a fifth of the head's learning rate. BatchNorm keeps its ImageNet
   statistics: a batch of a hundred icons is no basis for new ones.
With `init`, the head's phase is skipped and fine-tuning goes on from earlier weights
(teaching the shipped descriptor something new, such as photographed marks:
`photographed_share`, augment.photographed).
Both phases minimise InfoNCE between each edited view and the clean marks of its batch
(SSCD/SimCLR style: the copy must be nearer its own mark than any other mark), plus a
KoLeo term (Sablayrolles et al.) spreading the clean marks apart, so that unrelated
marks score low. A tenth of the marks is held out: the record reports, per epoch,
recall@1 of their edited copies and the TPR at 1% FPR when half of them are left out of
the gallery, both for the top similarity and for the margin (indexer.decision).
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
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from indexer import decision
from indexer.network import augment, preprocess, scenes
from indexer.network.encoder import (
    CPU_BATCH,
    TUNED_VIEWS,
    GeM,
    Head,
    file_sha256,
    load_backbone_encoder,
    load_tuning,
    tuned_state,
)
from indexer.network.preprocess import BlankImageError, open_image, to_input
from indexer.network.projection import fit_pca
from indexer.sources import iter_image_files, prefetch

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    views: int = 4
    head_epochs: int = 30
    epochs: int = 6
    batch_size: int = 128
    lr: float = 5e-4  # the head's; the backbone blocks get a fifth of it
    temperature: float = 0.05
    koleo: float = 0.05
    dim: int = 512
    tune_from: int = 11  # first backbone block trained (Lite0: 11 = the 192-channel stage)
    val_fraction: float = 0.1
    seed: int = 0
    image_views: str = ",".join(TUNED_VIEWS)  # what the network sees of each image
    # The share of edited views that are the mark photographed and cut out of the picture
    # as the server cuts out a mark found in a photograph (augment.photographed).
    photographed_share: float = 0.0
    # Weights of an earlier training to start from ("" for ImageNet's): the head's phase
    # is then skipped and fine-tuning goes on from them.
    init: str = ""

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.image_views.split(","))


class Tail(nn.Module):
    """The trained part: backbone blocks from `tune_from` on, head conv, GeM, head."""

    def __init__(self, backbone: nn.Module, tune_from: int, head: Head):
        super().__init__()
        self.backbone, self.tune_from = backbone, tune_from
        self.pool, self.head = GeM(3.0), head

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, V, C, H, W) activations of V views -> (B, V, F) unit GeM descriptors."""
        d = F.normalize(self.pool(self.backbone.head_from(x.flatten(0, 1), self.tune_from)),
                        dim=1)
        return d.reshape(len(x), -1, d.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return joint(self.head(self.descriptors(x)))

    def trainable(self) -> list[nn.Parameter]:
        blocks = nn.ModuleList([*self.backbone._blocks[self.tune_from:],
                                self.backbone._conv_head])
        return [p for name, p in blocks.named_parameters() if "_bn" not in name]

    def train(self, mode: bool = True) -> "Tail":
        super().train(mode)
        for m in self.modules():  # BatchNorm keeps its ImageNet statistics
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def joint(z: torch.Tensor) -> torch.Tensor:
    """(B, V, D) unit vectors per view -> (B, V * D) as the encoder concatenates them."""
    return z.flatten(1) / z.shape[1] ** 0.5


# -- cached activations ----------------------------------------------------------------
# An edit can wash a faint or thin mark out (a light emoji blurred, a hairline shrunk):
# the copy is drawn again, up to this many times, before the clean mark stands in for it.
EDIT_TRIES = 8


def _edited(im: Image.Image, cfg, rng: random.Random, photographed: float = 0.0) -> np.ndarray:
    for _ in range(EDIT_TRIES):
        try:
            return to_input(augment.random_edit(im, rng, photographed), cfg)
        except BlankImageError:
            continue
    return to_input(im, cfg)


def _views(path: Path, cfg, views: int, seed: int, photographed: float = 0.0
           ) -> list[np.ndarray]:
    rng = random.Random(f"{seed}:{path.name}")
    im = open_image(path.read_bytes())
    try:
        clean = to_input(im, cfg)
    except BlankImageError as e:
        raise BlankImageError(f"{path}: {e}; leave it out of --images") from e
    return [clean] + [_edited(im, cfg, rng, photographed) for _ in range(views)]


def cache_key(files: list[Path], cfg: TrainConfig) -> str:
    """What the cached views depend on. The edits' and the preprocessing's code are part
    of it: changing either must not reuse views made the old way."""
    code = b"".join(Path(m.__file__).read_bytes() for m in (augment, preprocess, scenes))
    names = "\n".join(f.name for f in files)
    photographed = f":photographed={cfg.photographed_share}" if cfg.photographed_share else ""
    return hashlib.sha256(f"{cfg.views}:{cfg.seed}:{cfg.tune_from}:{cfg.image_views}{photographed}:"
                          f"{hashlib.sha256(code).hexdigest()}:{names}".encode()).hexdigest()[:16]


def cache_activations(files: list[Path], cfg: TrainConfig, cache: Path) -> torch.Tensor:
    """(N, 1 + views, V, C, H, W) float16 output of the frozen prefix for the V image views
    of each edit; edit 0 is the clean mark."""
    path = cache / f"activations-{cache_key(files, cfg)}.npy"
    if path.is_file():
        log.info("using cached activations %s", path)
        return torch.from_numpy(np.load(path))
    encoder = load_backbone_encoder()
    backbone = encoder.net.backbone
    pre = replace(encoder.preprocess, views=cfg.view_names)
    # Marks per forward pass: about 2 * CPU_BATCH network images, where the CPU is fastest.
    per_batch = max(1, 2 * CPU_BATCH // ((1 + cfg.views) * len(pre.views)))
    out: np.ndarray | None = None
    with ThreadPoolExecutor(2) as pool, tqdm(total=len(files), unit="mark", desc="views") as bar, \
            torch.inference_mode():
        load = partial(_views, cfg=pre, views=cfg.views, seed=cfg.seed,
                       photographed=cfg.photographed_share)
        done, chunk = 0, []
        for _, fut in prefetch(pool, load, files, depth=2 * per_batch):
            chunk.append(fut.result())
            if len(chunk) < per_batch and done + len(chunk) < len(files):
                continue
            x = encoder.input_batch([a for arrs in chunk for a in arrs])
            h = backbone.stem_to(x, cfg.tune_from)  # the frozen part
            h = h.reshape(len(chunk), 1 + cfg.views, len(pre.views), *h.shape[1:])
            h = h.cpu().numpy().astype(np.float16)
            if out is None:
                out = np.zeros((len(files), *h.shape[1:]), np.float16)
            out[done:done + len(chunk)] = h
            done += len(chunk)
            bar.update(len(chunk))
            chunk = []
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return torch.from_numpy(out)


# -- training ------------------------------------------------------------------------
def koleo(x: torch.Tensor) -> torch.Tensor:
    """-mean log distance to the nearest neighbour: large when points crowd together."""
    d = torch.cdist(x, x) + torch.eye(len(x), device=x.device) * 1e3
    return -torch.log(d.min(dim=1).values + 1e-6).mean()


def contrastive_loss(clean: torch.Tensor, edited: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    logits = edited @ clean.T / cfg.temperature
    target = torch.arange(len(clean))
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss + cfg.koleo * koleo(clean)


@torch.no_grad()
def _embed(fn, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[s:s + batch].float()) for s in range(0, len(x), batch)])


@torch.no_grad()
def evaluate(emb: torch.Tensor, val: np.ndarray, train: np.ndarray) -> dict:
    """emb (N, 1 + views, D). Held-out marks: recall@1 of their edits; TPR at 1% FPR with
    half of them left out of the gallery, on the top similarity and on the margin."""
    known, unknown = val[: len(val) // 2], val[len(val) // 2:]
    gallery_ids = np.concatenate([train, known])
    gallery = emb[gallery_ids, 0]

    def search(ids):
        q = emb[ids, 1:].reshape(-1, emb.shape[-1])
        scores, order = (q @ gallery.T).topk(1 + decision.NEIGHBOURS, dim=1)
        return (gallery_ids[order[:, 0].numpy()], np.repeat(ids, emb.shape[1] - 1),
                {r.kind: r.scores(scores.numpy()) for r in RULES})
    got, want, pos = search(known)
    _, _, neg = search(unknown)
    out = {"val_recall@1": float((got == want).mean())}
    for kind in (r.kind for r in RULES):
        thr = np.quantile(neg[kind], 0.99)
        out[f"val_tpr@fpr1%_{kind}"] = float(((pos[kind] > thr) & (got == want)).mean())
    return out


# The training's marks are one rendition each: the plain margin is the family margin there.
RULES = (decision.Rule(decision.TOP), decision.Rule(decision.MARGIN))


def _embed_for_eval(tail: Tail, acts: torch.Tensor, val: np.ndarray) -> torch.Tensor:
    """What `evaluate` reads: every clean mark, and the edited views of the held-out ones."""
    emb = torch.zeros(*acts.shape[:2], tail.head.proj.out_features * acts.shape[2])
    emb[:, 0] = _embed(tail, acts[:, 0])
    v = torch.from_numpy(val)
    emb[v, 1:] = _embed(tail, acts[v, 1:].flatten(0, 1)).reshape(len(val), acts.shape[1] - 1, -1)
    return emb


def _evaluate_head(head: Head, desc: torch.Tensor, val: np.ndarray, train: np.ndarray) -> dict:
    with torch.no_grad():
        return evaluate(joint(head(desc.flatten(0, 1))).reshape(*desc.shape[:2], -1), val, train)


def _batches(rng: np.random.Generator, ids: np.ndarray, size: int) -> list[np.ndarray]:
    return np.array_split(rng.permutation(ids), max(1, len(ids) // size))


def train_head(desc: torch.Tensor, train: np.ndarray, val: np.ndarray, cfg: TrainConfig,
               rng: np.random.Generator) -> tuple[Head, list[dict]]:
    """Phase 1: the head alone on fixed descriptors desc (N, 1 + views, V, 1280)."""
    head = Head(desc.shape[-1], cfg.dim)
    p = fit_pca(desc[train, 0].flatten(0, 1).numpy(), cfg.dim, whiten=0.5)
    with torch.no_grad():
        head.proj.weight.copy_(torch.from_numpy(p.matrix.T))
        head.proj.bias.copy_(torch.from_numpy(-p.mean @ p.matrix))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr * 4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.head_epochs))
    history = [{"phase": "head", "epoch": 0, "loss": None} | _evaluate_head(head, desc, val, train)]
    for epoch in range(1, cfg.head_epochs + 1):
        losses = []
        for batch in _batches(rng, train, cfg.batch_size * 4):
            views = torch.from_numpy(rng.integers(1, desc.shape[1], len(batch)))
            loss = contrastive_loss(joint(head(desc[batch, 0])), joint(head(desc[batch, views])),
                                    cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        history.append({"phase": "head", "epoch": epoch, "loss": float(np.mean(losses))}
                       | _evaluate_head(head, desc, val, train))
    log.info("head trained: %s", history[-1])
    return head, history


def fine_tune(tail: Tail, acts: torch.Tensor, train: np.ndarray, val: np.ndarray,
              cfg: TrainConfig, rng: np.random.Generator) -> list[dict]:
    """Phase 2: the last stages and the head together."""
    groups = [{"params": tail.trainable(), "lr": cfg.lr / 5},
              {"params": list(tail.head.parameters()), "lr": cfg.lr}]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    steps = cfg.epochs * len(_batches(rng, train, cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                total_steps=max(1, steps), pct_start=0.1)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        t0, losses = time.perf_counter(), []
        tail.train()
        for batch in tqdm(_batches(rng, train, cfg.batch_size), desc=f"epoch {epoch}",
                          unit="batch", leave=False):
            views = torch.from_numpy(rng.integers(1, acts.shape[1], len(batch)))
            b = torch.from_numpy(batch)
            z = tail(torch.cat([acts[b, 0], acts[b, views]]).float())
            loss = contrastive_loss(z[:len(batch)], z[len(batch):], cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        tail.eval()
        history.append({"phase": "fine-tune", "epoch": epoch, "loss": float(np.mean(losses)),
                        "seconds": round(time.perf_counter() - t0, 1)}
                       | evaluate(_embed_for_eval(tail, acts, val), val, train))
        log.info("epoch %d: %s", epoch, history[-1])
    return history


def train(acts: torch.Tensor, cfg: TrainConfig) -> tuple[Tail, list[dict]]:
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    order = rng.permutation(len(acts))
    n_val = max(2, int(len(acts) * cfg.val_fraction))
    val, train_ids = order[:n_val], order[n_val:]
    backbone = load_backbone_encoder().net.backbone
    if cfg.init:
        # Going on from earlier weights: they are where this training starts, and where
        # its record starts (epoch 0, measured on this training's held-out views).
        tail = Tail(backbone, cfg.tune_from, load_tuning(backbone, Path(cfg.init))).eval()
        history = [{"phase": "init", "epoch": 0, "loss": None}
                   | evaluate(_embed_for_eval(tail, acts, val), val, train_ids)]
        log.info("starting from %s: %s", cfg.init, history[0])
    else:
        frozen = Tail(backbone, cfg.tune_from, Head(backbone.num_features, cfg.dim)).eval()
        desc = _embed(frozen.descriptors, acts.flatten(0, 1)).reshape(*acts.shape[:3], -1)
        head, history = train_head(desc, train_ids, val, cfg, rng)
        tail = Tail(backbone, cfg.tune_from, head)
    history += fine_tune(tail, acts, train_ids, val, cfg, rng)
    return tail.eval(), history


def save(tail: Tail, path: Path, record: dict) -> None:
    """Tensors only (loadable with weights_only=True) plus a JSON record beside them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(tuned_state(tail.backbone, tail.tune_from, tail.head), tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))


def _sources(images: Path) -> dict | None:
    """The counts scripts/render_training_marks.py wrote beside the marks, if any: what the
    weights were trained on travels with them."""
    try:
        return json.loads((images / "sources.json").read_text())
    except (OSError, ValueError):
        return None


def _first_tuned_block(path: Path) -> int | None:
    """The first backbone block that the weights in `path` hold (tuned_state), if any."""
    if not path.is_file():
        raise SystemExit(f"error: --init {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    blocks = [int(k.split(".")[2]) for k in state if k.startswith("backbone._blocks.")]
    return min(blocks) if blocks else None


def _started_from(path: Path) -> dict:
    """The weights a training went on from, and their own record: what the new weights
    are made of, even once the file they started from is replaced by them."""
    try:
        earlier = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        earlier = None
    return {"path": str(path), "sha256": file_sha256(path), "record": earlier}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m indexer.network.train", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, required=True, help="folder of clean marks")
    p.add_argument("--out", type=Path, required=True, help="weights file (.pt)")
    p.add_argument("--describe", default="", help="where the marks came from, for the record")
    p.add_argument("--cache", type=Path, default=Path("out/train-cache"),
                   help="where the frozen stages' outputs are cached (default: %(default)s)")
    g = p.add_argument_group("training")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        g.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                       help="(default: %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    if cfg.init:
        first = _first_tuned_block(Path(cfg.init))
        if first is not None and first < cfg.tune_from:
            # The cached views are ImageNet's blocks up to tune_from: blocks the earlier
            # training changed below it would be left out of the network trained here.
            p.error(f"--init {cfg.init} was trained from block {first} on: train from "
                    f"there too (--tune-from {first}) or from ImageNet's weights")
    files = iter_image_files(args.images)
    t0 = time.perf_counter()
    acts = cache_activations(files, cfg, args.cache)
    t_cache = time.perf_counter() - t0
    started_from = _started_from(Path(cfg.init)) if cfg.init else None
    tail, history = train(acts, cfg)
    record = {
        "data": {"images": str(args.images), "description": args.describe,
                 "marks": len(files), "views_per_mark": cfg.views,
                 "sources": _sources(args.images)},
        "config": asdict(cfg), "init": started_from, "history": history,
        "seconds": {"frozen_stages": round(t_cache, 1),
                    "training": round(time.perf_counter() - t0 - t_cache, 1)},
        "hardware": f"{_cpu_name()}, {torch.get_num_threads()} torch threads, "
                    f"torch {torch.__version__}",
    }
    save(tail, args.out, record)
    print(f"weights written to {args.out}; held-out: {history[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
