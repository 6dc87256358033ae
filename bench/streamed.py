"""Vector search at N whose float vectors do not fit in memory: the ivf-sq8 preset, built
from a stream of chunks, against exact search streamed the same way.

`python -m bench.streamed --n 10000000 --out out/bench-10m` (`make bench-10m`). At 10 M
the floats take 20.5 GB: on a 24 GB machine neither the flat preset nor the in-memory
benchmark (bench.vector_search, which holds every N's floats) fits, and neither does
ivf-pq, whose exact re-ranking keeps the floats too. ivf-sq8 keeps 512 bytes a vector.

One pass over the synthetic vectors (bench.synthetic.chunks, the same generator as the
smaller sizes), a chunk at a time:
- exact search of the held-out queries against the chunk (faiss.knn), merged into the
  running top 10 (faiss.ResultHeap): the oracle for recall@10, and, timed apart at batch
  1 and 64, what exact search costs at this N ("flat, streamed");
- the chunk added to the index, whose centroids were trained on the first
  vectors.TRAIN_SAMPLE of the stream, as `indexer build` trains on a sample.
nprobe is then tuned as `build` tunes it (vectors.tune; its exact search goes by chunks
too), the index is measured, written as a real index directory (catalog, manifest,
checksums) and the server is started on it, read and memory-mapped.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench import startup, synthetic
from bench.vector_search import K, Row, qps, recall
from indexer.index import vectors
from indexer.network.encoder import load_encoder

log = logging.getLogger(__name__)

PRESET = "ivf-sq8"


class StreamedBuild:
    """`build(ids)` for startup.write_index_dir: streams the vectors into the index and
    the exact oracle, tunes and measures the index; the rows are kept in `rows`."""

    def __init__(self, n: int, queries: np.ndarray, seed: int, chunk: int = 50_000):
        self.n, self.queries, self.seed, self.chunk = n, queries, seed, chunk
        self.rows: list[Row] = []
        self.truth = np.zeros((0, K), np.int64)  # ids of each query's exact top K

    def __call__(self, ids: np.ndarray) -> tuple[faiss.Index, vectors.IndexSpec]:
        t0 = time.perf_counter()
        spec = vectors.resolve(PRESET, self.n)
        index = vectors.new_index(synthetic.DIM, spec.factory)
        heap = faiss.ResultHeap(len(self.queries), K, keep_max=True)
        exact_s = {1: 0.0, 64: 0.0}
        pending: list[tuple[int, np.ndarray]] = []
        for s, x in synthetic.chunks(self.n, seed=self.seed, chunk=self.chunk):
            if index.is_trained:
                ready = [(s, x)]
            else:  # the first chunks wait until there are enough of them to train on
                pending.append((s, x))
                if s + len(x) < min(self.n, vectors.TRAIN_SAMPLE):
                    continue
                log.info("training %s on the first %d vectors", spec.factory, s + len(x))
                vectors.train(index, np.concatenate([c for _, c in pending]))
                ready, pending = pending, []
            for start, chunk in ready:
                self._stream(index, heap, exact_s, ids[start:start + len(chunk)], chunk)
            if (s + len(x)) % 1_000_000 == 0:
                log.info("%d vectors streamed", s + len(x))
        heap.finalize()
        self.truth = heap.I
        log.info("tuning nprobe")
        spec.search_params, spec.sampled_recall = vectors.tune(index)
        build_s = time.perf_counter() - t0 - sum(exact_s.values())
        self.rows.append(Row("faiss flat (exact, streamed by chunks)", self.n, 0.0,
                             self.n * synthetic.DIM * 4 / 1e6, 1 / exact_s[1],
                             64 / exact_s[64], 1.0,
                             note="not built: its floats do not fit in memory; faiss.knn "
                                  f"over each {self.chunk // 1000}k chunk, summed"))
        self.rows.append(self.measure(index, spec, build_s))
        return index, spec

    def _stream(self, index: faiss.Index, heap: faiss.ResultHeap, exact_s: dict[int, float],
                ids: np.ndarray, x: np.ndarray) -> None:
        """One chunk into the exact oracle, the exact-search timings and the index."""
        scores, rows = faiss.knn(self.queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(rows >= 0, ids[rows], -1))
        for b in exact_s:
            t = time.perf_counter()
            faiss.knn(self.queries[:b], x, K, metric=faiss.METRIC_INNER_PRODUCT)
            exact_s[b] += time.perf_counter() - t
        index.add_with_ids(x, ids)

    def measure(self, index: faiss.Index, spec: vectors.IndexSpec, build_s: float) -> Row:
        """The memory is filled in from the written file (serialising 10 M here would
        take another 5 GB)."""
        searcher = vectors.Searcher(index, spec.search_params)
        row = Row(f"faiss {PRESET}", self.n, build_s,
                  params=spec.search_params | {"factory": spec.factory})
        row.recall10 = recall(searcher.search(self.queries, K)[1], self.truth)
        row.qps_b1 = qps(lambda q: searcher.search(q, K), self.queries, 1)
        row.qps_b64 = qps(lambda q: searcher.search(q, K), self.queries, 64)
        return row


def run(n: int, queries: int = 200, seed: int | None = None) -> dict:
    seed = n if seed is None else seed
    families = max(10, n // synthetic.FAMILY_SIZE)  # the queries come from the same families
    q = synthetic.vectors(queries, seed=seed + 1, families=families)
    build = StreamedBuild(n, q, seed)
    encoder = load_encoder()
    with tempfile.TemporaryDirectory(prefix="bench-streamed-") as tmp:
        written = startup.write_index_dir(Path(tmp) / "index", encoder, n, synthetic.DIM,
                                          build)
        log.info("written: %s", written)
        build.rows[-1].memory_mb = written["index_mb"]
        runs = [startup.time_startup(Path(tmp) / "index", mmap) for mmap in (False, True)]
    return {"n": n, "queries": queries, "vector_search": [r.to_dict() for r in build.rows],
            "startup": {"n": n, "preset": PRESET, **written, "runs": runs}}


def markdown(res: dict) -> str:
    lines = [f"Vector search at N = {res['n']:,} ({res['queries']} queries, recall@10 vs "
             "exact search over the original floats)", "",
             "| method | build s | memory MB | QPS b1 | QPS b64 | recall@10 | params |",
             "|---|---|---|---|---|---|---|"]
    for r in res["vector_search"]:
        lines.append(f"| {r['method']} | {r['build_s']:.0f} | {r['memory_mb']:.0f} | "
                     f"{r['qps_b1']:.1f} | {r['qps_b64']:.1f} | {r['recall10']:.3f} | "
                     f"{r['params'] or r['note']} |")
    st = res["startup"]
    lines += ["", f"Server start-up with it (index file {st['index_mb']:.0f} MB, written in "
              f"{st['write_s']:.0f} s):", "", "| load | start-up s | RSS MB |", "|---|---|---|"]
    lines += [f"| {'mmap' if r['mmap'] else 'read'} | {r['startup_s']:.2f} | {r['rss_mb']:.0f} |"
              for r in st["runs"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streamed",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000_000, help="vectors (default: %(default)s)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("out/bench-10m"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    res = run(args.n, args.queries)
    res["wall_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(res, indent=2))
    report = markdown(res)
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
