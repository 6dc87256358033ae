"""Where a photograph's Search spends its time, step by step, in-process.

    python -m bench.scene_stages --index out/eval/logobench-scenes/index \
        --pictures ../shared/logobench-scenes/queries --count 40

Each picture goes through the steps the server takes for one Search (server.service,
server.engine), one after another on one thread, each timed: `locate` (decode, the
photograph test, the detector, each mark's crops preprocessed), `search` (the crops
encoded and searched in one batch), `answer`, `verify` (unsure marks' keypoints lined up
with their first match's), `words` (the marks' words matched), and
within `words` the words read in the marks' boxes (`read_box`) and in the whole
photograph (`read_whole`). Without --pictures, made-up 800x600 scenes of the sample
marks (bench.photos.scene_jpegs). What it prints is where to look first to make a scene
faster; the whole Search through gRPC is timed by bench.speed (`make bench`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from server.engine import Picture, Query, SearchEngine, paired

STAGES = ("locate", "search", "answer", "verify", "words", "read_box", "read_whole", "total")


@contextmanager
def _timed_reading(engine: SearchEngine, spent: dict[str, float]):
    """The engine's two ways of reading words, timed into `spent` while inside."""
    read_box, read_lines = engine.read_box, engine.read_lines

    def timed(name, fn):
        def call(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent[name] += time.perf_counter() - t
        return call

    engine.read_box = timed("read_box", read_box)
    engine.read_lines = timed("read_whole", read_lines)
    try:
        yield
    finally:
        del engine.read_box, engine.read_lines  # the methods again


def stages(engine: SearchEngine, pictures: list[bytes], k: int = 10,
           warmup: int = 3) -> dict[str, list[float]]:
    """Seconds each step took for each picture (the first `warmup` pictures are run
    first and not counted: the first calls load the word reader and warm the caches)."""
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for n, data in enumerate([*pictures[:warmup], *pictures]):
        spent = {"read_box": 0.0, "read_whole": 0.0}
        query = Query(data)
        with _timed_reading(engine, spent):
            t0 = time.perf_counter()
            parts = engine.locate(query)
            t1 = time.perf_counter()
            crops = [c for p in parts for c in p.crops]
            hits = engine.search(crops, k, [query.filters] * len(crops))
            t2 = time.perf_counter()
            found = paired(parts, hits)
            answer = engine.answer(found, None, k, query.filters)
            t3 = time.perf_counter()
            picture = Picture(query.image)  # as engine.respond: decoded once, when needed
            answer = engine.verify(answer, picture)
            t4 = time.perf_counter()
            engine.add_words(answer, query, k, picture)
            t5 = time.perf_counter()
        if n < warmup:
            continue
        for name, seconds in (("locate", t1 - t0), ("search", t2 - t1), ("answer", t3 - t2),
                              ("verify", t4 - t3), ("words", t5 - t4), ("total", t5 - t0),
                              *spent.items()):
            out[name].append(seconds)
    return out


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {s: {"p50_ms": round(1000 * statistics.median(v), 1),
                "mean_ms": round(1000 * statistics.fmean(v), 1)}
            for s, v in times.items() if v}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scene_stages",
                                description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, required=True, help="an index folder (indexer build)")
    p.add_argument("--pictures", type=Path,
                   help="a folder of photographs (default: made-up scenes of the sample marks)")
    p.add_argument("--count", type=int, default=40, help="pictures timed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2,
                   help="the encoder's threads, and a lone call's word reading's")
    args = p.parse_args(argv)

    from indexer.network.detector import load_detector
    from indexer.network.encoder import DEFAULT_ENCODER, load_encoder
    from server.engine import EngineConfig

    if args.pictures is not None:
        files = sorted(f for f in args.pictures.iterdir()
                       if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.count]
        if not files:
            print(f"error: no JPEG or PNG pictures in {args.pictures}", file=sys.stderr)
            return 2
        pictures = [f.read_bytes() for f in files]
    else:
        from PIL import Image

        from bench.photos import scene_jpegs
        samples = Path(__file__).resolve().parents[1] / "samples" / "registry"
        marks = [Image.open(f).convert("RGB") for f in sorted(samples.glob("*.png"))[:40]]
        pictures = scene_jpegs(marks, args.count)
    encoder = load_encoder(DEFAULT_ENCODER, None, "auto", args.threads)
    engine = SearchEngine.open(args.index, encoder, EngineConfig(detector=load_detector(),
                                                                   read_threads=args.threads))
    try:
        figures = summary(stages(engine, pictures))
    finally:
        engine.close()
    print(json.dumps({"pictures": len(pictures), "stages": figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
