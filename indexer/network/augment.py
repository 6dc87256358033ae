"""Edits that real trademark queries go through, for training and calibration.

A query for a registered mark is rarely the registry's file: it is a scan, a phone
photo on some surface, a screenshot crop, a recoloured or greyscale print, a low-
resolution web copy, or the mark with a word added. Each function below makes one
such edit of a clean RGB mark; `random_edit` picks one (sometimes two).
"""
from __future__ import annotations

import io
import random
import string

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from indexer.network import scenes
from indexer.network.locate import CUT_MARGIN, INSETS
from indexer.network.preprocess import WHITE


def _rand_color(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def _mark_mask(mark: Image.Image) -> Image.Image:
    """Where the mark is not (near-)white: pasting through it drops the white background."""
    return ImageOps.invert(ImageOps.grayscale(mark)).point(lambda v: 255 if v > 12 else 0)


def jpeg(im: Image.Image, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=rng.randint(8, 50))
    return Image.open(buf).convert("RGB")


def low_resolution(im: Image.Image, rng: random.Random) -> Image.Image:
    side = rng.randint(20, 72)
    small = im.resize((side, max(1, round(side * im.height / im.width))), Image.Resampling.BILINEAR)
    return small.resize(im.size, Image.Resampling.BICUBIC) if rng.random() < 0.5 else small


def crop(im: Image.Image, rng: random.Random) -> Image.Image:
    keep = rng.uniform(0.6, 0.92)
    w, h = round(im.width * keep), round(im.height * keep)
    x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
    return im.crop((x, y, x + w, y + h))


def rotate(im: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.choice([-1, 1]) * rng.uniform(4, 35)
    return im.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=WHITE)


def gray(im: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def recolor(im: Image.Image, rng: random.Random) -> Image.Image:
    kind = rng.randrange(3)
    if kind == 0:  # hue rotation
        hsv = np.asarray(im.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.randint(30, 225)) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    if kind == 1:  # channel swap
        channels = list(im.split())
        rng.shuffle(channels)
        return Image.merge("RGB", channels)
    # single-colour print of the mark
    return ImageOps.colorize(ImageOps.grayscale(im), _rand_color(rng), WHITE)


def on_canvas(im: Image.Image, rng: random.Random) -> Image.Image:
    """The mark small on a large plain coloured canvas."""
    side = round(max(im.size) / rng.uniform(0.2, 0.5))
    canvas = Image.new("RGB", (side, side), _rand_color(rng))
    mark = im.copy()
    x, y = rng.randint(0, side - mark.width), rng.randint(0, side - mark.height)
    mask = _mark_mask(mark)
    canvas.paste(mark, (x, y), mask if rng.random() < 0.7 else None)
    return canvas


def blur(im: Image.Image, rng: random.Random) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 4.0)))


