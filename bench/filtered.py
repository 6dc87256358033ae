"""Filtered search (indexer.index.filters) against unfiltered, at scale.

    python -m bench.filtered [--n 1000000] [--presets flat,ivf-sq8] [--shares 0.01,0.1]

On synthetic vectors (bench.synthetic), each preset built as `indexer build` builds it;
a filter is a random share of the register (as one Nice class or one status would be).
For each share: queries/s at batch 1 and 64 through vectors.Searcher with the passing ids
as a selector, and recall@10 against exact search over the passing vectors alone; the
unfiltered row is the same index without a selector, against exact search over all.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from bench import synthetic
from bench.vector_search import K, qps, recall
from indexer.index import vectors

log = logging.getLogger(__name__)


@dataclass
class FilteredRow:
    preset: str
    n: int
    share: float  # of the register passing the filter; 1.0: no filter
    passing: int
    qps_b1: float
    qps_b64: float
    recall10: float


def exact_among(db: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    oracle = faiss.IndexFlatIP(db.shape[1])
    oracle.add(db[ids])
    return ids[oracle.search(queries, K)[1]]


def run(n: int, presets: list[str], shares: list[float], queries: int = 200,
        on_row=None) -> list[FilteredRow]:
    on_row = on_row or (lambda row: None)
    both = synthetic.vectors(n + queries, seed=n)
    db, q = both[:n], np.ascontiguousarray(both[n:])
    rng = np.random.default_rng(0)
    subsets = {s: np.sort(rng.choice(n, int(n * s), replace=False)) for s in shares}
    truths = {1.0: exact_among(db, q, np.arange(n))}
    truths |= {s: exact_among(db, q, ids) for s, ids in subsets.items()}
    rows = []
    for preset in presets:
        t0 = time.perf_counter()
        index, spec = vectors.build(preset, np.arange(n), db)
        log.info("%s built in %.0f s", preset, time.perf_counter() - t0)
        searcher = vectors.Searcher(index, spec.search_params)
        for share in (1.0, *shares):
            allowed = subsets.get(share)
            search = (lambda x: searcher.search(x, K)) if allowed is None else \
                (lambda x, a=allowed: searcher.search(x, K, a))
            row = FilteredRow(preset, n, share, n if allowed is None else len(allowed),
                              qps(search, q, 1), qps(search, q, 64),
                              recall(search(q)[1], truths[share]))
            rows.append(row)
            on_row(row)
    return rows


def markdown(rows: list[FilteredRow]) -> str:
    lines = ["| N | preset | passing the filter | QPS b1 | QPS b64 | recall@10 vs exact "
             "(filtered) search |", "|---|---|---|---|---|---|"]
    for r in rows:
        share = "no filter" if r.share == 1.0 else f"{r.share:.0%} ({r.passing:,})"
        lines.append(f"| {r.n:,} | {r.preset} | {share} | {r.qps_b1:.1f} | {r.qps_b64:.1f} | "
                     f"{r.recall10:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.filtered",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--presets", default="flat,ivf-sq8")
    p.add_argument("--shares", default="0.01,0.1")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = run(args.n, args.presets.split(","), [float(s) for s in args.shares.split(",")],
               args.queries, on_row=lambda r: log.info("%s", r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
