"""`python -m indexer.train` on a few real marks: a loadable head and an honest record."""
from __future__ import annotations

import json
import shutil

import torch

from indexer.encoder import Head
from indexer.train import main
from tests.conftest import SAMPLES


def test_train_writes_head_and_record(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    for p in sorted((SAMPLES / "registry").glob("*.png"))[:24]:
        shutil.copy(p, marks / p.name)
    out = tmp_path / "head.pt"
    assert main(["--images", str(marks), "--out", str(out), "--cache", str(tmp_path / "c"),
                 "--views", "2", "--epochs", "3", "--batch-size", "8", "--dim", "16"]) == 0
    state = torch.load(out, weights_only=True)
    head = Head(1280, 16)
    head.load_state_dict(state)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["data"]["marks"] == 24 and record["data"]["views_per_mark"] == 2
    assert [h["epoch"] for h in record["history"]] == [0, 1, 2, 3]
    assert all(h["loss"] > 0 for h in record["history"][1:])
    assert 0.0 <= record["history"][-1]["val_recall@1"] <= 1.0
    # The cache is reused on a second run with the same marks and views.
    assert len(list((tmp_path / "c").glob("features-*.npy"))) == 1
