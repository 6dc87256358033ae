"""Render an SVG icon set into brand-like training marks (256x256 PNG), one per icon.

    npm pack @mdi/svg@7.4.47 && tar xzf mdi-svg-7.4.47.tgz
    python scripts/render_training_marks.py --svg package/svg --meta package/meta.json \
        --out data/train-marks --count 3000

The training marks must not be the marks the service is evaluated on: LogoBench is
rendered from simple-icons, so this uses the Material Design Icons set and leaves out
its "Brand / Logo" icons and "-outline" twins. Each glyph gets a random style a
registry would hold: a coloured glyph on white, a white glyph on a coloured badge
(circle or rounded square), or a coloured glyph on a tinted tile.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
from pathlib import Path

import cairosvg
from PIL import Image, ImageDraw

SIZE = 256


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def _color(rng: random.Random, dark: bool = True):
    lo, hi = (0, 200) if dark else (150, 255)
    return [rng.randint(lo, hi) for _ in range(3)]


def _glyph(svg: str, color, size: int) -> Image.Image:
    svg = re.sub(r"<path ", f'<path fill="{_hex(color)}" ', svg)
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size)
    return Image.open(io.BytesIO(png)).convert("RGBA")


def render(svg: str, rng: random.Random) -> Image.Image:
    style = rng.randrange(3)
    canvas = Image.new("RGB", (SIZE, SIZE), "white")
    if style == 0:
        g = _glyph(svg, _color(rng), round(SIZE * rng.uniform(0.75, 0.95)))
    else:
        fill = _color(rng) if style == 1 else _color(rng, dark=False)
        d = ImageDraw.Draw(canvas)
        box = (8, 8, SIZE - 8, SIZE - 8)
        if rng.random() < 0.5:
            d.ellipse(box, fill=tuple(fill))
        else:
            d.rounded_rectangle(box, radius=rng.randint(10, 60), fill=tuple(fill))
        ink = [255, 255, 255] if style == 1 else _color(rng)
        g = _glyph(svg, ink, round(SIZE * rng.uniform(0.5, 0.65)))
    canvas.paste(g, ((SIZE - g.width) // 2, (SIZE - g.height) // 2), g)
    return canvas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--svg", type=Path, required=True, help="folder of SVG icons")
    p.add_argument("--meta", type=Path, help="MDI meta.json, to leave out Brand / Logo icons")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    skip = set()
    if args.meta:
        for m in json.loads(args.meta.read_text()):
            if "Brand / Logo" in m.get("tags", []) or m.get("deprecated"):
                skip.add(m["name"])
    names = sorted(f.stem for f in args.svg.glob("*.svg")
                   if f.stem not in skip and not f.stem.endswith("-outline"))
    rng = random.Random(args.seed)
    rng.shuffle(names)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names[:args.count]:
        render((args.svg / f"{name}.svg").read_text(), rng).save(args.out / f"{name}.png")
    print(f"{min(len(names), args.count)} marks from {len(names)} eligible icons in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
