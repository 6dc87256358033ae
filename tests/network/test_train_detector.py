"""Training the detector: the epoch kept and its centre score are the held-out scenes'
choice, and the detector loads with that score."""
from __future__ import annotations

import json

from indexer.network import train_detector
from indexer.network.detector import load_detector
from indexer.scene_calibration import STRANGERS_DIR


def test_a_short_training_keeps_its_best_epoch_and_the_score_it_chose(tmp_path):
    out = tmp_path / "detector.pt"
    assert train_detector.main(["--marks", str(STRANGERS_DIR), "--out", str(out),
                                "--scenes", "24", "--held-out-scenes", "16", "--epochs", "3",
                                "--workers", "1"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["min_score"] in train_detector.SCORES
    assert [row["epoch"] for row in meta["history"]] == [1, 2, 3]
    kept = meta["history"][meta["epoch_kept"] - 1]["held_out"]
    assert train_detector._merit(kept) == max(train_detector._merit(row["held_out"])
                                              for row in meta["history"])
    assert kept["min_score"] == meta["min_score"]
    # Each epoch's point is the lowest score within the false-box budget, or the last tried.
    for row in meta["history"]:
        point = row["held_out"]
        assert point["false_per_scene"] <= train_detector.FALSE_PER_SCENE \
            or point["min_score"] == train_detector.SCORES[-1]
    assert load_detector(out).min_score == meta["min_score"]
