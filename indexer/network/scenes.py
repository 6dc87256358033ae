"""Brand-free photographs of marks: training scenes for the mark detector, and close-ups
of one mark for the descriptor (indexer.network.augment.photographed).

A query is often a photograph: a mark on a shop sign, a sticker, a label, a card on a
table. The detector (indexer.network.detector) learns to find marks in such pictures
from scenes made here: brand-free marks (scripts/render_training_marks.py: generic
icons and made-up words) cut out of their white canvas, sometimes on a light or dark
card, turned, put in perspective and shadowed, on a surface made up here (plain,
graded, patterned, grained, or a cluttered pseudo-photograph of soft shapes), then
"photographed": uneven light, a colour cast, blur, sensor noise and JPEG.

No photograph is used: the sample photographs of scikit-image and scikit-learn are the
evaluation's backgrounds and must never be trained on; the surfaces are all drawn.
Each scene comes with the boxes (x, y, w, h) of its marks, card included.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

# A scene's sides, and a mark's longer side as a share of the scene's shorter side.
SCENE_SIDES = (400, 820)
MARK_SHARE = (0.12, 0.6)
# A close-up (`close_up`): one mark on a patch of surface a little larger than it.
CLOSE_UP_SIDES = (160, 360)
CLOSE_UP_SHARE = (0.4, 0.65)
# How many marks a scene holds, with their odds.
MARK_COUNTS = ((0, 0.15), (1, 0.55), (2, 0.25), (3, 0.05))


@dataclass
class Scene:
    image: Image.Image
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h


def _colour(rng: random.Random, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))


def cut_out(mark: Image.Image, tol: int = 24) -> Image.Image:
    """An RGB mark on its canvas -> RGBA, the canvas around it transparent (the canvas
    enclosed by the mark stays): a flood fill, from the border, of what is within `tol`
    of the border's colour (white, or the tint of a tinted canvas)."""
    mark = mark.convert("RGB")
    a = np.asarray(mark, dtype=np.int16)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    far = np.abs(a - np.median(edge, axis=0)).max(axis=2) > tol
    # A copy: Pillow's fromarray() may share the array's read-only memory, and
    # floodfill() then changes nothing.
    grid = Image.fromarray(np.pad(np.where(far, 0, 255).astype(np.uint8), 1,
                                  constant_values=255)).copy()
    ImageDraw.floodfill(grid, (0, 0), 128)
    outside = np.asarray(grid)[1:-1, 1:-1] == 128
    alpha = Image.fromarray(np.where(outside, 0, 255).astype(np.uint8), "L")
    alpha = alpha.filter(ImageFilter.GaussianBlur(0.6))
    out = mark.convert("RGBA")
    out.putalpha(alpha)
    box = alpha.point(lambda v: 255 if v > 40 else 0).getbbox()
    return out.crop(box) if box else out


# -- surfaces ------------------------------------------------------------------------
def _value_noise(rng: random.Random, w: int, h: int, octaves: int = 4) -> np.ndarray:
    """Smooth noise in [0, 1]: random grids upsampled and summed over octaves."""
    nrng = np.random.default_rng(rng.randrange(2 ** 32))
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    cells = rng.randint(2, 6)
    for _ in range(octaves):
        grid = Image.fromarray((nrng.random((cells, cells)) * 255).astype(np.uint8), "L")
        out += amp * np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255
        total += amp
        amp *= 0.5
        cells *= 2
    return out / total


def _two_tone(a: np.ndarray, c0, c1) -> Image.Image:
    a = np.clip(a, 0, 1)[..., None]
    rgb = np.asarray(c0, np.float32) * (1 - a) + np.asarray(c1, np.float32) * a
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _gradient(rng, w, h):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.6:
        t = rng.uniform(0, math.pi)
        a = (xx * math.cos(t) + yy * math.sin(t))
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        a = np.hypot(xx - cx, yy - cy)
    a = (a - a.min()) / max(1e-6, a.max() - a.min())
    return _two_tone(a, _colour(rng), _colour(rng))


