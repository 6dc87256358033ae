"""Where a build's estimated TPR comes from: the calibration's copies, edit by edit.

    python -m bench.calibration_gap INDEX_DIR [--queries QUERIES_CSV] [--json FILE]

Redoes the build's calibration copies (the same held-out marks, edits and seed, so the
overall figure is the manifest's `estimated_tpr`) and splits the share confirmed by edit
of `augment.CYCLE`. Beside it, the same number of copies of marks the projection was
fitted on (every registered query's mark is one of those; the held-out marks are not).
With `--queries` (a LogoBench-families `queries.csv`, whose `family` column lists each
brand's registered renditions), a copy whose top match is in its mark's family counts as
found, as the evaluation counts it, instead of by the family bound.

Compare with `make eval`'s TPR per edit to see which edits the calibration finds harder
than the register's queries (docs/accuracy.md).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np

from indexer import calibrate, decision
from indexer.index.reader import encoder_for, open_index
from indexer.network.augment import CYCLE
from indexer.network.encoder import load_encoder


def families(queries_csv: Path, serial_to_id: dict[str, int]) -> dict[int, frozenset[int]]:
    """id -> the ids of its brand's registered renditions, from a queries.csv."""
    out: dict[int, frozenset[int]] = {}
    with open(queries_csv, newline="") as f:
        for row in csv.DictReader(f):
            ids = frozenset(serial_to_id[s] for s in row.get("family", "").split("|")
                            if s in serial_to_id)
            for i in ids:
                out[i] = out.get(i, frozenset()) | ids
    return out


def breakdown(index, encoder, sources, rule: decision.Rule, threshold: float,
              family: dict[int, frozenset[int]] | None, edits: int = 2) -> dict:
    """The calibration's copies of `sources`: the share confirmed, overall and per edit."""
    marks = calibrate.load_marks(sources)
    copies = calibrate.edited_copies(index.index, encoder, marks, edits, 0, index.reranker)
    score, first = calibrate.positive_scores(index.index, copies, rule)
    if family is not None:  # marks with no family listed keep the bound's answer
        first = np.array([int(t) in family[int(m)] if int(m) in family else f
                          for t, m, f in zip(copies.ids[:, 0], copies.marks, first)])
    ok = first & (score >= threshold)
    return {"copies": int(len(ok)), "tpr": round(float(ok.mean()), 4),
            "by_edit": {e: round(float(ok[copies.edits == e].mean()), 3) for e in CYCLE
                        if (copies.edits == e).any()}}


def run(index_dir: Path, queries: Path | None, fitted_too: bool = True) -> dict:
    index = open_index(index_dir)
    try:
        m = index.manifest
        encoder = encoder_for(index, load_encoder())
        rule = decision.rule_of(m.decision, m.family_similarity)
        held = set(m.calibration.get("held_out_ids", []))
        sources = index.catalog.sources()
        serials = {r.serial: i for i, r in index.catalog.refs([i for i, _ in sources]).items()}
        family = families(queries, serials) if queries else None
        held_out = [s for s in sources if s[0] in held]
        out = {"threshold": m.threshold, "estimated_tpr": m.calibration.get("estimated_tpr"),
               "counted_by": "the queries' families" if family else "the family bound",
               "held_out": breakdown(index, encoder, held_out, rule, m.threshold, family)}
        if fitted_too:
            fitted = [s for s in sources if s[0] not in held]
            fitted = random.Random(0).sample(fitted, min(len(held_out), len(fitted)))
            out["fitted"] = breakdown(index, encoder, fitted, rule, m.threshold, family)
        return out
    finally:
        index.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.calibration_gap",
                                description=__doc__.split("\n")[0])
    p.add_argument("index", type=Path, help="an index directory (indexer build --out)")
    p.add_argument("--queries", type=Path, help="queries.csv with a family column")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    out = run(args.index, args.queries)
    for part in ("held_out", "fitted"):
        r = out[part]
        print(f"{part}: {r['copies']} copies, confirmed {r['tpr']:.4f} (counted by "
              f"{out['counted_by']}; the build's estimate {out['estimated_tpr']})")
        print("  " + "  ".join(f"{e} {v:.2f}" for e, v in r["by_edit"].items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
