"""How often keypoints verify a photographed mark's first match (indexer.geometry), on
brand-free photographs: registered marks (rightly ranked first, or not) and strangers.

    python -m bench.keypoints --index out/bf/index --marks data/bf-register \
        --pictures 600 [--strangers DIR]

The register is any index and the folder of its marks (`--marks`, the build's
--images; serials are file stems, as `indexer build` names them without a manifest).
Positives: registered marks photographed one a picture by indexer.network.scenes.
Negatives: the brand-free strangers shipped for the scene calibration
(indexer.scene_calibration), and those in --strangers (brand-free marks in no register,
none in the index), zero, one or two a picture, photographed the same way. Each
picture goes through the engine as the server takes it (locate, search, answer), and
every mark found is compared with its first match by its keypoints, whatever its
decision score. Prints, for each count of agreeing matches (alone, and with the edges'
agreement of geometry.MIN_EDGES), the share of negative pictures where a stranger would
be verified and of registered marks photographed that would be (against their own mark,
ranked first), and the edges' agreement of the marks lined up.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

COUNTS = (4, 6, 8, 10, 12, 16)


def _marks_found(engine, data: bytes, k: int = 10):
    """(mark answer, its alignment with its first match) for every mark found in a
    picture."""
    from server.engine import Picture, Query, paired

    query = Query(data)
    parts = engine.locate(query)
    hits = engine.search([c for p in parts for c in p.crops], k)
    answer = engine.answer(paired(parts, hits), None, k)
    marks = [m for m in answer.marks if m.detected is not None and m.hits]
    return list(zip(marks, engine.alignments(marks, Picture(data)) if marks else []))


def measure(engine, marks: list[Path], strangers: list[Path], pictures: int,
            seed: int = 0) -> dict:
    from tqdm import tqdm

    from indexer import geometry
    from indexer.network.scenes import make_scene
    from indexer.scene_calibration import jpeg

    rng = random.Random(seed)
    neg = []  # per picture: each stranger's alignment with its first match
    for _ in tqdm(range(pictures), unit="stranger picture"):
        found = _marks_found(engine, jpeg(make_scene(rng, strangers, rng.choice([0, 1, 1, 2]))
                                           .image))
        neg.append([a for _, a in found])
    pos = []  # per registered mark ranked first: its alignment with its own mark
    ranked = 0
    for path in tqdm(rng.sample(marks, min(pictures, len(marks))), unit="registered picture"):
        found = _marks_found(engine, jpeg(make_scene(rng, [path], 1).image))
        right = [a for m, a in found if m.hits[0].serial == path.stem]
        ranked += bool(right)
        pos.append(max(right, key=lambda a: (a.inliers, a.edges), default=None))

    def share(fn) -> dict:
        return {"negative_pictures_verified": round(float(np.mean(
                    [any(fn(a) for a in found) for found in neg])), 4),
                "positives_verified": round(sum(a is not None and fn(a) for a in pos)
                                            / max(1, len(pos)), 4)}

    lined = [a.edges for a in pos if a is not None and a.inliers >= geometry.MIN_INLIERS]
    return {
        "negative_pictures": len(neg),
        "positive_pictures": len(pos),
        "positive_ranked_first": round(ranked / max(1, len(pos)), 4),
        "by_inliers": {c: share(lambda a, c=c: a.inliers >= c) for c in COUNTS},
        "by_inliers_and_edges": {c: share(lambda a, c=c: a.inliers >= c
                                          and a.edges >= geometry.MIN_EDGES) for c in COUNTS},
        # where MIN_EDGES comes from: what the registered marks lined up reach
        "positive_edges_at_min_inliers_quantiles": {
            q: round(float(np.quantile(lined, q)), 3) for q in (0.05, 0.1, 0.25, 0.5)
        } if lined else {},
        "negative_edges_at_min_inliers": sorted(round(a.edges, 3) for found in neg
                                                for a in found
                                                if a.inliers >= geometry.MIN_INLIERS),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.keypoints",
                                description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, required=True, help="an index folder (indexer build)")
    p.add_argument("--marks", type=Path, required=True,
                   help="the folder its marks were built from (serials are file stems)")
    p.add_argument("--pictures", type=int, default=600,
                   help="negative and positive pictures each (default: %(default)s)")
    p.add_argument("--strangers", type=Path,
                   help="a folder of more brand-free marks in no register (PNG), beside the "
                        "shipped ones")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from indexer.network.detector import load_detector
    from indexer.network.encoder import DEFAULT_ENCODER, load_encoder
    from indexer.scene_calibration import strangers
    from server.engine import EngineConfig, SearchEngine

    marks = sorted(f for f in args.marks.iterdir() if f.suffix.lower() in (".png", ".jpg"))
    if not marks:
        print(f"error: no PNG or JPEG marks in {args.marks}", file=sys.stderr)
        return 2
    pool = strangers() + (sorted(args.strangers.glob("*.png")) if args.strangers else [])
    engine = SearchEngine.open(args.index, load_encoder(DEFAULT_ENCODER),
                               EngineConfig(detector=load_detector()))
    try:
        figures = measure(engine, marks, pool, args.pictures, args.seed)
    finally:
        engine.close()
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
