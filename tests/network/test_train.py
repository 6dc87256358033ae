"""`python -m indexer.network.train` on a few real marks: loadable weights and an honest record."""
from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from indexer.network import augment
from indexer.network.encoder import _load_lite0, _with_tuning, pick_device
from indexer.network.preprocess import BlankImageError, PreprocessConfig, to_input
from indexer.network.train import TrainConfig, _views, cache_key, main
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

    # Going on from these weights with photographed views: no head phase, a record that
    # starts from them, views cached apart from the first run's, new weights.
    again = tmp_path / "w2.pt"
    args2 = [a if a != str(out) else str(again) for a in args]
    assert main([*args2, "--init", str(out), "--photographed-share", "0.5",
                 "--epochs", "1"]) == 0
    record = json.loads(again.with_suffix(".json").read_text())
    assert [(h["phase"], h["epoch"]) for h in record["history"]] == [("init", 0),
                                                                    ("fine-tune", 1)]
    assert record["config"]["init"] == str(out)
    assert record["init"]["record"]["history"][-1]["phase"] == "fine-tune"  # out's own record
    assert len(list((tmp_path / "c").glob("activations-*.npy"))) == 2
    tuned = torch.load(again, weights_only=True)
    assert not torch.equal(tuned["head.proj.weight"], state["head.proj.weight"])
    assert _with_tuning(_load_lite0(pick_device("cpu")), again).dim == 32
    # Weights trained from block 14 on cannot go on from block 15 on: their block 14
    # would be left out of the network (the cached views are ImageNet's up to there).
    with pytest.raises(SystemExit) as refused:
        main([*args2, "--init", str(out), "--tune-from", "15"])
    assert refused.value.code == 2


def test_cached_views_are_not_reused_after_the_edits_change(tmp_path, monkeypatch):
    files, cfg = [Path("a.png"), Path("b.png")], TrainConfig()
    key = cache_key(files, cfg)
    assert cache_key(files, cfg) == key
    assert cache_key(files[:1], cfg) != key
    assert cache_key(files, TrainConfig(views=2)) != key
    assert cache_key(files, TrainConfig(photographed_share=0.3)) != key
    edited = tmp_path / "augment.py"
    edited.write_text(Path(augment.__file__).read_text() + "\n# another edit\n")
    monkeypatch.setattr(augment, "__file__", str(edited))
    assert cache_key(files, cfg) != key


def test_an_edit_that_washes_a_faint_mark_out_is_drawn_again(tmp_path):
    # A small light-grey square: about one random edit in ten (blur, JPEG, a low
    # resolution) leaves nothing the preprocessing can see, which used to stop training.
    im = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(im).rectangle((120, 120, 124, 124), fill=(240, 240, 240))
    path = tmp_path / "faint.png"
    im.save(path)
    cfg = PreprocessConfig()
    rng = random.Random(0)
    washed = 0
    for _ in range(100):
        try:
            to_input(augment.random_edit(im, rng), cfg)
        except BlankImageError:
            washed += 1
    assert washed > 0  # the case is real for this mark
    views = _views(path, cfg, views=40, seed=0)
    assert len(views) == 41 and all(v.shape == views[0].shape for v in views)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), "white").save(blank)
    with pytest.raises(BlankImageError, match="blank.png"):  # names the file to leave out
        _views(blank, cfg, views=2, seed=0)


def test_a_photographed_copy_is_the_mark_cut_out_of_a_photograph_as_the_server_cuts_it():
    im = Image.open(sorted((SAMPLES / "registry").glob("*.png"))[0]).convert("RGB")
    cut_closer = 0
    for seed in range(12):
        scene = augment.scenes.close_up(random.Random(seed), im)
        copy = augment.photographed(im, random.Random(seed))
        assert copy.tobytes() == augment.photographed(im, random.Random(seed)).tobytes()
        if not scene.boxes:
            continue
        (x, y, w, h), = scene.boxes
        # The true box moved by up to BOX_JITTER a side, then widened by up to 8% of its
        # longer side or cut closer by up to 16% of its shorter one, inside the picture.
        slack = 2 * augment.BOX_JITTER + 2 * max(share for _, share in augment.CUTS)
        assert (1 - slack) * w - 2 <= copy.width <= min(scene.image.width, (1 + slack) * w + 2)
        assert (1 - slack) * h - 2 <= copy.height <= min(scene.image.height, (1 + slack) * h + 2)
        assert copy.size != scene.image.size  # a part of the photograph, not all of it
        cut_closer += copy.width < w and copy.height < h
        to_input(copy, PreprocessConfig())  # something the network can see
    assert 0 < cut_closer < 12  # both kinds of cut are drawn


def _renderer(name: str = "render_training_marks"):
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parents[2] / "scripts" / f"{name}.py")
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


STROKE_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" viewBox="0 0 24 24" '
              'fill="none" stroke="currentColor" stroke-width="2"><path d="M4 4h16v16H4z"/>'
              '<path d="M8 12h8"/></svg>')
COLOUR_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36">'
              '<circle cx="18" cy="18" r="16" fill="#FFCC4D"/><path fill="#664500" '
              'd="M10 22h16v3H10z"/></svg>')


