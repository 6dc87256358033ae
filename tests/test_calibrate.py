"""Label-free calibration on real marks: edited copies are found, strangers are not."""
from __future__ import annotations

import json

import numpy as np

from indexer import calibrate
from indexer.cli import main
from indexer.index.reader import open_index


def test_edited_copies_score_above_strangers_and_threshold_lies_between(engine, sample_items):
    sources = [(i, str(it.path)) for i, it in enumerate(sample_items, start=1)]
    marks = calibrate.load_marks([sources[i] for i in calibrate.pick_held_out(300, 40, seed=3)])
    own, first, other = calibrate.copy_scores(engine.index.index, engine.encoder, marks, 2,
                                              seed=3)
    assert len(own) == 80
    assert first.mean() >= 0.8                      # edited copies are found first
    assert np.median(own) > np.median(other) + 0.2  # and score well above strangers
    cal = calibrate.calibrate(engine.index.index, engine.encoder, marks, 0.05, 2, seed=3)
    assert np.median(other) < cal.threshold < np.median(own)
    # Clean strangers are held to the target rate too.
    _, _, clean_other = calibrate.copy_scores(engine.index.index, engine.encoder, marks, 0)
    assert (clean_other >= cal.threshold).mean() <= 0.05 and cal.negatives == 120
    assert 0.3 < cal.estimated_tpr <= 1.0 and cal.positives == 80


def test_calibrate_command_writes_a_new_version(index_copy, capsys):
    before = open_index(index_copy).manifest
    held = before.calibration["held_out_ids"]
    assert len(held) == 75  # a quarter of the 300 sample marks, left out of the PCA fit
    assert main(["calibrate", "--index", str(index_copy), "--target-fpr", "0.05"]) == 0
    assert "estimated TPR" in capsys.readouterr().out
    after = open_index(index_copy).manifest
    assert after.version == "v000002" and after.count == before.count
    assert after.calibration["target_fpr"] == 0.05 and after.calibration["positives"] == 150
    assert after.calibration["held_out_ids"] == held  # the same marks the build held out
    assert after.threshold == after.calibration["threshold"]


def test_tiny_registry_falls_back(tmp_path):
    import faiss
    index = faiss.IndexFlatIP(4)
    cal = calibrate.calibrate(index, None, [], 0.01)
    assert cal.threshold == calibrate.FALLBACK_THRESHOLD[cal.decision] and cal.method == "fallback"
    assert json.dumps(cal.to_dict())


def test_stored_vectors_stand_in_for_encoding_only_without_registry_variants(
        tmp_path, engine, encoder, sample_items):
    # Stored as queries are encoded (no registry variants), an indexed mark's vector gives
    # the clean stranger's score that encoding the mark gives; stored as the mean over its
    # variants (the shipped default, `engine`), it does not, so the build encodes them.
    plain = open_index(_build(tmp_path, encoder, sample_items[:60], registry_variants=()))
    for index, pipeline, same in ((plain.index, encoder.with_projection(plain.projection), True),
                                  (engine.index.index, engine.encoder, False)):
        ids = sorted(calibrate.pick_held_out(len(sample_items[:60]), 12, seed=5))
        marks = calibrate.load_marks([(i + 1, str(sample_items[i].path)) for i in ids])
        _, _, encoded = calibrate.copy_scores(index, pipeline, marks, 0)
        stored = calibrate.stored_vectors(index, [mid for mid, _ in marks])
        got = calibrate.nearest_other(index, np.array([mid for mid, _ in marks]), stored)
        assert np.allclose(got, encoded, atol=1e-4) == same


def _build(tmp_path, encoder, items, **kw):
    from indexer.build import BuildOptions, build
    build(items, tmp_path / "idx", encoder, BuildOptions(progress=False, **kw))
    return tmp_path / "idx"
