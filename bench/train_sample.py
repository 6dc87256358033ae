"""`python -m bench.train_sample`: what training an IVF index on a sample costs.

A build trains the coarse quantiser and the scalar quantiser's ranges of `ivf-sq8` on
TRAIN_SAMPLE (200,000) vectors sampled from the register, whatever its size
(indexer.index.vectors.build_streamed), so that a register of millions never has every
vector in memory at once. Here, at a size where both run (synthetic vectors shaped like
real descriptors, bench/synthetic.py): the same index trained on the sample and on every
vector, their recall@10 against exact search of the original floats at each nprobe, and
the nprobe each build would tune to. The PCA needs no sample: it is fitted on every mark
from disk (indexer.network.projection.fit_pca_chunks).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import faiss
import numpy as np

from bench import synthetic
from indexer.index import vectors

NPROBES = (8, 16, 32, 64, 128)


def recall_at_10(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, 10)
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    x = synthetic.vectors(args.n, seed=0)
    q = synthetic.vectors(args.queries, seed=1)
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    spec = vectors.resolve("ivf-sq8", args.n)
    out = {"n": args.n, "factory": spec.factory, "sample": vectors.TRAIN_SAMPLE}
    for name, sample in (("sample", vectors.TRAIN_SAMPLE), ("all", args.n)):
        index = vectors.new_index(x.shape[1], spec.factory)
        t = time.perf_counter()
        vectors.train(index, x, sample=sample)
        trained = time.perf_counter() - t
        index.add_with_ids(x, np.arange(args.n, dtype=np.int64))
        params, sampled = vectors.tune(index)
        out[name] = {"train_s": round(trained, 1), "tuned": params,
                     "recall@10": {n: round(recall_at_10(_with(index, n), q, truth), 4)
                                   for n in NPROBES}}
        print(f"trained on {min(sample, args.n)}: {trained:.1f} s, tuned {params}, "
              f"recall@10 by nprobe {out[name]['recall@10']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def _with(index: faiss.Index, nprobe: int) -> faiss.Index:
    vectors.set_search_params(index, {"nprobe": nprobe})
    return index


if __name__ == "__main__":
    sys.exit(main())
