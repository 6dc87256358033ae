"""The decision scores against hand-worked rows."""
import numpy as np
import pytest

from indexer import decision

MARGIN = decision.Rule(decision.MARGIN)
TOP = decision.Rule(decision.TOP)


def test_margin_is_top_minus_mean_of_next_five():
    rows = np.array([[0.9, 0.5, 0.4, 0.3, 0.2, 0.1, -1.0],
                     [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]], dtype=np.float32)
    np.testing.assert_allclose(MARGIN.scores(rows), [0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(TOP.scores(rows), [0.9, 0.6])


def test_short_rows_use_the_runners_up_there_are():
    np.testing.assert_allclose(MARGIN.scores([[0.8, 0.2, 0.4]]), [0.5], atol=1e-6)
    assert MARGIN.scores([[0.7]])[0] == pytest.approx(0.7)
    assert MARGIN.depth() == 1 + decision.NEIGHBOURS and TOP.depth() == 1


def test_family_margin_skips_the_top_matchs_renditions():
    # A registered mark whose two siblings (0.85 and 0.8 like the top match) are indexed
    # too: the plain margin collapses, the family margin does not.
    scores = [[0.9, 0.82, 0.8, 0.3, 0.3, 0.2, 0.2, 0.2, 0.1]]
    to_top = [[1.0, 0.85, 0.8, 0.2, 0.1, 0.3, 0.2, 0.1, 0.0]]
    family = decision.Rule(decision.FAMILY, family_similarity=0.75)
    assert MARGIN.scores(scores)[0] == pytest.approx(0.9 - (0.82 + 0.8 + 0.3 + 0.3 + 0.2) / 5)
    assert family.scores(scores, to_top)[0] == pytest.approx(0.9 - (0.3 + 0.3 + 0.2 + 0.2 + 0.2) / 5)
    # Where no hit is that close to the top one, it is the plain margin.
    strict = decision.Rule(decision.FAMILY, family_similarity=0.99)
    assert strict.scores(scores, to_top)[0] == pytest.approx(MARGIN.scores(scores)[0])
    # A family that fills the whole row leaves the top score itself.
    assert family.scores([[0.9, 0.8]], [[1.0, 0.9]])[0] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="similarity to the top hit"):
        family.scores(scores)


def test_unknown_or_incomplete_rules_are_refused():
    with pytest.raises(ValueError, match="unknown decision score"):
        decision.Rule("median")
    with pytest.raises(ValueError, match="family_similarity"):
        decision.Rule(decision.FAMILY)
    assert decision.rule_of(decision.MARGIN, 0.7) == MARGIN  # the bound only means something for FAMILY
