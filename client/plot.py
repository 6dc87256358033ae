"""The results picture: the query beside its top-k matches, with serials and scores.

Drawn with Pillow alone so the client stays light (no matplotlib).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 160
CAPTION = 44
PAD = 12
COLUMNS = 5
GREEN, RED, GREY, INK = (30, 140, 60), (190, 40, 40), (200, 200, 200), (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def _tile(data: bytes | None, size: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), "white")
    if data:
        try:
            im = Image.open(io.BytesIO(data))
            im = ImageOps.exif_transpose(im).convert("RGBA")
            im.thumbnail((size, size))
            canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2), im)
        except OSError:
            pass
    return canvas


def draw_results(query: bytes, result: dict, thumbnails: dict[str, tuple[str, bytes]],
                 title: str = "") -> Image.Image:
    """`result` is a response dict (client.api.response_to_dict)."""
    matches = result["matches"]
    cols = max(1, min(COLUMNS, len(matches)))
    rows = max(1, math.ceil(len(matches) / cols))
    qsize = 2 * TILE
    width = PAD * 3 + qsize + cols * (TILE + PAD)
    height = PAD * 2 + 40 + max(qsize + CAPTION, rows * (TILE + CAPTION + PAD))
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    big, small = _font(20), _font(14)
    if result["exists"]:
        head, color = f"Trade Mark Existed! - serial number: {result['matched_serial']}", GREEN
    else:
        head, color = "Trade Mark Not Existed!", RED
    d.text((PAD, PAD), f"{head}   (top score {result['top_score']:.3f}, confidence "
                       f"{result['confidence']:.3f}, threshold {result['threshold']:.3f})",
           fill=color, font=big)
    top = PAD + 40
    img.paste(_tile(query, qsize), (PAD, top))
    d.rectangle((PAD, top, PAD + qsize, top + qsize), outline=GREY)
    d.text((PAD, top + qsize + 6), f"query {title}"[:40], fill=INK, font=small)
    x0 = PAD * 2 + qsize
    for i, m in enumerate(matches):
        x = x0 + (i % cols) * (TILE + PAD)
        y = top + (i // cols) * (TILE + CAPTION + PAD)
        img.paste(_tile(thumbnails.get(m["serial"], ("", None))[1], TILE), (x, y))
        hit = result["exists"] and i == 0
        d.rectangle((x, y, x + TILE, y + TILE), outline=color if hit else GREY,
                    width=3 if hit else 1)
        d.text((x, y + TILE + 4), f"#{i + 1} {m['serial']}  {m['score']:.3f}", fill=INK, font=small)
        d.text((x, y + TILE + 22), m.get("name", "")[:22], fill=INK, font=small)
    return img


def save_results(path: str | Path, *args, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_results(*args, **kwargs).save(path)
    return path