def _pattern(rng, w, h):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = rng.uniform(0, math.pi)
    u, v = xx * math.cos(t) + yy * math.sin(t), -xx * math.sin(t) + yy * math.cos(t)
    p = rng.uniform(4, 40)
    kind = rng.randrange(3)
    if kind == 0:  # stripes
        a = (np.sin(u / p * 2 * math.pi) > 0).astype(np.float32)
    elif kind == 1:  # checks
        a = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    else:  # weave
        a = 0.5 + 0.25 * np.sin(u / p * 2 * math.pi) + 0.25 * np.sin(v / p * 2 * math.pi)
    c0 = _colour(rng)
    c1 = tuple(int(np.clip(c + rng.randint(-60, 60), 0, 255)) for c in c0)
    return _two_tone(a, c0, c1).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def _grain(rng, w, h):
    """Wood, stone, fabric, paper: smooth noise in two or three colours, stretched."""
    sx = rng.choice([1, 1, 4, 8])
    a = _value_noise(rng, max(8, w // sx), h, octaves=5)
    a = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((w, h)), np.float32) / 255
    if rng.random() < 0.5:
        a = (np.sin(a * rng.uniform(6, 30)) + 1) / 2
    return _two_tone(a, _colour(rng), _colour(rng))


def _clutter(rng, w, h):
    """A pseudo-photograph: a graded ground with soft shapes of every size over it, some
    in focus. Teaches the detector that an edge or a blob is not yet a mark."""
    im = _gradient(rng, w, h) if rng.random() < 0.5 else _grain(rng, w, h)
    for _ in range(rng.randint(4, 40)):
        layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        s = rng.uniform(0.05, 0.8) * min(w, h)
        x, y = rng.uniform(-s / 2, w), rng.uniform(-s / 2, h)
        fill = _colour(rng) + (rng.randint(120, 255),)
        kind = rng.randrange(4)
        if kind == 0:
            d.ellipse([x, y, x + s, y + s * rng.uniform(0.3, 1.5)], fill=fill)
        elif kind == 1:
            d.rectangle([x, y, x + s * rng.uniform(0.2, 2), y + s * rng.uniform(0.2, 2)], fill=fill)
        elif kind == 2:
            pts = [(x + rng.uniform(0, s), y + rng.uniform(0, s)) for _ in range(rng.randint(3, 7))]
            d.polygon(pts, fill=fill)
        else:
            d.line([x, y, x + rng.uniform(-s, s), y + rng.uniform(-s, s)], fill=fill,
                   width=rng.randint(1, 12))
        sharp = rng.random() < 0.3
        layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1) if sharp
                                                      else rng.uniform(2, 14)))
        im.paste(layer, (0, 0), layer)
    return im


def _fur(rng, w, h):
    """Fine directional grain over a graded ground: fur, grass, brushed metal, hair."""
    nrng = np.random.default_rng(rng.randrange(2 ** 32))
    grain = Image.fromarray((nrng.random((h, w)) * 255).astype(np.uint8), "L")
    length = rng.randint(3, 15)
    grain = grain.resize((w, max(1, h // length))).resize((w, h), Image.Resampling.BICUBIC)
    grain = grain.rotate(rng.uniform(0, 180), Image.Resampling.BILINEAR, expand=False)
    base = np.asarray(_gradient(rng, w, h) if rng.random() < 0.5 else _grain(rng, w, h),
                      np.float32)
    g = (np.asarray(grain, np.float32) / 255 - 0.5) * rng.uniform(20, 90)
    return Image.fromarray(np.clip(base + g[..., None], 0, 255).astype(np.uint8), "RGB")


def _objects(rng, im):
    """Things a photograph shows that are not marks: shaded round bodies with a
    highlight (cups, eyes, balls, heads), rims and rings, soft shadows."""
    w, h = im.size
    for _ in range(rng.randint(1, 6)):
        s = rng.uniform(0.1, 0.7) * min(w, h)
        x, y = rng.uniform(-s / 3, w - s / 2), rng.uniform(-s / 3, h - s / 2)
        sy = s * rng.uniform(0.5, 1.4)
        yy, xx = np.mgrid[0:round(sy), 0:round(s)].astype(np.float32)
        r = np.hypot((xx - s / 2) / (s / 2), (yy - sy / 2) / (sy / 2))
        inside = (r < 1).astype(np.float32)
        shade = 1 - 0.6 * r ** 2
        lx, ly = rng.uniform(0.2, 0.8) * s, rng.uniform(0.2, 0.8) * sy
        hl = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * (0.08 * s) ** 2)) * rng.uniform(0, 1)
        c = np.asarray(_colour(rng), np.float32)
        rgb = np.clip(c * shade[..., None] + 255 * hl[..., None], 0, 255).astype(np.uint8)
        if rng.random() < 0.4:  # a ring: rim of a cup, an iris
            inside *= (r > rng.uniform(0.5, 0.9)).astype(np.float32)
        body = Image.fromarray(rgb, "RGB").convert("RGBA")
        alpha = Image.fromarray((inside * 255).astype(np.uint8), "L")
        body.putalpha(alpha.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3))))
        im.paste(body, (round(x), round(y)), body)
    return im


