"""FAISS wrapper against an exact brute-force oracle on small deterministic data."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer.index import vectors
from indexer.network.projection import Projection, fit_pca


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def oracle(db, ids, q, k):
    s = q @ db.T
    order = np.argsort(-s, axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


def test_flat_matches_oracle_and_keeps_ids():
    rng = np.random.default_rng(0)
    db, q = unit(rng, 500, 64), unit(rng, 20, 64)
    ids = np.arange(1000, 1500, dtype=np.int64)[::-1].copy()
    index = vectors.new_index(64)
    vectors.add(index, ids, db)
    got_s, got_i = index.search(q, 5)
    want_s, want_i = oracle(db, ids, q, 5)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)


def test_add_replaces_same_id_and_remove_drops_it():
    rng = np.random.default_rng(1)
    db = unit(rng, 50, 16)
    ids = np.arange(1, 51, dtype=np.int64)
    index = vectors.new_index(16)
    vectors.add(index, ids, db)
    new = unit(rng, 1, 16)
    vectors.add(index, [7], new)
    assert index.ntotal == 50
    np.testing.assert_allclose(index.reconstruct(7), new[0], atol=1e-6)
    assert index.search(new, 1)[1][0, 0] == 7
    assert vectors.remove(index, [7, 999]) == 1
    assert 7 not in set(vectors.stored_ids(index)) and index.ntotal == 49


def test_ivf_factory_trains_and_bad_factory_is_explained():
    rng = np.random.default_rng(2)
    db = unit(rng, 400, 32)
    index = vectors.new_index(32, "IVF4,Flat")
    vectors.train(index, db)
    vectors.add(index, np.arange(400), db)
    assert index.ntotal == 400
    with pytest.raises(ValueError, match="index-factory"):
        vectors.new_index(32, "NoSuchIndex")


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    db = unit(rng, 30, 8)
    index = vectors.new_index(8)
    vectors.add(index, np.arange(30) * 3, db)
    vectors.save(index, tmp_path / "i.faiss")
    for mmap in (False, True):
        back = vectors.load(tmp_path / "i.faiss", mmap=mmap)
        np.testing.assert_array_equal(back.search(db[:3], 1)[1].ravel(), [0, 3, 6])


def test_pca_projection_is_normalised_and_roundtrips(tmp_path):
    rng = np.random.default_rng(4)
    x = unit(rng, 300, 64)
    for n in (300, 10):  # fewer samples than output dims must still be well defined
        p = fit_pca(x[:n], 32, whiten=0.5)
        y = p.apply(x)
        assert y.shape == (300, 32) and np.isfinite(y).all()
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    p.save(tmp_path / "p.npz")
    np.testing.assert_array_equal(Projection.load(tmp_path / "p.npz").apply(x), y)


def test_unwhitened_full_pca_preserves_neighbours():
    # A full-rank rotation without whitening keeps centred cosine ranking exactly.
    rng = np.random.default_rng(5)
    x = unit(rng, 200, 16)
    p = fit_pca(x, 16, whiten=0.0)
    c = x - x.mean(0)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    y = p.apply(x)
    np.testing.assert_array_equal(np.argsort(-(c[:5] @ c.T), 1)[:, :5],
                                  np.argsort(-(y[:5] @ y.T), 1)[:, :5])


def clustered(rng, n, d, centres=50, spread=0.4):
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("preset", sorted(vectors.PRESETS))
def test_presets_tune_to_the_recall_target_against_the_exact_oracle(preset):
    rng = np.random.default_rng(6)
    both = clustered(rng, 6050, 64)
    db, q = both[:6000], both[6000:]  # queries from the same distribution, not indexed
    ids = np.arange(6000, dtype=np.int64) * 7 + 3
    if preset == "ivf-pq":  # 64-d test vectors: PQ16, built by hand the same way
        index, spec = vectors.build(vectors.resolve(preset, len(db)).factory.replace(
            "PQ64", "PQ16"), ids, db)
    else:
        index, spec = vectors.build(preset, ids, db)
    params, recall = spec.search_params, spec.sampled_recall
    assert recall >= vectors.TARGET_RECALL and (params == {}) == (preset == "flat")
    _, got = vectors.Searcher(index, params).search(q, 10)
    # The oracle searches the vectors as stored: SQ/PQ codes round them, and what is
    # tested here is what the search structure (lists probed, graph walked) loses.
    stored_ids, stored = vectors.all_vectors(index)
    _, want = oracle(stored, stored_ids, q, 10)
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert overlap >= 0.95


def test_ivf_pq_reranks_to_the_exact_answer_also_when_memory_mapped(tmp_path):
    # Product codes alone round 64-d vectors to 16 bytes; the exact re-ranking of their
    # best candidates must bring back the true neighbours of the original floats.
    rng = np.random.default_rng(9)
    both = clustered(rng, 6050, 64)
    db, q = both[:6000], both[6000:]
    ids = np.arange(6000, dtype=np.int64) * 5 + 1
    factory = vectors.resolve("ivf-pq", len(db)).factory.replace("PQ64", "PQ16")
    index, spec = vectors.build(factory, ids, db)
    assert spec.search_params["k_factor_rf"] in vectors.REFINE_K_FACTORS
    _, want = oracle(db, ids, q, 10)
    _, got = vectors.Searcher(index, spec.search_params).search(q, 10)
    assert np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)]) >= 0.95
    vectors.save(index, tmp_path / "index.faiss")
    mapped = vectors.load(tmp_path / "index.faiss", mmap=True)
    np.testing.assert_array_equal(vectors.Searcher(mapped, spec.search_params).search(q, 10)[1],
                                  got)
    with pytest.raises(ValueError, match="cannot remove"):
        vectors.remove(index, [1])


def test_ivf_remove_keeps_every_other_id_right():
    # IndexIDMap over IVF renumbers wrongly after remove_ids; IVF keeps its own ids.
    rng = np.random.default_rng(7)
    db = unit(rng, 2000, 32)
    ids = np.arange(2000, dtype=np.int64) * 10 + 7
    index = vectors.new_index(32, "IVF16,Flat")
    vectors.train(index, db)
    vectors.add(index, ids, db)
    assert vectors.remove(index, ids[:500]) == 500
    vectors.set_search_params(index, {"nprobe": 16})
    _, got = index.search(db[500:], 1)
    np.testing.assert_array_equal(got[:, 0], ids[500:])
    np.testing.assert_allclose(index.reconstruct(int(ids[600])), db[600], atol=1e-6)
    assert sorted(vectors.stored_ids(index)) == sorted(ids[500:])


def test_hnsw_refuses_to_remove_and_wrong_knobs_are_explained():
    rng = np.random.default_rng(8)
    db = unit(rng, 300, 16)
    index = vectors.new_index(16, "HNSW16,Flat")
    vectors.add(index, np.arange(300), db)
    with pytest.raises(ValueError, match="cannot remove"):
        vectors.remove(index, [3])
    with pytest.raises(ValueError, match="cannot remove"):
        vectors.add(index, [3], db[:1])  # replacing is removing first
    vectors.add(index, [1000], db[:1])  # a new id is fine
    with pytest.raises(ValueError, match="nprobe"):
        vectors.set_search_params(index, {"nprobe": 4})
    with pytest.raises(ValueError, match="IVF at the top"):
        vectors.new_index(16, "PCA8,IVF4,Flat")


@pytest.mark.parametrize("factory", ["IVF32,SQ8", "HNSW16,Flat"])
def test_sampled_recall_is_the_same_when_the_exact_search_goes_by_chunks(factory, monkeypatch):
    rng = np.random.default_rng(5)
    db = clustered(rng, 3000, 32)
    index, _ = vectors.build(factory, np.arange(3000) * 3 + 1, db)
    knob = {"nprobe": 1} if factory.startswith("IVF") else {"efSearch": 16}
    whole = vectors.sampled_recall(index, params=knob)
    monkeypatch.setattr(vectors, "EXACT_CHUNK", 701)  # chunks that do not divide 3000
    assert vectors.sampled_recall(index, params=knob) == whole
    assert 0.3 < whole < 1.0  # a recall that can tell a wrong neighbour list


def test_ivf_lists_grow_with_the_registry():
    assert vectors.ivf_lists(1_000_000) == 4096 and vectors.ivf_lists(10_000) == 256
    # The k-means sample (TRAIN_SAMPLE) caps them: 39 training points a list at least.
    assert vectors.ivf_lists(10_000_000) == 4096
    assert vectors.ivf_lists(100) == 2  # never fewer than 39 points a list
    assert vectors.ivf_lists(3000) == 64  # and always a power of two


@pytest.mark.parametrize("factory", ["IVF64,SQ8", "IVF64,Flat", "Flat"])
def test_a_streamed_build_is_the_index_built_in_memory(factory):
    """build_streamed sizes each inverted list before filling it (_reserve_lists): the
    index written must be byte for byte the one build() makes with every vector in hand."""
    db = unit(np.random.default_rng(5), 6000, 32)
    ids = np.arange(6000, dtype=np.int64) * 7 + 3

    def chunks():
        return ((ids[s:s + 1000], db[s:s + 1000]) for s in range(0, 6000, 1000))

    streamed, spec = vectors.build_streamed(factory, 6000, 32, chunks)
    in_memory, _ = vectors.build(spec.factory, ids, db)
    assert bytes(faiss.serialize_index(streamed)) == bytes(faiss.serialize_index(in_memory))
    ivf = vectors._ivf(vectors._inner(streamed))
    if ivf is not None:  # and every list holds exactly what assignment sent it
        _, assigned = ivf.quantizer.search(db, 1)
        sizes = [ivf.invlists.list_size(i) for i in range(ivf.nlist)]
        assert sizes == np.bincount(assigned[:, 0], minlength=ivf.nlist).tolist()
