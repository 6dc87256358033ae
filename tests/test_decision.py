"""The decision score against hand-worked rows."""
import numpy as np
import pytest

from indexer import decision


def test_margin_is_top_minus_mean_of_next_five():
    rows = np.array([[0.9, 0.5, 0.4, 0.3, 0.2, 0.1, -1.0],
                     [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]], dtype=np.float32)
    np.testing.assert_allclose(decision.decision_scores(decision.MARGIN, rows), [0.6, 0.0],
                               atol=1e-6)
    np.testing.assert_allclose(decision.decision_scores(decision.TOP, rows), [0.9, 0.6])


def test_short_rows_use_the_runners_up_there_are():
    np.testing.assert_allclose(decision.decision_scores(decision.MARGIN, [[0.8, 0.2, 0.4]]),
                               [0.5], atol=1e-6)
    assert decision.decision_scores(decision.MARGIN, [[0.7]])[0] == pytest.approx(0.7)
    assert decision.neighbours_needed(decision.MARGIN) == 1 + decision.NEIGHBOURS
    assert decision.neighbours_needed(decision.TOP) == 1


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown decision score"):
        decision.decision_scores("median", [[0.5, 0.4]])