def surface(rng: random.Random, w: int, h: int) -> Image.Image:
    kind = rng.choices(["plain", "gradient", "pattern", "grain", "fur", "clutter"],
                       [0.08, 0.12, 0.12, 0.15, 0.15, 0.38])[0]
    if kind == "plain":
        im = Image.new("RGB", (w, h), _colour(rng))
    else:
        im = {"gradient": _gradient, "pattern": _pattern, "grain": _grain, "fur": _fur,
              "clutter": _clutter}[kind](rng, w, h)
    if rng.random() < 0.4:
        im = _objects(rng, im)
    return im


# -- a mark as printed and placed ----------------------------------------------------
def _on_card(rng: random.Random, mark: Image.Image) -> Image.Image:
    pad = round(max(mark.size) * rng.uniform(0.08, 0.3))
    w, h = mark.width + 2 * pad, mark.height + 2 * pad
    light = rng.random() < 0.6
    fill = _colour(rng, 215, 255) if light else _colour(rng, 0, 70)
    card = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(card).rounded_rectangle([0, 0, w - 1, h - 1], radius=round(
        min(w, h) * rng.uniform(0, 0.25)), fill=fill + (255,))
    card.alpha_composite(mark, (pad, pad))
    return card


def _perspective(rng: random.Random, im: Image.Image, strength: float) -> Image.Image:
    w, h = im.size
    j = lambda s: rng.uniform(-strength, strength) * s  # noqa: E731
    # Where each output corner samples the input (Pillow's QUAD: ul, ll, lr, ur).
    quad = (j(w), j(h), j(w), h + j(h), w + j(w), h + j(h), w + j(w), j(h))
    return im.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BICUBIC)


def placed_mark(rng: random.Random, mark: Image.Image, side: int) -> Image.Image:
    """A clean RGB mark -> RGBA, as it stands in a scene, its longer side about `side`."""
    m = cut_out(mark)
    if rng.random() < 0.5:
        m = _on_card(rng, m)
    scale = side / max(m.size)
    m = m.resize((max(4, round(m.width * scale)), max(4, round(m.height * scale))),
                 Image.Resampling.LANCZOS)
    if rng.random() < 0.7:
        m = m.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC, expand=True)
    if rng.random() < 0.6:
        border = round(0.1 * max(m.size))
        big = Image.new("RGBA", (m.width + 2 * border, m.height + 2 * border), (0, 0, 0, 0))
        big.alpha_composite(m, (border, border))
        m = _perspective(rng, big, 0.08)
    box = m.getchannel("A").point(lambda v: 255 if v > 40 else 0).getbbox()
    return m.crop(box) if box else m


def _shadow(rng: random.Random, m: Image.Image) -> tuple[Image.Image, tuple[int, int]]:
    r = rng.uniform(2, 10)
    pad = round(3 * r)
    alpha = Image.new("L", (m.width + 2 * pad, m.height + 2 * pad), 0)
    alpha.paste(m.getchannel("A").point(lambda v: round(v * rng.uniform(0.3, 0.6))), (pad, pad))
    shadow = Image.new("RGBA", alpha.size, (0, 0, 0, 255))
    shadow.putalpha(alpha.filter(ImageFilter.GaussianBlur(r)))
    off = (rng.randint(-12, 12) - pad, rng.randint(-12, 12) - pad)
    return shadow, off


