"""Small queries re-ranked by small copies of the registered marks (indexer.index.lowres)."""
from __future__ import annotations

import io

import faiss
import numpy as np
import pytest
from PIL import Image

from indexer.cli import main
from indexer.index import lowres, store, vectors
from indexer.index.reader import open_index
from indexer.network.preprocess import mark_of, to_input
from tests.conftest import SAMPLES


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_small_queries_are_reranked_by_the_copies_nearest_their_size():
    """Against an exact oracle on deterministic data: a small query's first `depth`
    candidates re-scored by the copy of the nearest size; a large query untouched."""
    rng = np.random.default_rng(0)
    n, d, depth = 300, 16, 20
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # catalog ids need not be positions
    main = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    main.add_with_ids(_unit(rng.normal(size=(n, d))), ids)
    config = lowres.LowResConfig(copy_px=(32, 64), below_px=112, depth=depth)
    copies = [_unit(rng.normal(size=(n, d))) for _ in config.copy_px]
    small = [lowres.new_index(d) for _ in config.copy_px]
    for index, vecs in zip(small, copies):
        vectors.add(index, ids, vecs)
    reranker = lowres.Reranker(small, config)
    q = _unit(rng.normal(size=(3, d)))
    mark_px = [30, 90, 400]  # nearest 32, nearest 64, not small

    scores, got = lowres.search(main.search, q, mark_px, 5, reranker)

    _, cand = main.search(q, depth)
    for row, copy in ((0, 0), (1, 1)):
        sims = copies[copy][(cand[row] - 3) // 7] @ q[row]
        order = np.argsort(-sims)[:5]
        np.testing.assert_array_equal(got[row], cand[row][order])
        np.testing.assert_allclose(scores[row], sims[order], atol=2e-3)  # fp16 codes
    plain_scores, plain = main.search(q, 5)
    np.testing.assert_array_equal(got[2], plain[2])
    np.testing.assert_allclose(scores[2], plain_scores[2])
    # Without a small query, or without small copies, it is the plain search.
    for args in (([400, 200, 112], reranker), (mark_px, None)):
        s, i = lowres.search(main.search, q, args[0], 5, args[1])
        np.testing.assert_array_equal(i, plain)
    # A candidate without its copy (a faulty writer): that query is answered from the main
    # index, the others are still re-ranked, and the process lives on.
    vectors.remove(small[0], cand[0][:1])
    s, i = lowres.search(main.search, q, mark_px, 5, reranker)
    np.testing.assert_array_equal(i[0], plain[0])
    np.testing.assert_array_equal(i[1], got[1])


def test_copy_size_is_the_nearest_by_ratio_and_config_round_trips():
    config = lowres.LowResConfig()
    assert [config.copy_px[config.nearest(px)] for px in (10, 40, 45, 46, 80, 111)] == \
        [32, 32, 32, 64, 64, 64]
    assert lowres.LowResConfig.from_dict(config.to_dict()) == config
    assert lowres.LowResConfig.from_dict({}) is None
    with pytest.raises(ValueError, match="positive pixels"):
        lowres.LowResConfig(copy_px=())


def test_small_copies_keep_the_aspect_and_lose_detail(encoder):
    im = Image.open(SAMPLES / "registry" / "86000000.png").convert("RGB")
    mark = mark_of(im, encoder.preprocess)
    copies = lowres.small_copies(mark, encoder.preprocess, (32, 64))
    full = lowres.small_copies(mark, encoder.preprocess, (10_000,))[0]  # not shrunk
    np.testing.assert_array_equal(full, to_input(im, encoder.preprocess))
    assert copies.shape == (2, *full.shape)
    inked = [(c[0] < 250).any(axis=2) for c in (copies[0], copies[1], full)]
    # The same extent on the canvas (fitted again to the input size) ...
    boxes = [(m.any(axis=0).sum(), m.any(axis=1).sum()) for m in inked]
    assert all(abs(b[0] - boxes[2][0]) <= 12 and abs(b[1] - boxes[2][1]) <= 12 for b in boxes)
    # ... but softer the smaller the copy: less gradient energy (blur spreads each edge
    # over more pixels, and the squares of smaller steps add up to less).
    edges = [(np.diff(c[0].astype(float), axis=1) ** 2).mean()
             for c in (copies[0], copies[1], full)]
    assert edges[0] < edges[1] < edges[2]


def _thumbnail(path, px: int) -> bytes:
    im = Image.open(path).convert("RGB")
    im.thumbnail((px, px), Image.Resampling.BOX)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=75)
    return buf.getvalue()


def test_thumbnail_queries_are_answered_from_the_small_copies(engine):
    paths = sorted((SAMPLES / "registry").glob("*.png"))[::15]  # 20 marks
    queries = [engine.prepare(_thumbnail(p, 48)) for p in paths]
    config = engine.index.reranker.config
    assert all(q.mark_px < config.below_px for q in queries)
    hits = engine.search(queries, 5)
    assert np.mean([h[0].serial == p.stem for h, p in zip(hits, paths)]) >= 0.9
    # The first hit's score is its 32 px copy's similarity, not its main vector's.
    vec = engine.encoder.encode([queries[0].array])[0]
    mid = engine.index.catalog.ids_for([hits[0][0].serial])[hits[0][0].serial]
    copy = engine.index.reranker.indexes[config.nearest(queries[0].mark_px)]
    assert hits[0][0].score == pytest.approx(float(copy.reconstruct(mid) @ vec), abs=1e-3)
    assert hits[0][0].score != pytest.approx(float(engine.index.index.reconstruct(mid) @ vec),
                                             abs=1e-3)
    # A full-size query is answered from the main index: its own vector's similarity.
    full = engine.prepare(paths[0].read_bytes())
    assert full.mark_px >= config.below_px
    top = engine.search([full], 1)[0][0]
    mid = engine.index.catalog.ids_for([top.serial])[top.serial]
    vec = engine.encoder.encode([full.array])[0]
    assert top.score == pytest.approx(float(engine.index.index.reconstruct(mid) @ vec), abs=1e-4)


def test_verify_names_a_mark_without_its_small_copy(index_copy, capsys):
    vdir = open_index(index_copy).path
    name = lowres.file_name(lowres.LowResConfig().copy_px[0])
    small = vectors.load(vdir / name)
    vectors.remove(small, vectors.stored_ids(small)[:1])
    vectors.save(small, vdir / name)
    manifest = store.Manifest.read(vdir / store.MANIFEST)
    manifest.checksums[name] = store.sha256_file(vdir / name)  # as a buggy writer would
    (vdir / store.MANIFEST).write_text(manifest.to_json())
    assert main(["verify", "--index", str(index_copy)]) == 1
    assert f"{name}: 1 marks have no small-copy vector" in capsys.readouterr().out
    (vdir / name).unlink()
    with pytest.raises(store.IndexFormatError, match=f"lacks {name}"):
        open_index(index_copy)
