"""The benchmarks' own parts: scoring arithmetic, vector-search rows, the start-up index."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.eval import main as eval_main
from bench.eval import score, tpr_at_fpr
from tests.conftest import ROOT, SAMPLES, sample_queries


def test_score_counts_recall_tpr_fpr(tmp_path):
    queries = {str(tmp_path / f"q{i}"): q for i, q in enumerate([
        {"expected_serial": "A", "transform": "jpeg", "kind": "known"},
        {"expected_serial": "B", "transform": "jpeg", "kind": "known"},
        {"expected_serial": "", "transform": "jpeg", "kind": "unknown"},
        {"expected_serial": "", "transform": "crop", "kind": "unknown"},
    ])}
    def res(i, serials, exists, top):
        return {"file": str(tmp_path / f"q{i}"), "matches": [{"serial": s} for s in serials],
                "exists": exists, "top_score": top, "error": None}
    m = score(queries, [res(0, ["A", "C"], True, 0.9), res(1, ["C", "B"], True, 0.8),
                        res(2, ["A"], True, 0.85), res(3, ["C"], False, 0.1)])
    assert m["recall@1"] == 0.5 and m["recall@10"] == 1.0
    assert m["tpr"] == 0.5 and m["fpr"] == 0.5
    assert m["recall@1_by_transform"] == {"jpeg": 0.5}
    # known tops 0.9, 0.8 vs unknown 0.85, 0.1: 3 of 4 pairs ordered right
    assert m["auc"] == 0.75


def test_tpr_at_fpr_puts_the_threshold_above_the_negatives():
    top = np.array([0.9, 0.7, 0.8, 0.1])
    correct = np.array([True, True, False, False])
    known = np.array([True, True, False, False])
    assert tpr_at_fpr(top, correct, known, 0.0) == 0.5  # only 0.9 is above the 0.8 negative


def test_vector_search_rows_on_a_small_registry():
    from bench import vector_search
    config = vector_search.ScaleConfig(sizes=(3000,), queries=40, presets=("flat", "ivf-sq8"),
                                       milvus_max_n=0)
    rows = {r.method: r for r in vector_search.run(config)}
    assert set(rows) == {"faiss flat", "faiss ivf-sq8", "numpy matmul + argsort",
                         "torch matmul + topk"}
    assert rows["faiss flat"].recall10 == 1.0 and rows["numpy matmul + argsort"].recall10 == 1.0
    assert rows["faiss ivf-sq8"].recall10 >= 0.9 and "nprobe" in rows["faiss ivf-sq8"].params
    assert all(r.qps_b1 > 0 and r.qps_b64 > 0 for r in rows.values())


def test_synthetic_vectors_are_normalised_and_deterministic():
    from bench import synthetic
    a, b = synthetic.vectors(500, seed=1), synthetic.vectors(500, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_synthetic_startup_index_answers_image_queries(tmp_path, encoder):
    # The start-up benchmark's index: synthetic 512-d vectors under the shipped encoder,
    # whose descriptors are wider; the index must still open and answer an image.
    from bench import startup, synthetic
    from server.engine import SearchEngine
    root = tmp_path / "index"
    startup.write_synthetic_index(root, encoder, synthetic.vectors(300, seed=3))
    engine = SearchEngine.open(root, encoder)
    try:
        image = next((SAMPLES / "registry").glob("*.png")).read_bytes()
        hits = engine.search([engine.prepare(image)], 3)[0]
        assert len(hits) == 3 and hits[0].serial.startswith("SYN")
    finally:
        engine.close()


def test_engine_refuses_an_index_of_another_dimension(tmp_path, encoder, monkeypatch):
    from bench import startup, synthetic
    from indexer.index.store import IndexFormatError
    from server.engine import SearchEngine
    root = tmp_path / "index"
    # 512-d vectors and no projection from the encoder's 1024-d descriptors.
    monkeypatch.setattr(startup, "_projection", lambda in_dim, out_dim: None)
    startup.write_synthetic_index(root, encoder, synthetic.vectors(300, seed=3))
    with pytest.raises(IndexFormatError,
                       match="512-d vectors but its encoder gives 1024-d; rebuild"):
        SearchEngine.open(root, encoder)


def test_streamed_build_finds_the_exact_neighbours_chunk_by_chunk(monkeypatch):
    # 7000 vectors stream as four chunks (2000 x 3 + 1000); the centroids train on two.
    from bench import streamed, synthetic
    monkeypatch.setattr(streamed.vectors, "TRAIN_SAMPLE", 4000)
    n, families = 7000, max(10, 7000 // synthetic.FAMILY_SIZE)
    q = synthetic.vectors(30, seed=99, families=families)
    ids = np.arange(n, dtype=np.int64) * 2 + 5
    build = streamed.StreamedBuild(n, q, seed=7, chunk=2000)
    index, spec = build(ids)
    db = synthetic.vectors(n, seed=7, chunk=2000)  # the same stream, held whole: the oracle
    _, want = faiss_exact(db, q)
    np.testing.assert_array_equal(build.truth, ids[want])
    assert index.ntotal == n and "nprobe" in spec.search_params
    flat, ivf = build.rows
    assert flat.qps_b1 > 0 and flat.qps_b64 > 0 and ivf.recall10 >= 0.9


def faiss_exact(db, q, k=10):
    import faiss
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index.search(q, k)


def _small_samples_set(root: Path, distractors: int = 12) -> Path:
    """A LogoBench-style folder in the embedded samples' layout (registry.csv naming bare
    files in registry/): the marks the sample queries expect, a few others, all queries."""
    queries = sample_queries()
    with open(SAMPLES / "registry.csv", newline="") as f:
        registry = list(csv.DictReader(f))
    expected = {q["expected_serial"] for q in queries if q["kind"] == "known"}
    others = [r for r in registry if r["serial"] not in expected][:distractors]
    rows = [r for r in registry if r["serial"] in expected] + others
    (root / "registry").mkdir(parents=True)
    (root / "queries").mkdir()
    for r in rows:
        shutil.copy(SAMPLES / "registry" / r["file"], root / "registry" / r["file"])
    for q in queries:
        shutil.copy(q["path"], root / q["file"])
    for name, table in (("registry.csv", rows), ("queries.csv", queries)):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in table[0] if k != "path"],
                               extrasaction="ignore")
            w.writeheader()
            w.writerows(table)
    return root


def test_eval_scores_the_service_on_a_folder_in_the_samples_layout(tmp_path):
    data = _small_samples_set(tmp_path / "data")
    out = tmp_path / "out"
    assert eval_main(["--data", str(data), "--out", str(out), "--latency-rounds", "3",
                      "--no-baselines"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    service = m["methods"]["service"]
    assert m["indexed"] == len(list((data / "registry").iterdir()))
    assert service["queries"] == len(list((data / "queries").iterdir()))
    assert service["errors"] == 0 and service["recall@1"] >= 0.9
    assert service["recall@1_by_transform"]["identity"] == 1.0
    assert (out / "report.md").read_text().startswith("| service |")
    try:
        import matplotlib  # noqa: F401  (a dev dependency; without it, no plot)
        assert (out / "roc.png").is_file()
    except ImportError:
        assert not (out / "roc.png").exists()


def test_eval_says_what_a_data_folder_lacks(tmp_path, capsys):
    with pytest.raises(SystemExit):
        eval_main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "has no registry.csv or queries.csv" in capsys.readouterr().err


def test_score_counts_any_rendition_of_the_mark_on_a_register_of_families(tmp_path):
    # Two known queries (one answered with a sibling rendition, one with a stranger), one
    # unregistered rendition of a registered mark (`similar`) and one unknown mark.
    rows = [("k1.png", "11", "identity", "known", "11|12"),
            ("k2.png", "21", "blur", "known", "21|22"),
            ("s1.png", "11|12", "identity", "similar", ""),
            ("u1.png", "", "identity", "unknown", "")]
    queries = {str((tmp_path / f).resolve()): dict(zip(
        ("file", "expected_serial", "transform", "kind", "family"), (f, *rest)))
        for f, *rest in rows}
    answers = {"k1.png": ("12", True), "k2.png": ("99", True), "s1.png": ("12", True),
               "u1.png": ("99", False)}
    results = [{"file": str(tmp_path / f), "matches": [{"serial": s}], "exists": e,
                "error": None, "top_score": 0.5, "confidence": 0.5 if e else 0.1}
               for f, (s, e) in answers.items()]
    got = score(queries, results)
    assert got["known"] == 2 and got["unknown"] == 1 and got["similar"] == 1
    assert got["recall@1"] == 0.5 and got["recall@1_exact_mark"] == 0.0
    assert got["tpr"] == 0.5 and got["fpr"] == 0.0
    assert got["similar_recall@1"] == 1.0 and got["similar_exists_with_sibling"] == 1.0


def test_calibration_gap_redoes_the_builds_estimate_edit_by_edit(tmp_path, sample_index):
    from bench import calibration_gap
    from indexer.network.augment import CYCLE

    out = tmp_path / "gap.json"
    assert calibration_gap.main([str(sample_index), "--json", str(out)]) == 0
    gap = json.loads(out.read_text())
    held = gap["held_out"]
    # The same marks, edits and seed as the build: its own estimate, to the digit.
    assert held["tpr"] == pytest.approx(gap["estimated_tpr"], abs=1e-4)
    assert set(held["by_edit"]) == set(CYCLE)
    assert gap["fitted"]["copies"] == held["copies"]
    # Families from a queries.csv: each mark alone in its family counts only its own
    # mark found first, never more than the family bound does.
    from indexer.index.reader import open_index
    index = open_index(sample_index)
    serials = [r.serial for r in index.catalog.refs(index.catalog.all_ids()).values()]
    index.close()
    queries = tmp_path / "queries.csv"
    with open(queries, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "expected_serial", "transform", "kind", "family"])
        w.writerows([f"q{i}.png", s, "identity", "known", s] for i, s in enumerate(serials))
    alone = calibration_gap.run(sample_index, queries, fitted_too=False)
    assert alone["counted_by"] == "the queries' families"
    assert alone["held_out"]["tpr"] <= held["tpr"]


def test_build_scale_measures_each_size_and_resumes_killed_builds_to_the_same_index(tmp_path):
    """bench.build_scale end to end at sizes CI affords: the made-up register, a build per
    size with its peak RSS (the build process's own, not this one's) and rate, and the
    smallest one killed and run again to the same index."""
    from bench.build_scale import main as build_scale_main
    assert build_scale_main(["--sizes", "200", "400", "--shard-size", "64", "--kills", "2",
                             "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "build_scale.json").read_text())
    for n in ("200", "400"):
        size = report["sizes"][n]
        assert size["returncode"] == 0 and 100e6 < size["peak_rss"] < size["rule_bytes"]
        assert size["marks_per_s"] > 0
    assert len(list((tmp_path / "register").rglob("*.png"))) == 400
    killed = report["kill_and_resume"]
    assert killed["identical"] and killed["final_returncode"] == 0
    assert [k["returncode"] for k in killed["kills"]] == [-9, -9]

    # --resume: a size's unfinished build (here killed at its third shard's write) is gone
    # on with, not thrown away, and ends as the uninterrupted build did.
    from bench.build_scale import build_args, contents
    from tests.indexer.test_resume import DIE_ON_CALL
    whole = contents(tmp_path / "index-200")
    shutil.rmtree(tmp_path / "index-200")
    cmd = build_args(tmp_path / "register", tmp_path / "register" / "register-200.csv",
                     tmp_path / "index-200", False, 64)
    died = subprocess.run([sys.executable, "-c", DIE_ON_CALL, "indexer.shards:Checkpoints.write:3",
                           *cmd], cwd=ROOT, capture_output=True)
    assert died.returncode == -9, died.stderr.decode()[-2000:]
    assert build_scale_main(["--sizes", "200", "--shard-size", "64", "--kills", "0", "--resume",
                             "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "build_scale.json").read_text())
    assert report["sizes"]["200"]["resumed_with_shards_done"] == 2
    assert contents(tmp_path / "index-200") == whole


@pytest.mark.slow
def test_build_memory_stays_flat_in_the_registers_size(tmp_path):
    """Peak RSS of `indexer build` (the process's own) at 2,000 and 20,000 made-up marks:
    it grows by the index's codes and the bookkeeping (~1 KB a mark with the training
    sample), not by what the marks were (~98 KB a mark before builds streamed)."""
    from bench.build_scale import build_args, make_register, run_build
    peaks = {}
    for n in (2_000, 20_000):
        manifest = make_register(tmp_path / "register", n)
        r = run_build(build_args(tmp_path / "register", manifest, tmp_path / f"idx{n}", False,
                                 2048), tmp_path / f"build{n}.log", shard_size=2048)
        assert r["returncode"] == 0, (tmp_path / f"build{n}.log").read_text()[-2000:]
        peaks[n] = r["peak_rss"]
    # Where the 20,000-mark build's time went, from its ten shards as they appeared.
    ph = r["phases"]
    assert 0 < ph["first_shard_s"] < r["seconds"] - ph["after_last_shard_s"]
    assert ph["encode_marks_per_s_first_quarter"] > 0 < ph["encode_marks_per_s_last_quarter"]
    per_mark = (peaks[20_000] - peaks[2_000]) / 18_000
    assert per_mark < 5_000, (peaks, per_mark)


def test_scene_stages_times_each_step_of_a_photographs_search(scene_engine):
    from PIL import Image

    from bench import scene_stages
    from bench.photos import scene_jpegs
    marks = [Image.open(f).convert("RGB") for f in sorted((SAMPLES / "registry").glob("*.png"))[:6]]
    times = scene_stages.stages(scene_engine, scene_jpegs(marks, 4), warmup=1)
    assert set(times) == set(scene_stages.STAGES)
    assert all(len(v) == 4 for v in times.values())  # the warm-up picture not counted
    for n in range(4):
        assert times["total"][n] >= times["locate"][n] + times["search"][n] > 0
        assert times["read_box"][n] + times["read_whole"][n] <= times["words"][n]
    assert "read_words" not in vars(scene_engine)  # the engine's own methods again
    figures = scene_stages.summary(times)
    assert figures["total"]["p50_ms"] >= figures["locate"]["p50_ms"]


def test_keypoints_measures_strangers_and_registered_marks_lined_up(scene_engine):
    """bench.keypoints on the sample register: photographed registered marks line up with
    their own mark more often as fewer agreeing matches are asked for, and the shares
    it prints are what it counted."""
    from bench import keypoints
    from indexer.scene_calibration import strangers
    marks = sorted((SAMPLES / "registry").glob("*.png"))
    figures = keypoints.measure(scene_engine, marks, strangers(), pictures=5, seed=1)
    assert figures["negative_pictures"] == figures["positive_pictures"] == 5
    assert 0 < figures["positive_ranked_first"] <= 1
    by = figures["by_inliers"]
    shares = [by[c]["positives_verified"] for c in keypoints.COUNTS]
    assert shares == sorted(shares, reverse=True) and shares[0] > 0
    for c in keypoints.COUNTS:  # the edges' check only takes away
        both = figures["by_inliers_and_edges"][c]
        assert both["positives_verified"] <= by[c]["positives_verified"]
        assert both["negative_pictures_verified"] <= by[c]["negative_pictures_verified"]
        assert all(0 <= v <= 1 for v in both.values())