def test_brand_free_sources_leave_out_the_background_set_coin_icons_and_skin_tones(
        tmp_path):
    pytest.importorskip("cairosvg")
    r = _renderer()
    mdi, tabler, twemoji = tmp_path / "mdi", tmp_path / "tabler", tmp_path / "twemoji"
    (tabler / "icons" / "outline").mkdir(parents=True)
    for d in (mdi, twemoji):
        d.mkdir()
    for name in ("home", "star", "bolt", "brand-acme", "currency-bitcoin", "home-bitcoin"):
        (tabler / "icons" / "outline" / f"{name}.svg").write_text(STROKE_SVG)
    for name in ("1f600", "1f601", "1f602", "1f44b-1f3fd", "1f469-1f3fb-200d-1f4bb"):
        (twemoji / f"{name}.svg").write_text(COLOUR_SVG)  # the last two: skin tones
    (mdi / "glyph.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
                                   '<path d="M3 3h18v18H3z"/></svg>')
    background = tmp_path / "bg"  # what the calibration holds out: never trained on
    for source, name in (("tabler", "star"), ("twemoji", "1f601")):
        (background / source).mkdir(parents=True)
        r.Image.new("RGB", (8, 8)).save(background / source / f"{name}.png")

    def run(out):
        assert r.main(["--svg", str(mdi), "--out", str(out), "--count", "1",
                       "--tabler", str(tabler), "--tabler-count", "10",
                       "--twemoji", str(twemoji), "--twemoji-count", "10",
                       "--combinations", "10" if r.system_fonts() else "0",
                       "--exclude", str(background)]) == 0
        return sorted(p.name for p in out.glob("*.png"))

    names = run(tmp_path / "a")
    assert [n for n in names if n.startswith("tabler-")] == ["tabler-bolt.png", "tabler-home.png"]
    assert [n for n in names if n.startswith("twemoji-")] == ["twemoji-1f600.png",
                                                             "twemoji-1f602.png"]
    sources = json.loads((tmp_path / "a" / "sources.json").read_text())
    assert sources["tabler"] == {"eligible": 2, "rendered": 2, "left_out": 1}
    if r.system_fonts():
        assert sources["combination"]["rendered"] == 2
    for name in names:  # every mark drawn, on the canvas size the network is trained on
        im = r.Image.open(tmp_path / "a" / name)
        assert im.size == (r.SIZE, r.SIZE)
        assert (np.asarray(im.convert("L")) < 250).mean() > 0.005
    b = run(tmp_path / "b")  # the same seed draws the same marks
    assert b == names
    assert all(np.array_equal(np.asarray(r.Image.open(tmp_path / "a" / n)),
                              np.asarray(r.Image.open(tmp_path / "b" / n))) for n in names)


def test_the_background_set_draws_no_coin_symbols_and_keeps_the_other_marks(tmp_path):
    pytest.importorskip("cairosvg")
    r = _renderer("render_background_marks")
    pkgs = {name: tmp_path / name for name in ("mdi", "tabler", "twemoji", "flags")}
    (pkgs["mdi"] / "svg").mkdir(parents=True)
    (pkgs["mdi"] / "meta.json").write_text(json.dumps([{"name": "glyph", "tags": []}]))
    (pkgs["mdi"] / "svg" / "glyph.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M3 3h18v18H3z"/></svg>')
    (pkgs["tabler"] / "icons" / "outline").mkdir(parents=True)
    tabler = ("home", "currency-xrp", "star", "photo-bitcoin", "bolt", "brand-acme")
    for name in tabler:
        (pkgs["tabler"] / "icons" / "outline" / f"{name}.svg").write_text(STROKE_SVG)
    pkgs["twemoji"].mkdir()
    (pkgs["flags"] / "flags").mkdir(parents=True)
    for name in ("1f600", "1f601"):
        (pkgs["twemoji"] / f"{name}.svg").write_text(COLOUR_SVG)
        (pkgs["flags"] / "flags" / f"{name}.svg").write_text(COLOUR_SVG)
    out = tmp_path / "bg"
    assert r.main([f"--{k}={v}" for k, v in pkgs.items()] + ["--out", str(out),
                                                             "--per-source", "10"]) == 0
    drawn = sorted(p.stem for p in (out / "tabler").glob("*.png"))
    assert drawn == ["bolt", "home", "star"]
    record = json.loads((out / "sources.json").read_text())["sources"]["tabler"]
    assert record["rendered"] == 3 and record["coin_symbols_left_out"] == 2
    # The coins are drawn and dropped: the marks after them are drawn as they would be
    # with the coins kept, so a set made before this rule keeps its other marks.
    kept = tmp_path / "kept"
    r.CRYPTO = re.compile("(?!)")  # matches nothing
    assert r.main([f"--{k}={v}" for k, v in pkgs.items()] + ["--out", str(kept),
                                                             "--per-source", "10"]) == 0
    for sub in ("tabler", "twemoji", "flags", "wordmarks"):
        for png in (out / sub).glob("*.png"):
            assert np.array_equal(np.asarray(Image.open(png)),
                                  np.asarray(Image.open(kept / sub / png.name))), png
