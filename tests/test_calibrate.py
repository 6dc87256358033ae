"""Label-free calibration on real marks: edited copies are found, strangers are not."""
from __future__ import annotations

import json

import numpy as np

from indexer import calibrate
from indexer.cli import main
from indexer.index import open_index


def test_edited_copies_score_above_strangers_and_threshold_lies_between(engine, sample_items):
    marks = calibrate.load_marks(
        [(i, str(it.path)) for i, it in enumerate(sample_items, start=1)], 40, seed=3)
    own, first, other = calibrate.copy_scores(engine.index.index, engine.encoder, marks, 2,
                                              seed=3)
    assert len(own) == 80
    assert first.mean() >= 0.8                      # edited copies are found first
    assert np.median(own) > np.median(other) + 0.2  # and score well above strangers
    cal = calibrate.calibrate(engine.index.index, engine.encoder, marks, 0.05, 2, seed=3)
    assert np.median(other) < cal.threshold < np.median(own)
    assert 0.3 < cal.estimated_tpr <= 1.0 and cal.positives == 80


def test_calibrate_command_writes_a_new_version(index_copy, capsys):
    before = open_index(index_copy).manifest
    assert main(["calibrate", "--index", str(index_copy), "--target-fpr", "0.05",
                 "--calibration-marks", "30"]) == 0
    assert "estimated TPR" in capsys.readouterr().out
    after = open_index(index_copy).manifest
    assert after.version == "v000002" and after.count == before.count
    assert after.calibration["target_fpr"] == 0.05 and after.calibration["positives"] == 60
    assert after.threshold == after.calibration["threshold"]


def test_tiny_registry_falls_back(tmp_path):
    import faiss
    index = faiss.IndexFlatIP(4)
    cal = calibrate.calibrate(index, None, [], 0.01)
    assert cal.threshold == calibrate.FALLBACK_THRESHOLD and cal.method == "fallback"
    assert json.dumps(cal.to_dict())
