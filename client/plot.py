"""The results picture: the query beside its top-k matches, with serials and scores.

Drawn with Pillow alone so the client stays light (no matplotlib).
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from client.api import found_marks

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


def wanted_serials(result: dict) -> list[str]:
    """Every serial the picture shows a thumbnail of."""
    serials = [m["serial"] for m in result["matches"]]
    for mark in found_marks(result):
        serials += [m["serial"] for m in mark["matches"][:COLUMNS]]
    return list(dict.fromkeys(serials))


def _query_tile(query: bytes, marks: list[dict], size: int) -> Image.Image:
    """The query, each found mark boxed and numbered (green: registered, red: not)."""
    canvas = _tile(None, size)
    try:
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(query))).convert("RGB")
    except OSError:
        return canvas
    scale = min(size / im.width, size / im.height)
    shown = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
    ox, oy = (size - shown.width) // 2, (size - shown.height) // 2
    canvas.paste(shown, (ox, oy))
    d = ImageDraw.Draw(canvas)
    for n, mark in enumerate(marks, start=1):
        x, y, w, h = (v * scale for v in mark["box"])
        color = GREEN if mark["exists"] else RED
        d.rectangle((ox + x, oy + y, ox + x + w, oy + y + h), outline=color, width=3)
        d.text((ox + x + 3, oy + y + 2), str(n), fill=color, font=_font(16))
    return canvas


def draw_results(query: bytes, result: dict, thumbnails: dict[str, tuple[str, bytes]],
                 title: str = "") -> Image.Image:
    """`result` is a response dict (client.api.response_to_dict). A photograph's marks
    are boxed on the query and each gets a row of its own matches."""
    marks = found_marks(result)
    if marks:
        rows = [(f"mark {n}: " + (f"exists, {m['matched_serial']}" if m["exists"]
                                   else "not registered"), m["exists"], m["matches"][:COLUMNS])
                for n, m in enumerate(marks, start=1)]
    else:
        matches = result["matches"]
        cols = max(1, min(COLUMNS, len(matches)))
        rows = [("", result["exists"], matches[i:i + cols])
                for i in range(0, max(1, len(matches)), cols)]
    cols = max(1, max(len(r[2]) for r in rows))
    label = 22 if marks else 0
    row_h = label + TILE + CAPTION + PAD
    qsize = 2 * TILE
    width = PAD * 3 + qsize + cols * (TILE + PAD)
    height = PAD * 2 + 40 + max(qsize + CAPTION, len(rows) * row_h)
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
    img.paste(_query_tile(query, marks, qsize), (PAD, top))
    d.rectangle((PAD, top, PAD + qsize, top + qsize), outline=GREY)
    caption = f"query {title}"[:40] + (f"  ({len(marks)} marks found)" if marks else "")
    d.text((PAD, top + qsize + 6), caption, fill=INK, font=small)
    x0 = PAD * 2 + qsize
    for r, (text, exists, matches) in enumerate(rows):
        y = top + r * row_h
        if text:
            d.text((x0, y), text, fill=GREEN if exists else RED, font=small)
        y += label
        for i, m in enumerate(matches):
            x = x0 + i * (TILE + PAD)
            img.paste(_tile(thumbnails.get(m["serial"], ("", None))[1], TILE), (x, y))
            hit = exists and i == 0 and (marks or r == 0)
            d.rectangle((x, y, x + TILE, y + TILE), outline=(GREEN if hit else GREY),
                        width=3 if hit else 1)
            rank = i + 1 + (0 if marks else r * cols)
            d.text((x, y + TILE + 4), f"#{rank} {m['serial']}  {m['score']:.3f}", fill=INK,
                   font=small)
            d.text((x, y + TILE + 22), m.get("name", "")[:22], fill=INK, font=small)
    return img


def save_results(path: str | Path, *args, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_results(*args, **kwargs).save(path)
    return path
