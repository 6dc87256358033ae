"""python -m indexer.network.train_detector: train the mark detector on brand-free scenes.

    python scripts/render_training_marks.py --svg package/svg --meta package/meta.json \
        --out data/detector-marks --count 1500 --wordmarks 700 --seed 7
    npm pack @mdi/svg@7.4.47 && tar xzf mdi-svg-7.4.47.tgz      # for the first line
    python -m indexer.network.train_detector --marks data/detector-marks \
        --scenes 12000 --epochs 25 --out indexer/network/weights/detector.pt \
        --strangers-out indexer/network/weights/scene_strangers
    python -m indexer.scene_calibration   # the scene calibration's negatives, anew

Scenes are made by indexer.network.scenes (drawn surfaces, no photograph); the frozen
backbone's map of each (blocks 0-10, see indexer.network.detector) is computed once and
kept in memory as float16, so the epochs run the small head only. A tenth of the marks,
and the scenes made of them, are held out and scored at the end: the share of their
marks found (a box of IoU >= 0.5) and the false boxes per scene. The epoch kept, and the
centre score the detector keeps from, are chosen on them alone: the lowest score
(SCORES) whose false boxes stay within FALSE_PER_SCENE, and the epoch that finds most
marks at its own such score. A false box costs a search, and the decision over many
regions is calibrated for them (indexer.scene_calibration); a mark not boxed is lost.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from indexer.network.detector import (
    CUT, DETECT_SIZE, STRIDE, DetectorHead, backbone_lite0, iou, letterbox, peaks, to_tensor)
from indexer.network.efficientnet import fold_batchnorms
from indexer.network.scenes import make_scene

log = logging.getLogger(__name__)

# The centre scores tried, and the false boxes a held-out scene may cost at the one chosen.
SCORES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
FALSE_PER_SCENE = 0.15


def _scene(args):
    seed, marks = args
    s = make_scene(random.Random(seed), marks)
    canvas, scale = letterbox(s.image, DETECT_SIZE)
    return canvas, scale, s.boxes, s.image.size


def targets(boxes, scale: float, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet targets: a heatmap with a Gaussian at each box's centre (1 at its cell),
    and each centre cell's log width and height in cells (mask where set)."""
    heat = np.zeros((cells, cells), np.float32)
    size = np.zeros((2, cells, cells), np.float32)
    mask = np.zeros((cells, cells), np.float32)
    gy, gx = np.mgrid[0:cells, 0:cells].astype(np.float32) + 0.5
    for x, y, w, h in boxes:
        cx, cy = (x + w / 2) * scale / STRIDE, (y + h / 2) * scale / STRIDE
        bw, bh = w * scale / STRIDE, h * scale / STRIDE
        sigma = max(0.5, 0.12 * min(bw, bh))
        g = np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * sigma ** 2))
        i, j = min(cells - 1, int(cy)), min(cells - 1, int(cx))
        g[i, j] = 1.0
        heat = np.maximum(heat, g)
        size[:, i, j] = np.log([bw, bh])
        mask[i, j] = 1.0
    return heat, size, mask


def focal_loss(logit: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - heat) ** 4 * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def make_data(marks: list[Path], n: int, seed: int, workers: int, desc: str):
    backbone = fold_batchnorms(backbone_lite0()).eval()
    feats, metas = [], []
    jobs = [(seed * 1_000_003 + i, marks) for i in range(n)]
    chunk: list = []

    def flush() -> None:  # the backbone's map of the scenes made so far, 16 at a time
        feats.append(backbone.stem_to(to_tensor(np.stack([c[0] for c in chunk])), CUT).half())
        metas.extend((c[1], c[2], c[3]) for c in chunk)
        chunk.clear()

    with ProcessPoolExecutor(workers) as pool, torch.inference_mode():
        for item in tqdm(pool.map(_scene, jobs, chunksize=8), total=n, desc=desc):
            chunk.append(item)
            if len(chunk) == 16:
                flush()
        if chunk:
            flush()
    return torch.cat(feats), metas


@torch.inference_mode()
def score(head: DetectorHead, feats: torch.Tensor, metas, min_score: float) -> dict:
    found = total = false = 0
    for i in range(0, len(feats), 64):
        out = head(feats[i:i + 64].float())
        for o, (scale, boxes, size) in zip(out, metas[i:i + 64]):
            dets = peaks(o, scale, size, min_score, 6)
            used = set()
            for b in boxes:
                total += 1
                best = max(range(len(dets)), key=lambda k: iou(dets[k].box, b), default=None)
                if best is not None and best not in used and iou(dets[best].box, b) >= 0.5:
                    found += 1
                    used.add(best)
            false += len(dets) - len(used)
    return {"found": found / max(1, total), "false_per_scene": false / max(1, len(metas)),
            "marks": total, "scenes": len(metas), "min_score": min_score}


