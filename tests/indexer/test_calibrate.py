"""Label-free calibration on real marks: edited copies are found, strangers are not."""
from __future__ import annotations

import json

import numpy as np
import pytest

from indexer import calibrate, decision
from indexer.cli import main
from indexer.index.reader import open_index
from indexer.network import augment, background


@pytest.fixture(scope="module")
def held_marks(sample_items):
    sources = [(i, str(it.path)) for i, it in enumerate(sample_items, start=1)]
    return calibrate.load_marks([sources[i] for i in calibrate.pick_held_out(300, 40, seed=3)])


def test_edited_copies_score_above_background_marks_and_threshold_lies_between(engine,
                                                                              held_marks):
    index = engine.index.index
    bg = background.for_encoder(engine.encoder)
    assert bg is not None and len(bg) >= 1000  # the shipped set, for the shipped encoder
    copies = calibrate.edited_copies(index, engine.encoder, held_marks, 2, seed=3)
    assert len(copies.marks) == 80
    assert list(copies.edits) == [augment.CYCLE[n % len(augment.CYCLE)] for n in range(80)]
    rule = decision.Rule(decision.FAMILY, calibrate.family_similarity(copies))
    own, first = calibrate.positive_scores(index, copies, rule)
    clean_neg, edited_neg = calibrate.background_scores(index, bg, engine.encoder, rule)
    assert first.mean() >= 0.8                             # edited copies are found first
    assert np.median(own) > np.median(edited_neg) + 0.2    # and stand out far more
    cal = calibrate.calibrate(index, engine.encoder, held_marks, 0.05, 2, seed=3, background=bg)
    assert cal.method == calibrate.METHOD and cal.decision == decision.FAMILY
    assert np.median(edited_neg) < cal.threshold < np.median(own)
    # Both kinds of unregistered mark are held to the target rate, and the estimate says so.
    assert (clean_neg >= cal.threshold).mean() <= 0.05 >= (edited_neg >= cal.threshold).mean()
    assert cal.estimated_fpr <= 0.05 and cal.negatives == 2 * len(bg)
    assert 0.5 < cal.estimated_tpr <= 1.0 and cal.positives == 80
    # The renditions bound is what a typical copy keeps of its own mark.
    assert cal.family_similarity == pytest.approx(np.nanmedian(calibrate.own_similarity(copies)),
                                                  abs=1e-4)


def test_the_copies_go_through_every_edit_in_equal_shares():
    n = len(augment.CYCLE)
    assert augment.CYCLE[0] == "identity" and augment.CYCLE[-1] == "two"
    assert set(augment.CYCLE[1:-1]) == set(augment.EDITS)
    # 40 marks x 2 copies: the i-th copy of all gets edit i of the cycle.
    counts = np.bincount(np.arange(80) % n, minlength=n)
    assert counts.max() - counts.min() <= 1


def test_without_a_background_set_the_calibration_says_so(engine, held_marks):
    cal = calibrate.calibrate(engine.index.index, engine.encoder, held_marks[:20], 0.05, 2,
                              seed=3, background=None)
    assert cal.method == calibrate.LEAVE_ONE_OUT
    text = " ".join(cal.warnings)
    assert "no background set" in text and "40 edited copies" in text


def test_calibration_is_deterministic(engine, held_marks):
    bg = background.for_encoder(engine.encoder)
    a, b = (calibrate.calibrate(engine.index.index, engine.encoder, held_marks[:15], 0.01, 2,
                                seed=0, background=bg) for _ in range(2))
    assert a.to_dict() == b.to_dict()


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
    assert after.decision == decision.FAMILY
    assert after.family_similarity == after.calibration["family_similarity"]


def test_tiny_registry_falls_back(tmp_path):
    import faiss
    index = faiss.IndexFlatIP(4)
    cal = calibrate.calibrate(index, None, [], 0.01)
    assert cal.threshold == calibrate.FALLBACK_THRESHOLD[cal.decision] and cal.method == "fallback"
    assert cal.warnings and json.dumps(cal.to_dict())


@pytest.mark.parametrize("n", [5, 37, 1998, 2000])
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_the_threshold_is_the_lowest_that_holds_the_negatives_to_the_target(n, target):
    # Against a scan of every 4-decimal threshold; np.quantile let 100 of 1,998 through at 5%.
    scores = np.random.default_rng(n).normal(0.1, 0.05, n).astype(np.float32)
    grid = np.arange(-3000, 4001) / 1e4
    holding = [t for t in grid if (scores >= t).sum() <= target * n]
    assert calibrate.holding_to(scores, target) == pytest.approx(min(holding), abs=1e-9)