def add_text(im: Image.Image, rng: random.Random) -> Image.Image:
    word = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(3, 10)))
    size = max(12, im.height // rng.randint(6, 10))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:
        font = ImageFont.load_default()
    canvas = Image.new("RGB", (im.width, im.height + size * 2), WHITE)
    top = rng.random() < 0.3
    canvas.paste(im, (0, size * 2 if top else 0))
    d = ImageDraw.Draw(canvas)
    y = size // 3 if top else im.height + size // 3
    d.text((rng.randint(0, max(1, im.width // 4)), y), word, fill=_rand_color(rng), font=font)
    return canvas


def noise(im: Image.Image, rng: random.Random) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    g = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(8, 40), a.shape)
    return Image.fromarray(np.clip(a + g, 0, 255).astype(np.uint8))


def flip(im: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(im)


def _texture(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A procedural surface: smooth colour noise, stripes or a gradient, with grain."""
    g = np.random.default_rng(rng.randrange(2**32))
    w, h = size
    kind = rng.randrange(3)
    if kind == 0:
        low = g.uniform(0, 255, (rng.randint(2, 8), rng.randint(2, 8), 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC), np.float32)
    elif kind == 1:
        xs = np.linspace(0, rng.uniform(4, 30) * np.pi, w)[None, :, None]
        c1, c2 = np.array(_rand_color(rng)), np.array(_rand_color(rng))
        t = (np.sin(xs + np.linspace(0, rng.uniform(0, 6), h)[:, None, None]) + 1) / 2
        base = c1 * t + c2 * (1 - t)
    else:
        t = np.linspace(0, 1, h)[:, None, None] * np.ones((1, w, 1))
        base = np.array(_rand_color(rng)) * t + np.array(_rand_color(rng)) * (1 - t)
    base = base + g.normal(0, rng.uniform(3, 20), (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def photo(im: Image.Image, rng: random.Random) -> Image.Image:
    """The mark printed on a surface and photographed: texture, light, slight tilt, blur."""
    side = round(max(im.size) / rng.uniform(0.45, 0.8))
    bg = _texture((side, side), rng)
    mark = im.rotate(rng.uniform(-12, 12), Image.Resampling.BICUBIC, expand=True, fillcolor=WHITE)
    mask = _mark_mask(mark)
    x, y = rng.randint(0, max(0, side - mark.width)), rng.randint(0, max(0, side - mark.height))
    bg.paste(mark, (x, y), mask if rng.random() < 0.6 else None)
    bg = ImageEnhance.Brightness(bg).enhance(rng.uniform(0.6, 1.3))
    bg = ImageEnhance.Contrast(bg).enhance(rng.uniform(0.6, 1.2))
    return bg.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def scan(im: Image.Image, rng: random.Random) -> Image.Image:
    """A printed and scanned copy: paper tint, low contrast, slight skew, grain."""
    paper = Image.new("RGB", im.size, (rng.randint(225, 255), rng.randint(220, 250),
                                       rng.randint(200, 240)))
    out = Image.blend(im, paper, rng.uniform(0.1, 0.35))
    out = out.rotate(rng.uniform(-3, 3), Image.Resampling.BICUBIC, fillcolor=paper.getpixel((0, 0)))
    return noise(out, rng) if rng.random() < 0.5 else out


# How the server cuts a found mark out of a photograph (indexer.network.locate): its box
# widened by a share of its longer side, or cut closer by shares of its shorter side.
# The training's cuts draw from these, around a box as rough as the detector's.
CUTS = (("widen", CUT_MARGIN), *(("inset", share) for share in INSETS))
BOX_JITTER = 0.06  # each side of the true box moved by up to this share of its size


def photographed(im: Image.Image, rng: random.Random) -> Image.Image:
    """The mark photographed on a surface (indexer.network.scenes: cut out of its canvas,
    on a card or not, turned, in perspective, printed or stuck on, shadowed, then uneven
    light, a colour cast, blur, noise and JPEG) and cut out of the picture as the server
    cuts out a mark its detector found. Not one of EDITS: the calibration's copies stay
    what a register's queries are; training draws it at its own rate (`random_edit`)."""
    for _ in range(3):
        scene = scenes.close_up(rng, im)
        if scene.boxes:
            break
    else:
        return scenes.photograph(rng, im)
    x, y, w, h = scene.boxes[0]
    j = lambda s: rng.uniform(-BOX_JITTER, BOX_JITTER) * s  # noqa: E731
    x0, y0, x1, y1 = x + j(w), y + j(h), x + w + j(w), y + h + j(h)
    how, share = rng.choice(CUTS)
    m = share * max(x1 - x0, y1 - y0) if how == "widen" else -share * min(x1 - x0, y1 - y0)
    pic = scene.image
    box = (max(0, round(x0 - m)), max(0, round(y0 - m)),
           min(pic.width, round(x1 + m)), min(pic.height, round(y1 + m)))
    return pic.crop(box) if box[2] - box[0] > 8 and box[3] - box[1] > 8 else pic


EDITS = {
    "jpeg": jpeg, "low_resolution": low_resolution, "crop": crop, "rotate": rotate,
    "gray": gray, "recolor": recolor, "on_canvas": on_canvas, "blur": blur, "text": add_text,
    "noise": noise, "flip": flip, "photo": photo, "scan": scan,
}


def random_edit(im: Image.Image, rng: random.Random, photographed_share: float = 0.0
                ) -> Image.Image:
    """One edit, or two in a row a quarter of the time; `photographed_share` of the time
    the mark photographed instead (`photographed`)."""
    if photographed_share and rng.random() < photographed_share:
        return photographed(im, rng)
    names = list(EDITS)
    out = EDITS[rng.choice(names)](im, rng)
    if rng.random() < 0.25:
        out = EDITS[rng.choice(names)](out, rng)
    return out


# The calibration's copies: the mark untouched, each edit alone, and two random edits in
# a row, in equal shares. Training draws edits at random (`random_edit`), which makes a
# copy of two edits a quarter of all copies and an untouched one none; the calibration
# measures what a register's queries score, and most of those are one plain edit.
CYCLE = ("identity", *EDITS, "two")


def nth_edit(im: Image.Image, n: int, rng: random.Random) -> Image.Image:
    """The `n`-th copy of the cycle (`CYCLE[n % len(CYCLE)]`); `rng` draws its details."""
    name = CYCLE[n % len(CYCLE)]
    if name == "identity":
        return im
    if name == "two":
        names = list(EDITS)
        return EDITS[rng.choice(names)](EDITS[rng.choice(names)](im, rng), rng)
    return EDITS[name](im, rng)