def _print(rng: random.Random, im: Image.Image, m: Image.Image, at: tuple[int, int]) -> None:
    """Put mark `m` on the surface: stuck on (a sticker, a card), or printed on it, its
    ink multiplied with the surface so the grain shows through, sometimes faded."""
    alpha = m.getchannel("A")
    if rng.random() < 0.3:
        alpha = alpha.point(lambda v, f=rng.uniform(0.7, 1.0): round(v * f))
    if rng.random() < 0.35:
        under = im.crop((at[0], at[1], at[0] + m.width, at[1] + m.height))
        ink = ImageChops.multiply(under, m.convert("RGB"))
        im.paste(ink, at, alpha)
    else:
        im.paste(m.convert("RGB"), at, alpha)


def _overlaps(box, boxes, gap: int = 4) -> bool:
    x, y, w, h = box
    return any(x < bx + bw + gap and bx < x + w + gap and y < by + bh + gap and by < y + h + gap
               for bx, by, bw, bh in boxes)


# -- the camera -----------------------------------------------------------------------
def photograph(rng: random.Random, im: Image.Image) -> Image.Image:
    """Uneven light, a colour cast, blur, sensor noise and JPEG."""
    w, h = im.size
    a = np.asarray(im, np.float32)
    light = 0.65 + 0.5 * _value_noise(rng, w, h, octaves=2)
    if rng.random() < 0.4:  # a directional fall-off
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(t) + yy * math.sin(t)
        light *= 1 - rng.uniform(0, 0.35) * (g - g.min()) / max(1e-6, g.max() - g.min())
    cast = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
    a = a * light[..., None] * cast + rng.uniform(-15, 15)
    nrng = np.random.default_rng(rng.randrange(2 ** 32))
    a += nrng.normal(0, rng.uniform(0, 7), a.shape)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.7:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.4)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=rng.randint(55, 93))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def make_scene(rng: random.Random, marks: Sequence[Path | Image.Image],
               n: int | None = None) -> Scene:
    """One photographed scene of `n` (by default a random count of) marks drawn from
    `marks` (clean marks on white, or their files), with their boxes."""
    if n is None:
        n = rng.choices([c for c, _ in MARK_COUNTS], [p for _, p in MARK_COUNTS])[0]
    return compose(rng, [rng.choice(marks) for _ in range(n)])


def compose(rng: random.Random, marks: Sequence[Path | Image.Image],
            sides: tuple[int, int] = SCENE_SIDES,
            share: tuple[float, float] = MARK_SHARE) -> Scene:
    """A photographed scene of each of `marks` once (where there is room), with their
    boxes in the same order; the scene's sides drawn from `sides`, each mark's longer
    side a `share` of its shorter side."""
    w, h = rng.randint(*sides), rng.randint(*sides)
    im = surface(rng, w, h)
    boxes: list[tuple[int, int, int, int]] = []
    for mark in marks:
        side = round(rng.uniform(*share) * min(w, h))
        if isinstance(mark, Image.Image):
            m = placed_mark(rng, mark.convert("RGB"), side)
        else:
            with Image.open(mark) as f:
                m = placed_mark(rng, f.convert("RGB"), side)
        if m.width >= w or m.height >= h:
            continue
        for _ in range(20):  # a free place
            box = (rng.randint(0, w - m.width), rng.randint(0, h - m.height), m.width, m.height)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        if rng.random() < 0.35:
            shadow, (dx, dy) = _shadow(rng, m)
            im.paste(shadow, (box[0] + dx, box[1] + dy), shadow)
        _print(rng, im, m, box[:2])
        boxes.append(box)
    return Scene(photograph(rng, im), boxes)


def close_up(rng: random.Random, mark: Image.Image) -> Scene:
    """One mark photographed on a patch of surface not much larger than it: what the
    server cuts out of a photograph around a mark, for training the descriptor. Cheaper
    than a whole scene (the surface is a few hundred pixels), the same camera. Its
    `boxes` are empty where the placed mark came out larger than the patch."""
    return compose(rng, [mark], CLOSE_UP_SIDES, CLOSE_UP_SHARE)