def operating_point(head: DetectorHead, feats: torch.Tensor, metas) -> dict:
    """The held-out figures at the lowest score of SCORES whose false boxes a scene stay
    within FALSE_PER_SCENE (the highest score if none does)."""
    rows = []
    for t in SCORES:
        rows.append(score(head, feats, metas, t))
        if rows[-1]["false_per_scene"] <= FALSE_PER_SCENE:
            break
    return rows[-1]


def _merit(point: dict) -> tuple[bool, float]:
    """An epoch within the false-box budget beats one over it; then the more marks found."""
    return point["false_per_scene"] <= FALSE_PER_SCENE, point["found"]


def split_marks(marks: list[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """(held out, trained on): a tenth of the marks, drawn with `seed`, never trained on."""
    marks = sorted(marks)
    random.Random(seed).shuffle(marks)
    return marks[:len(marks) // 10], marks[len(marks) // 10:]


def save_small(marks: list[Path], out: Path, side: int = 128) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in marks:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
            im.save(out / path.name, optimize=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m indexer.network.train_detector",
                                description=__doc__.split("\n")[0])
    p.add_argument("--marks", type=Path, required=True, help="folder of brand-free marks (PNG)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scenes", type=int, default=12000)
    p.add_argument("--held-out-scenes", type=int,
                   help="scenes of the held-out marks (default: a tenth of --scenes, 200 at least)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strangers-out", type=Path,
                   help="also write the held-out marks here, 128 px (the scene calibration's "
                        "brand-free strangers: indexer.scene_calibration.STRANGERS_DIR)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    marks = sorted(args.marks.glob("*.png"))
    if len(marks) < 20:
        p.error(f"{args.marks}: {len(marks)} marks; render some first (see --help)")
    held, train_marks = split_marks(marks, args.seed)
    if args.strangers_out:
        save_small(held, args.strangers_out)
    t0 = time.time()
    feats, metas = make_data(train_marks, args.scenes, args.seed, args.workers, "train scenes")
    held_scenes = args.held_out_scenes or max(200, args.scenes // 10)
    vfeats, vmetas = make_data(held, held_scenes, args.seed + 1, args.workers, "held-out scenes")
    t_data = time.time() - t0
    cells = feats.shape[-1]
    tg = [targets(b, s, cells) for s, b, _ in metas]
    heat = torch.from_numpy(np.stack([t[0] for t in tg]))
    size = torch.from_numpy(np.stack([t[1] for t in tg]))
    mask = torch.from_numpy(np.stack([t[2] for t in tg]))

    head = DetectorHead(feats.shape[1], args.width)
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 32
    steps = args.epochs * math.ceil(len(feats) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps,
                                                pct_start=min(0.5, max(0.1, 3 / steps)))
    history = []
    best: dict | None = None
    t1 = time.time()
    for epoch in range(args.epochs):
        head.train()
        order = torch.randperm(len(feats))
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            out = head(feats[idx].float())
            m = mask[idx]
            l_heat = focal_loss(out[:, 0], heat[idx])
            l_size = (F.l1_loss(out[:, 1:3], size[idx], reduction="none") * m[:, None]).sum() \
                / m.sum().clamp(min=1)
            loss = l_heat + 0.5 * l_size
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        head.eval()
        row = {"epoch": epoch + 1, "loss": total / len(feats),
               "held_out": operating_point(head, vfeats, vmetas)}
        history.append(row)
        log.info("epoch %s", json.dumps(row))
        if best is None or _merit(row["held_out"]) > _merit(best["held_out"]):
            best = row | {"state": {k: v.clone() for k, v in head.state_dict().items()}}
    assert best is not None
    head.load_state_dict(best.pop("state"))
    held_out = {str(t): score(head, vfeats, vmetas, t) for t in SCORES}
    meta = {"size": DETECT_SIZE, "cut": CUT, "stride": STRIDE, "width": args.width,
            "min_score": best["held_out"]["min_score"], "epoch_kept": best["epoch"],
            "scenes": args.scenes, "marks": len(train_marks), "held_out_marks": len(held),
            "epochs": args.epochs, "seed": args.seed, "source": str(args.marks.name),
            "minutes": {"data": round(t_data / 60, 1), "training": round((time.time() - t1) / 60, 1)},
            "held_out": held_out, "history": history}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save({"head": head.state_dict(), "meta": meta}, tmp)
    tmp.replace(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("wrote %s: held-out %s", args.out, json.dumps(held_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
