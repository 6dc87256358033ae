"""The threshold for marks found in photographs, calibrated on brand-free scenes.

A photographed mark is answered less surely than its file: perspective, light, a card
around it and the camera lower its similarity to the registered mark, and its margin
with it. A stranger's mark in a photograph loses the same way. So marks found in
photographs get a threshold of their own, set the way the marks' threshold is
(indexer.calibrate):

- *Negatives*: photographs of brand-free marks that are in no register (held out of the
  detector's training, shipped in weights/scene_strangers), made by
  indexer.network.scenes on surfaces of its own (no photograph), one or two marks or
  none. Each was taken apart as the server takes a picture apart
  (indexer.network.locate: the detector, each mark's crops) and its crops encoded once;
  their raw descriptors ship beside the weights (weights/scene_background.npz, like the
  background set), so a build only projects and searches them. A picture's score is its
  surest mark's, the surest crop of each: every region searched is one more chance for
  a stranger to match, so the threshold holds the share of *pictures* with a false
  mark to `target_fpr`, not the share of regions.
- *Positives*: the calibration's held-out registered marks, photographed the same way,
  one a picture, encoded at build time: the share found and answered with their own
  mark (or a rendition of it) over the threshold is the estimated TPR for photographs.

The threshold is never below the marks' own, only above it where the many regions of a
picture let more strangers through than the target allows. Strangers made up here are
easier to reject than real marks that are not registered: on LogoBench-scenes the
threshold they set alone (0.1882 for the families register, estimated FPR 0.010 a
picture) let 0.042 of the pictures without a registered mark through (2026-12-04,
docs/scenes.md).

    python -m indexer.scene_calibration --out FILE   # the shipped negatives, made anew
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from indexer import decision
from indexer.calibrate import MIN_MARKS, holding_to, search
from indexer.index import lowres, vectors
from indexer.network.detector import DETECTOR_FILE, Detector, load_detector
from indexer.network.encoder import DEFAULT_ENCODER, WEIGHTS_FILE, Encoder, load_encoder
from indexer.network.locate import locate
from indexer.network.preprocess import Prepared
from indexer.network.scenes import make_scene

log = logging.getLogger(__name__)

STRANGERS_DIR = WEIGHTS_FILE.parent / "scene_strangers"
SCENE_BACKGROUND_FILE = WEIGHTS_FILE.parent / "scene_background.npz"
SCENES = 600  # the shipped negatives
POSITIVES = 60  # photographed registered marks encoded at build time: ~10 s on 2 cores
SEED = 0


@dataclass
class SceneCalibration:
    threshold: float
    target_fpr: float
    estimated_fpr: float  # per picture, on the negatives
    estimated_tpr: float | None  # photographed held-out registered marks
    scenes: int
    positives: int
    method: str = ("brand-free photographs made up by indexer.network.scenes; the "
                   "register's held-out marks photographed the same way")
    detector: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SceneBackground:
    """Raw descriptors of every crop of every mark the detector found in the negatives."""
    descriptors: np.ndarray  # (n, D) float32
    mark_px: np.ndarray  # (n,) each crop's mark size, for the small-copy re-ranking
    picture: np.ndarray  # (n,) which picture
    part: np.ndarray  # (n,) which mark of it
    pictures: int
    identity: dict  # the encoder's
    detector: str  # the detector's sha256

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, descriptors=self.descriptors.astype(np.float16),
                                mark_px=self.mark_px, picture=self.picture, part=self.part,
                                pictures=self.pictures,
                                identity=json.dumps(self.identity, sort_keys=True),
                                detector=self.detector)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "SceneBackground":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["descriptors"].astype(np.float32), z["mark_px"], z["picture"],
                       z["part"], int(z["pictures"]), json.loads(str(z["identity"])),
                       str(z["detector"]))


def strangers() -> list[Path]:
    return sorted(STRANGERS_DIR.glob("*.png"))


def jpeg(im: Image.Image) -> bytes:
    """A made-up scene as a photograph is sent: JPEG bytes."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _crops(encoder: Encoder, detector: Detector, pictures: list[bytes]
           ) -> list[tuple[int, int, Prepared]]:
    """(picture, mark, crop) of every mark the detector finds, as the server cuts them."""
    return [(n, j, crop) for n, data in enumerate(pictures)
            for j, part in enumerate(p for p in locate(data, encoder.preprocess, None, detector)
                                     if p.detected is not None)
            for crop in part.crops]


def make_background(encoder: Encoder, detector: Detector, scenes: int = SCENES,
                    seed: int = SEED, progress: bool = True) -> SceneBackground:
    from tqdm import tqdm

    rng = random.Random(seed)
    pool = strangers()
    found: list[tuple[int, int, Prepared]] = []
    for n in tqdm(range(scenes), disable=not progress, unit="scene"):
        picture = jpeg(make_scene(rng, pool, rng.choice([0, 1, 1, 2])).image)
        found += [(n, j, c) for _, j, c in _crops(encoder, detector, [picture])]
    desc = np.concatenate([encoder.descriptors([c.array for _, _, c in found[i:i + 16]])
                           for i in range(0, len(found), 16)])
    return SceneBackground(desc, np.array([c.mark_px for _, _, c in found], np.int32),
                           np.array([n for n, _, _ in found], np.int32),
                           np.array([j for _, j, _ in found], np.int32), scenes,
                           encoder.identity.to_dict(), detector.sha256)


