"""Geometric verification (indexer.geometry) on the sample register's real marks: a
mark photographed in perspective lines up with its file; other marks, blank pictures
and keypoints whose picture is not the mark's do not."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indexer import geometry
from tests.conftest import SAMPLES

MARKS = sorted((SAMPLES / "registry").glob("*.png"))[:24]


def _thumbnail(path) -> Image.Image:
    """As the catalog keeps it: at most 128 px, PNG."""
    im = Image.open(path).convert("RGB")
    im.thumbnail((128, 128))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def _photographed(path, seed: int) -> Image.Image:
    """The mark on a grey card, seen from the side, darker, blurred a little and saved as
    a JPEG: what the detector cuts out of a photograph."""
    rng = np.random.default_rng(seed)
    mark = Image.open(path).convert("RGB").resize((300, 300))
    card = Image.new("RGB", (380, 380), (200, 196, 190))
    card.paste(mark, (40, 40))
    w = h = 380
    squeeze = rng.uniform(0.08, 0.16) * w
    # Image.transform's PERSPECTIVE maps output to input: the far side drawn shorter.
    src = [(0, 0), (w, -squeeze), (w, h + squeeze), (0, h)]
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(a, float), np.array(src, float).ravel())
    seen = card.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs),
                          Image.Resampling.BICUBIC, fillcolor=(90, 80, 70))
    seen = Image.eval(seen, lambda p: int(p * 0.8))
    buf = io.BytesIO()
    seen.save(buf, "JPEG", quality=80)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def registered() -> list[geometry.Features]:
    return [geometry.features(_thumbnail(p)) for p in MARKS]


def test_a_photographed_mark_lines_up_with_its_own_thumbnail_and_no_other(registered):
    """Most photographed marks are verified against their own thumbnail (a mark with few
    corners, a plain disc, has too few keypoints to say); none against another's."""
    own = others = 0
    for n, path in enumerate(MARKS):
        seen = geometry.features(_photographed(path, n))
        own += geometry.align(seen, registered[n]).verified
        others += sum(geometry.align(seen, r).verified
                      for m, r in enumerate(registered) if m != n)
    assert own >= 0.6 * len(MARKS)
    assert others == 0


@pytest.mark.parametrize("size", [(1, 1), (3, 200), (256, 256)])
def test_blank_and_tiny_pictures_have_nothing_to_line_up(registered, size):
    blank = geometry.features(Image.new("RGB", size, "white"))
    assert len(blank) == 0
    assert geometry.align(blank, registered[0]) == geometry.Alignment(0, 0.0)
    assert geometry.align(registered[0], blank) == geometry.Alignment(0, 0.0)


def test_transparency_is_on_white(registered):
    """A thumbnail with an alpha channel is seen as it is shown: on white."""
    im = Image.open(MARKS[0]).convert("RGBA")
    im.thumbnail((128, 128))
    assert geometry.align(geometry.features(im), registered[0]).verified


def test_keypoints_that_line_up_over_another_picture_are_not_enough(registered):
    """The edges must agree too: the same keypoints, taken from a picture that is not
    the mark (a card whose corners happen to match), line up but are not verified."""
    n = next(n for n, p in enumerate(MARKS)
             if geometry.align(geometry.features(_photographed(p, n)), registered[n]).verified)
    seen = geometry.features(_photographed(MARKS[n], n))
    other = np.asarray(_photographed(MARKS[(n + 1) % len(MARKS)], n).convert("L")
                       .resize(seen.grey.shape[::-1]))
    card = geometry.Features(seen.points, seen.descriptors, other)
    found = geometry.align(card, registered[n])
    assert found.inliers >= geometry.MIN_INLIERS and found.edges < geometry.MIN_EDGES
    assert not found.verified


# Matches seen on a photograph (LogoBench-scenes s00938 against a plain mark's
# thumbnail): many query keypoints matched to the same few registered ones. RANSAC
# returns a homography that none of them agrees with.
QUERY_POINTS = [
    (8.4, 124.9), (15.9, 101.4), (26.2, 111.1), (50.1, 163.9), (61.0, 134.3),
    (70.4, 167.8), (70.6, 74.0), (83.4, 127.6), (90.0, 163.1), (92.0, 164.6),
    (95.8, 166.7), (132.5, 140.6), (190.4, 15.0), (199.5, 123.3), (222.9, 140.9),
    (223.5, 123.1), (226.2, 139.0), (234.2, 93.4)]
REGISTERED_POINTS = [
    (100.3, 33.5), (100.3, 33.5), (100.3, 33.5), (100.3, 33.5), (178.9, 142.6),
    (190.9, 126.4), (170.6, 155.6), (87.3, 197.3), (75.4, 49.1), (75.4, 49.1),
    (75.4, 49.1), (75.4, 49.1), (39.7, 91.6), (147.9, 134.0), (100.3, 33.5),
    (125.8, 39.4), (100.3, 33.5), (87.3, 197.3)]


def test_a_homography_no_match_agrees_with_is_none():
    distinct = sorted(set(REGISTERED_POINTS))
    onehot = np.eye(128, dtype=np.float32)
    registered = geometry.Features(np.float32(distinct), onehot[:len(distinct)],
                                   np.zeros((256, 256), np.uint8))
    query = geometry.Features(np.float32(QUERY_POINTS),
                              onehot[[distinct.index(p) for p in REGISTERED_POINTS]],
                              np.zeros((256, 256), np.uint8))
    assert geometry.align(query, registered) == geometry.Alignment(0, 0.0)
