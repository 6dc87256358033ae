"""Filters on the register's data: the passing ids, and FAISS searches restricted to them,
against an exact IndexFlat oracle over the passing vectors."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from indexer.index import vectors
from indexer.index.filters import Filter, FilterIndex, InvalidFilter, cell_values


@pytest.fixture
def register():
    rows = [(1, {"nice_classes": "9;42", "status": "live"}),
            (2, {"nice_classes": "9", "status": "dead"}),
            (3, {"nice_classes": " 42 ; 35 ", "status": "live"}),
            (5, {"status": "live"})]
    return FilterIndex.from_rows([(i, json.dumps(m)) for i, m in rows])


def test_each_value_of_a_cell_is_matched_on_its_own(register):
    assert cell_values("9;42") == ["9", "42"] and cell_values(None) == []
    assert register.ids([Filter("nice_classes", ("42",))]).tolist() == [1, 3]
    assert register.ids([Filter("nice_classes", ("9", "35"))]).tolist() == [1, 2, 3]  # any


def test_every_filter_must_hold(register):
    both = [Filter("nice_classes", ("9",)), Filter("status", ("live",))]
    assert register.ids(both).tolist() == [1]
    assert register.ids([Filter("status", ("pending",))]).tolist() == []
    assert register.columns == ["nice_classes", "status"]


def test_an_unknown_column_says_which_exist(register):
    with pytest.raises(InvalidFilter, match="'owner'.*nice_classes, status"):
        register.ids([Filter("owner", ("ACME",))])


def _unit(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory, params", [("Flat", {}), ("IVF32,SQ8", {"nprobe": 4}),
                                             ("HNSW16,Flat", {"efSearch": 16}),
                                             ("IVF32,PQ8,RFlat", {"nprobe": 4})])
@pytest.mark.parametrize("share", [0.01, 0.2])
def test_filtered_search_against_an_exact_oracle(factory, params, share):
    rng = np.random.default_rng(0)
    n = 5000
    # families of near copies, as a register's renditions: the structure IVF and HNSW use
    x = _unit(rng, n // 10).repeat(10, axis=0) + 0.3 * _unit(rng, n)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # catalog ids are not positions
    inner = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    inner.train(x)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(x, ids)
    searcher = vectors.Searcher(index, params)
    allowed = np.sort(rng.choice(ids, int(n * share), replace=False))
    q = x[rng.choice(n, 40)] + 0.05 * _unit(rng, 40)
    scores, got = searcher.search(q, 10, allowed)
    assert np.isin(got, allowed).all() and (got >= 0).all()  # only passing, and k of them
    def recall(found, among):
        oracle = faiss.IndexFlatIP(x.shape[1])
        oracle.add(x[(among - 3) // 7])
        truth = among[oracle.search(q, 10)[1]]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])

    # The preset's recall holds under the filter: as good as without one, or exact.
    plain_scores, plain = searcher.search(q, 10)
    unfiltered = recall(plain, ids)
    filtered = recall(got, allowed)
    assert filtered >= min(1.0, unfiltered - 0.05), (filtered, unfiltered)
    if factory == "Flat":
        assert filtered == 1.0
    assert (plain_scores[:, 0] >= scores[:, 0] - 1e-5).all()


def test_fewer_passing_than_k_gives_what_passes():
    rng = np.random.default_rng(1)
    x = _unit(rng, 300)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    index.add_with_ids(x, np.arange(300, dtype=np.int64) + 100)
    searcher = vectors.Searcher(index)
    scores, got = searcher.search(x[:2], 10, np.array([105, 250, 399, 5000]))
    assert sorted(got[0][got[0] >= 0]) == [105, 250, 399] and (got[:, 3:] == -1).all()
    _, none = searcher.search(x[:2], 5, np.array([], dtype=np.int64))
    assert (none == -1).all()
