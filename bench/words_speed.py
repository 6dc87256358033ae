"""The words of marks, timed (make bench):

    python -m bench.words_speed [--n 1000000] [--out out/bench]

1. Word-element search at scale: `--n` made-up register texts (indexer.words.made_up_word,
   one to three words) written into a catalog as a build writes them (timed), then
   words-only searches (indexer.index.wordindex.search, k=10) of registered texts and of
   texts with one slip: p50 / p99 ms.
2. Reading words in the server: the sample register built and served; one client's
   Search of clean sample marks and of 800x600 photographed scenes (bench.photos), in
   blocks alternating without and with `read_words` (the server reads them anyway for a
   mark that does not exist by its picture): p50 of each and the difference.
Writes words_speed.json in --out; prints the figures.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import load
from bench.photos import scene_jpegs
from bench.procs import run_build, start_server, stop_server
from indexer import words
from indexer.index import wordindex
from indexer.index.catalog import Catalog, Mark

log = logging.getLogger(__name__)
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CHUNK = 50_000


def made_up_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(words.made_up_word(rng) for _ in range(rng.choice((1, 1, 2, 3))))
            for _ in range(n)]


def _slip(text: str, rng: random.Random) -> str:
    i = rng.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def text_search(n: int, queries: int = 200) -> dict:
    texts = made_up_texts(n)
    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog(Path(tmp) / "catalog.sqlite")
        t0 = time.perf_counter()
        for start in range(0, n, CHUNK):
            cat.upsert([Mark(f"W{i:08d}", text=t)
                        for i, t in enumerate(texts[start:start + CHUNK], start)])
        write_s = time.perf_counter() - t0
        rng = random.Random(1)
        asked = rng.sample(texts, queries // 2)
        asked += [_slip(t, rng) for t in rng.sample(texts, queries // 2)]
        wordindex.search(cat, words.words_of(asked[0]), 10)  # warm
        times, found = [], 0
        for q in asked:
            t0 = time.perf_counter()
            hits = wordindex.search(cat, words.words_of(q), 10)
            times.append(time.perf_counter() - t0)
            found += bool(hits)
        cat.close()
    ms = np.array(times) * 1e3
    return {"n": n, "catalog_write_s": write_s, "queries": len(asked),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "answered": found / len(asked)}


def reading(out: Path, rounds: int = 3, calls: int = 30) -> dict:
    index = out / "words-index"
    run_build(SAMPLES / "registry", SAMPLES / "registry.csv", index, quiet=True)
    payloads = load.read_payloads([SAMPLES / "registry", SAMPLES / "queries"])
    scenes = scene_jpegs([Image.open(io.BytesIO(p)) for p in payloads[:20]])
    proc, address, _ = start_server(index, log_path=out / "words-server.log")
    res: dict = {"clean": {"off": [], "on": []}, "scene": {"off": [], "on": []}}
    try:
        for _ in range(rounds):  # interleaved: the machine's drift falls on both sides
            for kind, items in (("clean", payloads), ("scene", scenes)):
                for side, read in (("off", False), ("on", True)):
                    lat = load.latency_ms(address, items, calls=calls, read_words=read)
                    res[kind][side].append(lat["p50_ms"])
    finally:
        stop_server(proc)
    out_ = {}
    for kind, sides in res.items():
        off, on = float(np.median(sides["off"])), float(np.median(sides["on"]))
        out_[kind] = {"p50_ms_default": off, "p50_ms_read_words": on, "added_ms": on - off}
    return out_


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.words_speed",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="registered marks with words")
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--no-reading", action="store_true", help="only the word-element search")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"text_search": text_search(args.n)}
    if not args.no_reading:
        res["reading"] = reading(args.out)
    (args.out / "words_speed.json").write_text(json.dumps(res, indent=2))
    t = res["text_search"]
    print(f"words-only search over {t['n']:,} marks' words: p50 {t['p50_ms']:.2f} ms, "
          f"p99 {t['p99_ms']:.2f} ms ({t['queries']} queries, half with a slip; catalog "
          f"written in {t['catalog_write_s']:.0f} s)")
    for kind, r in res.get("reading", {}).items():
        print(f"{kind} Search p50: {r['p50_ms_default']:.1f} ms as served, "
              f"{r['p50_ms_read_words']:.1f} ms reading its words (+{r['added_ms']:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
