"""The register's self-check, on the sample index with marks filed twice."""
from __future__ import annotations

import csv
import shutil

from PIL import Image

from indexer.build import add
from indexer.cli import main
from indexer.sources import ImageItem
from tests.conftest import SAMPLES, quiet


def test_marks_filed_twice_are_listed_grouped_and_drawn(index_copy, encoder, tmp_path, capsys):
    # 86000296 filed again under a new serial; 86030192 twice more, once as a grey copy
    shutil.copy(SAMPLES / "registry" / "86000296.png", tmp_path / "again.png")
    shutil.copy(SAMPLES / "registry" / "86030192.png", tmp_path / "second.png")
    Image.open(SAMPLES / "registry" / "86030192.png").convert("L").save(tmp_path / "third.png")
    add([ImageItem("99000001", tmp_path / "again.png"),
         ImageItem("99000002", tmp_path / "second.png"),
         ImageItem("99000003", tmp_path / "third.png")], index_copy, encoder, quiet())
    out = tmp_path / "check"
    assert main(["duplicates", "--index", str(index_copy), "--out", str(out),
                 "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "303 marks checked" in said and "pairs.csv" in said
    rows = list(csv.DictReader(open(out / "pairs.csv")))
    pairs = {frozenset((r["serial_a"], r["serial_b"])): r for r in rows}
    first = pairs[frozenset(("86000296", "99000001"))]
    assert first["exists"] == "1" and float(first["score"]) > 0.99
    group = {r["group"] for r in rows if {r["serial_a"], r["serial_b"]} & {
        "86030192", "99000002", "99000003"}}
    assert len(group) == 1  # one mark filed three times: one group
    assert rows[0]["group"] == "1" and float(rows[0]["score"]) >= max(float(r["score"]) for r in rows) - 1e-4
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.height > 100
    assert not list(out.glob("*.tmp"))


def test_min_score_adds_near_duplicates(sample_index, tmp_path, capsys):
    out = tmp_path / "near"
    assert main(["duplicates", "--index", str(sample_index), "--out", str(out),
                 "--min-score", "0.5", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "pairs.csv")))
    assert rows and all(float(r["score"]) >= 0.5 or r["exists"] == "1" or r["same_mark"] == "1"
                        for r in rows)
    assert any(r["exists"] == "0" and r["same_mark"] == "0" for r in rows)  # near, not same
    assert main(["duplicates", "--index", str(sample_index), "--out", str(out),
                 "--min-score", "3"]) == 2
    assert "--min-score" in capsys.readouterr().err
