"""The existence decision: which number of a search is compared with the threshold.

Raw cosine similarity is a poor yes/no on its own. Edits (blur, noise, a photo) lower
a copy's similarity to its own mark, while an unregistered mark in a crowded style
(letters, circles, shields) scores high against its registered look-alikes: the two
populations overlap. What tells them apart is how far the best match stands out
from the next ones. A copy's own mark stands far above the runners-up; a stranger's
best match is one look-alike among several at nearly the same score.

So the decision score is a *margin*: the top similarity minus the mean of the next
`NEIGHBOURS` similarities (the score normalisation used in copy detection, e.g. the
DISC 2021 winners, with the registry as its own background set). On LogoBench it
raised the TPR at 1% FPR from 0.49 to 0.71 with the same vectors.

Real registers hold the same mark several times: in colour and in one colour, with
and without its words. Those renditions of the top match are not runners-up: a
registered mark whose siblings are registered too would otherwise never stand out.
The *family margin* (`FAMILY`) skips them: its runners-up are the next hits that are
less similar to the top match than `family_similarity`, a bound the calibration
measures on the registry itself (what an edited copy typically keeps of its own mark:
two registered marks closer than that are the same mark to this service).

Indexes built before the margin carry a threshold on the top similarity itself
(`TOP`), and those built before the family margin one on the plain margin
(`MARGIN`); their manifests keep working as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP = "top"
MARGIN = "margin"
FAMILY = "family-margin"
KINDS = (TOP, MARGIN, FAMILY)
NEIGHBOURS = 5  # runners-up averaged into the margin
# Hits a family-margin search looks at: the top match's renditions, then NEIGHBOURS
# others. Registers file a mark 2-6 times; a family larger than this leaves fewer
# runners-up, never none (the margin is then taken over those there are).
FAMILY_DEPTH = 32


@dataclass(frozen=True)
class Rule:
    """What the threshold applies to. `family_similarity`: for FAMILY, the similarity to
    the top match from which a hit counts as one of its renditions."""
    kind: str = TOP
    family_similarity: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown decision score {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind == FAMILY and self.family_similarity is None:
            raise ValueError("the family margin needs family_similarity")

    @property
    def needs_vectors(self) -> bool:
        """Whether `scores` needs the hits' similarities to the top match."""
        return self.kind == FAMILY

    def depth(self) -> int:
        """How many results a search must return for the decision score to be exact."""
        return {TOP: 1, MARGIN: 1 + NEIGHBOURS, FAMILY: FAMILY_DEPTH}[self.kind]

    def describe(self) -> str:
        if self.kind == MARGIN:
            return f"top similarity minus the mean of the next {NEIGHBOURS}"
        if self.kind == FAMILY:
            return (f"top similarity minus the mean of the next {NEIGHBOURS} that are not "
                    f"renditions of it (similarity to it under {self.family_similarity:.4f})")
        return "top similarity"

    def family(self, to_top: np.ndarray) -> np.ndarray:
        """(n, m) similarities of each row's hits to the row's top hit -> True where a
        hit is a rendition of the top match (the top hit itself included)."""
        same = np.asarray(to_top) >= self.family_similarity
        same[:, :1] = True
        return same

    def scores(self, scores: np.ndarray, to_top: np.ndarray | None = None) -> np.ndarray:
        """(n, m) similarities, each row in descending order -> (n,) decision scores.

        `to_top`: for FAMILY, the (n, m) similarities of each hit to the row's top hit
        (`to_top[:, 0]` is 1). Rows may hold fewer hits than `depth()` (a tiny registry);
        the margin is then taken over the runners-up there are, and equals the top
        score when there are none.
        """
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float32))
        top = scores[:, 0] if scores.shape[1] else np.zeros(len(scores), np.float32)
        if self.kind == TOP or scores.shape[1] < 2:
            return top
        if self.kind == MARGIN:
            return top - scores[:, 1:1 + NEIGHBOURS].mean(axis=1)
        if to_top is None:
            raise ValueError("the family margin needs each hit's similarity to the top hit")
        out = top.copy()
        for i, (row, same) in enumerate(zip(scores, self.family(np.atleast_2d(to_top)))):
            runners = row[~same][:NEIGHBOURS]
            if len(runners):
                out[i] = row[0] - runners.mean()
        return out


def rule_of(kind: str, family_similarity: float | None = None) -> Rule:
    """The rule a manifest records (its `decision` and `decision_family_similarity`)."""
    return Rule(kind, family_similarity if kind == FAMILY else None)