def background_for(encoder: Encoder, detector: Detector,
                   path: Path = SCENE_BACKGROUND_FILE) -> SceneBackground | None:
    """The shipped negatives, where they were made by this encoder and detector."""
    if not path.exists():
        log.warning("no scene background at %s", path)
        return None
    bg = SceneBackground.load(path)
    if bg.identity != json.loads(json.dumps(encoder.identity.to_dict())) \
            or bg.detector != detector.sha256:
        log.warning("the scene background %s was made by another encoder or detector "
                    "(python -m indexer.scene_calibration makes one)", path)
        return None
    return bg


def _surest(conf: np.ndarray, picture: np.ndarray, part: np.ndarray, top: np.ndarray,
            pictures: int) -> list[list[tuple[float, int]]]:
    """Per picture, per mark: (its surest crop's decision score, that crop's top id)."""
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for c, n, j, t in zip(conf.tolist(), picture.tolist(), part.tolist(), top.tolist()):
        if (n, j) not in best or c > best[(n, j)][0]:
            best[(n, j)] = (c, t)
    out: list[list[tuple[float, int]]] = [[] for _ in range(pictures)]
    for (n, _), v in sorted(best.items()):
        out[n].append(v)
    return out


def _decide(index: faiss.Index, rule: decision.Rule, scores: np.ndarray, ids: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Each search's decision score and top id."""
    conf = rule.scores(scores, vectors.similarity_to_top(index, ids)
                       if rule.needs_vectors else None)
    return conf, ids[:, 0]


def calibrate_scenes(index: faiss.Index, encoder: Encoder, rule: decision.Rule,
                     mark_threshold: float, detector: Detector,
                     marks: list[tuple[int, Image.Image]], target_fpr: float,
                     reranker: lowres.Reranker | None = None, positives: int = POSITIVES,
                     seed: int = SEED) -> SceneCalibration | None:
    """`encoder`: paired with the index's projection; `marks`: held-out registered marks
    (id, image) for the positives. None where the shipped negatives do not fit this
    encoder and detector."""
    if index.ntotal < MIN_MARKS:
        log.warning("only %d marks: photographs are decided with the marks' threshold",
                    index.ntotal)
        return None
    bg = background_for(encoder, detector)
    if bg is None:
        log.warning("photographs are decided with the marks' threshold")
        return None
    neg = np.full(bg.pictures, -1.0, np.float32)  # no mark found: nothing to say yes to
    if len(bg.descriptors):
        vecs = np.ascontiguousarray(encoder.project(bg.descriptors), dtype=np.float32)
        conf, top = _decide(index, rule, *lowres.search(index.search, vecs, bg.mark_px,
                                                        rule.depth(), reranker))
        for n, found in enumerate(_surest(conf, bg.picture, bg.part, top, bg.pictures)):
            if found:
                neg[n] = max(c for c, _ in found)
    threshold = max(mark_threshold, holding_to(neg, target_fpr))
    tpr, used = None, 0
    if marks and positives > 0:
        rng = random.Random(seed)
        picked = marks[:positives]
        crops = _crops(encoder, detector, [jpeg(make_scene(rng, [im], 1).image)
                                           for _, im in picked])
        right = np.zeros(len(picked), bool)
        if crops:
            conf, top = _decide(index, rule, *search(index, encoder, [c for _, _, c in crops],
                                                     rule.depth(), reranker))
            found = _surest(conf, np.array([n for n, _, _ in crops]),
                            np.array([j for _, j, _ in crops]), top, len(picked))
            for n, ((mid, _), marks_found) in enumerate(zip(picked, found)):
                right[n] = any(c >= threshold
                               and vectors.renditions(index, t, mid, rule.family_similarity)
                               for c, t in marks_found)
        tpr, used = round(float(right.mean()), 4), len(picked)
    fpr = round(float((neg >= threshold).mean()), 4)
    log.info("photographs: threshold %.4f (marks' %.4f) from %d brand-free pictures, estimated "
             "FPR %.3f a picture, TPR %s on %d photographed registered marks", threshold,
             mark_threshold, bg.pictures, fpr, tpr, used)
    return SceneCalibration(threshold, target_fpr, fpr, tpr, bg.pictures, used,
                            detector=detector.identity)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m indexer.scene_calibration",
                                description="Make the scene calibration's negatives.")
    p.add_argument("--out", type=Path, default=SCENE_BACKGROUND_FILE)
    p.add_argument("--scenes", type=int, default=SCENES)
    p.add_argument("--encoder", default=DEFAULT_ENCODER)
    p.add_argument("--detector", type=Path, default=DETECTOR_FILE)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not strangers():
        print(f"error: no brand-free marks in {STRANGERS_DIR}", file=sys.stderr)
        return 2
    encoder, detector = load_encoder(args.encoder), load_detector(args.detector)
    bg = make_background(encoder, detector, args.scenes)
    bg.save(args.out)
    print(f"{len(bg.descriptors)} crops of {bg.pictures} brand-free pictures encoded by "
          f"{encoder.identity.short()} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
