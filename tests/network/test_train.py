"""`python -m indexer.network.train` on a few real marks: loadable weights and an honest record."""
from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.network import augment
from indexer.network.encoder import _load_lite0, _with_tuning, pick_device
from indexer.network.train import TrainConfig, cache_key, main
from tests.conftest import SAMPLES


def test_train_writes_weights_and_record(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    for p in sorted((SAMPLES / "registry").glob("*.png"))[:24]:
        shutil.copy(p, marks / p.name)
    out = tmp_path / "w.pt"
    args = ["--images", str(marks), "--out", str(out), "--cache", str(tmp_path / "c"),
            "--views", "2", "--head-epochs", "2", "--epochs", "2", "--batch-size", "8",
            "--dim", "16", "--tune-from", "14"]
    assert main(args) == 0
    state = torch.load(out, weights_only=True)
    # Blocks 14 and 15 were trained and saved; earlier ones are ImageNet's, not saved.
    assert "backbone._blocks.14._project_conv.weight" in state
    assert not any(k.startswith("backbone._blocks.13.") for k in state)
    imagenet = _load_lite0(pick_device("cpu")).net.backbone.state_dict()
    assert not torch.equal(state["backbone._blocks.15._project_conv.weight"],
                           imagenet["_blocks.15._project_conv.weight"])
    enc = _with_tuning(_load_lite0(pick_device("cpu")), out)
    assert enc.dim == 32  # a 16-d head, for each of the two views
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["data"]["marks"] == 24 and record["data"]["views_per_mark"] == 2
    assert record["config"]["image_views"] == "rgb,ink"  # trained on what the encoder sees
    phases = [(h["phase"], h["epoch"]) for h in record["history"]]
    assert phases == [("head", 0), ("head", 1), ("head", 2), ("fine-tune", 1), ("fine-tune", 2)]
    assert all(h["loss"] > 0 for h in record["history"][1:])
    assert 0.0 <= record["history"][-1]["val_recall@1"] <= 1.0
    # The frozen stages' outputs are cached and reused on a second run.
    assert main(args) == 0
    assert len(list((tmp_path / "c").glob("activations-*.npy"))) == 1


def test_cached_views_are_not_reused_after_the_edits_change(tmp_path, monkeypatch):
    files, cfg = [Path("a.png"), Path("b.png")], TrainConfig()
    key = cache_key(files, cfg)
    assert cache_key(files, cfg) == key
    assert cache_key(files[:1], cfg) != key
    assert cache_key(files, TrainConfig(views=2)) != key
    edited = tmp_path / "augment.py"
    edited.write_text(Path(augment.__file__).read_text() + "\n# another edit\n")
    monkeypatch.setattr(augment, "__file__", str(edited))
    assert cache_key(files, cfg) != key


def _renderer():
    spec = importlib.util.spec_from_file_location(
        "render_training_marks", Path(__file__).parents[2] / "scripts/render_training_marks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wordmarks_are_drawn_in_every_font_and_repeat_with_the_seed():
    r = _renderer()
    fonts = r.system_fonts()
    if not fonts:
        pytest.skip("no TrueType font with Latin letters on this machine (fc-list, matplotlib)")
    for font in fonts:  # each font found really draws the words (no empty marks)
        assert r._text_image("Mark", font, [[0, 0, 0]] * 2, 0).getbbox() is not None
    marks = [r.render_wordmark(random.Random(7), fonts) for _ in range(2)]
    assert marks[0].size == (r.SIZE, r.SIZE)
    assert np.array_equal(np.asarray(marks[0]), np.asarray(marks[1]))
    rng, at_edge = random.Random(0), 0
    for _ in range(20):  # ink on the canvas, seldom running off it (13 of 2,000 do)
        ink = np.asarray(r.render_wordmark(rng, fonts).convert("L")) < 250
        assert ink.mean() > 0.005
        at_edge += bool(ink[:, 0].any() or ink[:, -1].any() or ink[0].any() or ink[-1].any())
    assert at_edge <= 2
