"""The brand-free scene generator and the mark detector trained on its scenes."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from indexer.network import detector as det
from indexer.network.detector import iou
from indexer.network.locate import locate
from indexer.network.preprocess import PreprocessConfig, looks_photographed
from indexer.network.scenes import cut_out, make_scene, photograph
from indexer.scene_calibration import strangers
from tests.conftest import SAMPLES


def test_the_same_seed_makes_the_same_scene_and_boxes_lie_inside():
    pool = strangers()[:20]
    a, b = (make_scene(random.Random(4), pool, 2) for _ in range(2))
    assert a.boxes == b.boxes and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    for x, y, w, h in a.boxes:
        assert x >= 0 and y >= 0 and x + w <= a.image.width and y + h <= a.image.height
    assert make_scene(random.Random(4), pool, 0).boxes == []


def test_cut_out_drops_the_canvas_around_a_mark_and_keeps_what_it_encloses():
    im = Image.new("RGB", (100, 100), "white")
    d = ImageDraw.Draw(im)
    d.rectangle((20, 20, 79, 79), outline="black", width=6)  # a frame, white inside
    out = cut_out(im)
    assert out.size == (60, 60)  # cropped to the mark
    alpha = np.asarray(out.getchannel("A"))
    assert alpha[30, 30] == 255  # the white it encloses stays
    tinted = Image.new("RGB", (100, 100), (230, 240, 250))  # a tinted canvas goes too
    ImageDraw.Draw(tinted).ellipse((30, 30, 69, 69), fill="red")
    assert cut_out(tinted).size == (40, 40)


def test_peaks_turn_a_heatmap_into_boxes_in_the_pictures_pixels():
    out = torch.full((3, 32, 32), -10.0)
    out[0, 10, 20] = 5.0  # a centre in cell (row 10, column 20)
    out[1, 10, 20] = np.log(4.0)  # 4 cells wide
    out[2, 10, 20] = np.log(2.0)  # 2 high
    (found,) = det.peaks(out, scale=0.5, image_size=(1024, 768), min_score=0.3, max_marks=5)
    x, y, w, h = found.box
    # centre (20.5, 10.5) cells * 16 px / 0.5 = (656, 336); 4 x 2 cells = 128 x 64 px there
    assert (x, y, w, h) == (656 - 64, 336 - 32, 128, 64)
    assert found.score > 0.99
    assert det.peaks(out, 0.5, (1024, 768), min_score=0.999, max_marks=5) == []


def test_a_peak_boxed_over_a_surer_one_is_dropped_before_the_cap():
    """A wide mark's heatmap has two maxima: its second box is the same mark again, and
    must not take the place of another mark under max_marks."""
    out = torch.full((3, 32, 32), -10.0)
    out[1:3] = np.log(6.0)  # every box 6 x 6 cells
    out[0, 10, 10] = 5.0  # the surest peak
    out[0, 10, 12] = 4.0  # two cells beside it: its box overlaps the first's at IoU 0.5
    out[0, 25, 25] = 3.0  # another mark, far off
    found = det.peaks(out, scale=1.0, image_size=(512, 512), min_score=0.3, max_marks=2)
    assert [round(f.score, 3) for f in found] == [round(float(torch.sigmoid(v)), 3)
                                                  for v in torch.tensor([5.0, 3.0])]
    assert det.iou(found[0].box, found[1].box) == 0
    # Three cells apart the boxes overlap less (IoU 1/3): two marks side by side.
    out[0, 10, 12] = -10.0
    out[0, 10, 13] = 4.0
    found = det.peaks(out, scale=1.0, image_size=(512, 512), min_score=0.3, max_marks=3)
    assert len(found) == 3


def test_the_detector_finds_marks_it_never_saw_in_scenes_it_never_saw(detector):
    """Registered sample marks (the detector trained on brand-free icons and words only),
    photographed by the generator with another seed than training's."""
    marks = sorted((SAMPLES / "registry").glob("*.png"))
    rng = random.Random(99)
    hit = total = false = 0
    for _ in range(10):
        scene = make_scene(rng, marks, 1 + rng.randrange(2))
        found = detector.detect([scene.image])[0]
        total += len(scene.boxes)
        hit += sum(any(iou(f.box, b) >= 0.5 for f in found) for b in scene.boxes)
        false += sum(all(iou(f.box, b) < 0.5 for b in scene.boxes) for f in found)
    assert hit >= 0.8 * total and false <= 3


def test_a_clean_mark_is_not_a_photograph_and_a_photograph_is(detector):
    cfg = PreprocessConfig()
    clean = (SAMPLES / "registry" / "86000000.png").read_bytes()
    assert not looks_photographed(Image.open(SAMPLES / "registry" / "86000000.png").convert("RGB"))
    (part,) = locate(clean, cfg, None, detector)
    assert part.detected is None and part.is_mark and len(part.crops) == 1
    assert looks_photographed(make_scene(random.Random(1), [], 0).image)  # a made-up surface


def test_a_mark_on_a_plain_surface_photographed_is_a_photograph_and_a_noisy_file_is_not():
    """One colour all round the border, but lit unevenly: a card on a table, not a file."""
    mark = Image.open(SAMPLES / "registry" / "86000000.png").convert("RGB")
    wall = Image.new("RGB", (640, 480), (120, 140, 170))
    wall.paste(mark, (200, 120))
    shot = photograph(random.Random(3), wall)
    assert looks_photographed(shot)
    noisy = np.asarray(mark, np.float32) + np.random.default_rng(0).normal(0, 8, (256, 256, 3))
    assert not looks_photographed(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    assert not looks_photographed(wall)  # the same picture before the camera: a flat wall


@pytest.mark.parametrize("size", [(5, 900), (900, 5), (40, 40)])
def test_odd_shapes_go_through_the_detector(detector, size):
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    for found in detector.detect([im])[0]:
        x, y, w, h = found.box
        assert 0 <= x and 0 <= y and x + w <= size[0] and y + h <= size[1]


def test_a_photographs_cuts_prepared_side_by_side_are_the_ones_prepared_in_turn(detector):
    """locate() prepares a photograph's cuts with the map it is given (the server's pool
    for a lone call): the same parts, boxes and network inputs, in the same order."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.photos import scene_jpegs
    cfg = PreprocessConfig(views=("rgb", "ink"))
    marks = [Image.open(p).convert("RGB") for p in sorted((SAMPLES / "registry").glob("*.png"))]
    with ThreadPoolExecutor(3) as pool:
        for data in scene_jpegs(marks[:12], 4, seed=5):
            alone, side = locate(data, cfg, None, detector), locate(data, cfg, None, detector,
                                                                   pool.map)
            assert len(alone) == len(side) >= 2  # a mark found, and the picture whole
            for a, b in zip(alone, side):
                assert (a.box, a.detected, a.is_mark) == (b.box, b.detected, b.is_mark)
                assert [c.mark_px for c in a.crops] == [c.mark_px for c in b.crops]
                assert all(np.array_equal(c.array, d.array) for c, d in zip(a.crops, b.crops))
