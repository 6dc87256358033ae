"""Render an SVG icon set into brand-like training marks (256x256 PNG), one per icon.

    npm pack @mdi/svg@7.4.47 && tar xzf mdi-svg-7.4.47.tgz
    python scripts/render_training_marks.py --svg package/svg --meta package/meta.json \
        --out data/train-marks --count 3000 --wordmarks 2000

The training marks must not be the marks the service is evaluated on: LogoBench is
rendered from simple-icons, so this uses the Material Design Icons set and leaves out
its "Brand / Logo" icons and "-outline" twins. Each glyph gets a random style a
registry would hold: a coloured glyph on white, a white glyph on a coloured badge
(circle or rounded square), or a coloured glyph on a tinted tile.

`--wordmarks N` adds N wordmarks: made-up words (random syllables, so no brand's name
on purpose) set in the fonts this machine has (`fc-list`, plus matplotlib's), upper,
lower or title case, in one or two colours, on white, on a coloured bar, under a rule
or beside a simple shape. Icons alone teach the network glyphs; a register is full of
words.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from indexer.words import made_up_word  # noqa: E402  (the repository's root, above)

SIZE = 256


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def _color(rng: random.Random, dark: bool = True):
    lo, hi = (0, 200) if dark else (150, 255)
    return [rng.randint(lo, hi) for _ in range(3)]


def _glyph(svg: str, color, size: int) -> Image.Image:
    import cairosvg  # a dev dependency, needed for the icons only (not the wordmarks)

    svg = re.sub(r"<path ", f'<path fill="{_hex(color)}" ', svg)
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size)
    return Image.open(io.BytesIO(png)).convert("RGBA")


def _centred(canvas: Image.Image, g: Image.Image) -> Image.Image:
    canvas.paste(g, ((SIZE - g.width) // 2, (SIZE - g.height) // 2), g)
    return canvas


def _badge(rng: random.Random, fill) -> Image.Image:
    """A white canvas with a coloured disc or rounded tile filling it."""
    canvas = Image.new("RGB", (SIZE, SIZE), "white")
    d, box = ImageDraw.Draw(canvas), (8, 8, SIZE - 8, SIZE - 8)
    if rng.random() < 0.5:
        d.ellipse(box, fill=tuple(fill))
    else:
        d.rounded_rectangle(box, radius=rng.randint(10, 60), fill=tuple(fill))
    return canvas


def render(svg: str, rng: random.Random) -> Image.Image:
    style = rng.randrange(3)
    if style == 0:
        return _centred(Image.new("RGB", (SIZE, SIZE), "white"),
                        _glyph(svg, _color(rng), round(SIZE * rng.uniform(0.75, 0.95))))
    canvas = _badge(rng, _color(rng) if style == 1 else _color(rng, dark=False))
    ink = [255, 255, 255] if style == 1 else _color(rng)
    return _centred(canvas, _glyph(svg, ink, round(SIZE * rng.uniform(0.5, 0.65))))


def _word(rng: random.Random) -> str:
    return made_up_word(rng)


def system_fonts() -> list[str]:
    """Every TrueType/OpenType font fontconfig knows, plus matplotlib's (if installed)."""
    try:
        out = subprocess.run(["fc-list", "--format", "%{file}\\n"], capture_output=True,
                             text=True, check=False).stdout.split()
    except FileNotFoundError:
        out = []
    try:
        import matplotlib
        out += [str(f) for f in (Path(matplotlib.get_data_path()) / "fonts/ttf").glob("*.ttf")]
    except ImportError:
        pass
    # Symbol, math-extension and fallback fonts have no usable Latin letters.
    bad = re.compile(r"(Math|cmex|cmsy|cmmi|STIXSiz|STIXNonUni|LastResort)", re.I)
    by_name = {Path(f).name: f for f in sorted(out)  # the same font twice counts once
               if f.endswith((".ttf", ".otf")) and not bad.search(f)}
    return sorted(f for f in by_name.values() if _draws_letters(f))


def _draws_letters(font_path: str) -> bool:
    """Some fonts (DejaVu's "Display" cuts) hold no Latin letters at all."""
    im = Image.new("L", (200, 100))
    ImageDraw.Draw(im).text((10, 10), "Ag", font=ImageFont.truetype(font_path, 48), fill=255)
    return im.getbbox() is not None


def _text_image(text: str, font_path: str, color, spacing: int) -> Image.Image:
    font = ImageFont.truetype(font_path, 96)
    widths = [font.getlength(c) for c in text]
    w = int(sum(widths) + spacing * (len(text) - 1)) + 8
    im = Image.new("RGBA", (max(w, 1), 140), (0, 0, 0, 0))
    d, x = ImageDraw.Draw(im), 4
    for i, (c, cw) in enumerate(zip(text, widths)):
        d.text((x, 10), c, font=font, fill=tuple(color[i == 0]) + (255,))
        x += cw + spacing
    return im.crop(im.getbbox() or (0, 0, 1, 1))


def _lettering(rng: random.Random, fonts: list[str]) -> Image.Image:
    """One made-up word, or a word over a smaller one, on a transparent ground."""
    ink = _color(rng)
    colors = [ink, _color(rng) if rng.random() < 0.3 else ink]  # [the rest, the first letter]
    text = _text_image(_word(rng), rng.choice(fonts), colors, rng.choice([0, 0, 4, 12]))
    if rng.random() < 0.25:  # two words on two lines
        below = _text_image(_word(rng), rng.choice(fonts), [_color(rng)] * 2, 0)
        below = below.resize((max(1, below.width * 2 // 3), max(1, below.height * 2 // 3)))
        both = Image.new("RGBA", (max(text.width, below.width), text.height + below.height + 20))
        both.paste(text, ((both.width - text.width) // 2, 0))
        both.paste(below, ((both.width - below.width) // 2, text.height + 20))
        text = both
    return text


def _shape(d: ImageDraw.ImageDraw, box: tuple, rng: random.Random) -> None:
    shape = rng.randrange(3)
    fill = tuple(_color(rng))
    if shape == 0:
        d.ellipse(box, fill=fill)
    elif shape == 1:
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])],
                  fill=fill)


def render_wordmark(rng: random.Random, fonts: list[str]) -> Image.Image:
    """A made-up wordmark centred on a white square: plain, on a bar, over a rule or
    beside a shape."""
    text = _lettering(rng, fonts)
    canvas = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(canvas)
    style = rng.randrange(4)  # plain, on a bar, over a rule, beside a shape
    width = SIZE * rng.uniform(0.65, 0.85) * (0.7 if style == 3 else 1)
    scale = min(width / text.width, SIZE * 0.6 / text.height)
    text = text.resize((max(1, round(text.width * scale)), max(1, round(text.height * scale))))
    x, y = (SIZE - text.width) // 2, (SIZE - text.height) // 2
    if style == 1:  # white letters on a coloured bar
        pad = rng.randint(6, 20)
        d.rounded_rectangle((x - pad, y - pad, x + text.width + pad, y + text.height + pad),
                            radius=rng.randint(0, 30), fill=tuple(_color(rng)))
        text = Image.merge("RGBA", (*Image.new("RGB", text.size, "white").split(),
                                    text.getchannel("A")))
    elif style == 2:
        d.rectangle((x, y + text.height + 8, x + text.width, y + text.height + 8 +
                     rng.randint(3, 10)), fill=tuple(_color(rng)))
    elif style == 3:  # the shape as high as the letters, to their left
        s = text.height + 10
        x = (SIZE - text.width - s - 12) // 2 + s + 12
        _shape(d, (x - s - 12, (SIZE - s) // 2, x - 12, (SIZE + s) // 2), rng)
    canvas.paste(text, (x, y), text)
    return canvas


def _svg_png(svg: str, size: int) -> Image.Image:
    import cairosvg  # a dev dependency (requirements-dev.txt)

    # Drawn at 512 px and resized: cairosvg applies circle-flags' masks in unscaled
    # units, so a flag drawn straight at another size comes out as a quarter disc.
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=512, output_height=512)
    return Image.open(io.BytesIO(png)).convert("RGBA").resize((size, size), Image.LANCZOS)


def _on_white(g: Image.Image) -> Image.Image:
    return _centred(Image.new("RGB", (SIZE, SIZE), "white"), g)


def _stroked(svg: str, rng: random.Random, color) -> str:
    svg = svg.replace("currentColor", _hex(color))
    return re.sub(r'stroke-width="[\d.]+"', f'stroke-width="{rng.choice([1.5, 2, 2.5])}"', svg, 1)


def render_stroke(svg: str, rng: random.Random) -> Image.Image:
    """A Tabler outline icon: strokes in one colour, sometimes inside a circle or tile."""
    g = _svg_png(_stroked(svg, rng, _color(rng)), round(SIZE * rng.uniform(0.7, 0.95)))
    return _on_white(g)


def render_colour(svg: str, rng: random.Random) -> Image.Image:
    """A full-colour SVG (an emoji, a flag) as drawn, at a random size on white."""
    return _on_white(_svg_png(svg, round(SIZE * rng.uniform(0.7, 0.95))))


def render_stroke_badge(svg: str, rng: random.Random) -> Image.Image:
    """An outline icon as a registry holds it: on white half the time, else in white or
    a dark colour on a coloured disc or tile (the crowded round-badge style)."""
    if rng.random() < 0.5:
        return render_stroke(svg, rng)
    light = rng.random() < 0.5
    canvas = _badge(rng, _color(rng, dark=not light))
    ink = _color(rng) if light else [255, 255, 255]
    g = _svg_png(_stroked(svg, rng, ink), round(SIZE * rng.uniform(0.5, 0.65)))
    return _centred(canvas, g)


def render_colour_badge(svg: str, rng: random.Random) -> Image.Image:
    """A full-colour drawing on white, or on a tinted disc or tile a quarter of the time."""
    if rng.random() < 0.75:
        return render_colour(svg, rng)
    canvas = _badge(rng, _color(rng, dark=False))
    return _centred(canvas, _svg_png(svg, round(SIZE * rng.uniform(0.5, 0.65))))


def render_combination(svg: str, rng: random.Random, fonts: list[str]) -> Image.Image:
    """A combination mark: an outline icon beside or above a made-up word, as most
    registered marks are (a device and the name)."""
    ink = _color(rng)
    glyph = _svg_png(_stroked(svg, rng, ink), 256)
    glyph = glyph.crop(glyph.getbbox() or (0, 0, 256, 256))
    text = _lettering(rng, fonts)
    canvas = Image.new("RGB", (SIZE, SIZE), "white")
    if rng.random() < 0.5:  # icon to the left of the word
        h = text.height
        g = glyph.resize((max(1, round(glyph.width * h / glyph.height)), h))
        both = Image.new("RGBA", (g.width + h // 4 + text.width, h))
        both.paste(g, (0, 0))
        both.paste(text, (g.width + h // 4, 0))
    else:  # icon above the word
        w = max(1, text.width // 2)
        g = glyph.resize((w, max(1, round(glyph.height * w / glyph.width))))
        both = Image.new("RGBA", (text.width, g.height + 20 + text.height))
        both.paste(g, ((text.width - g.width) // 2, 0))
        both.paste(text, (0, g.height + 20))
    scale = min(SIZE * rng.uniform(0.7, 0.9) / both.width, SIZE * 0.8 / both.height)
    both = both.resize((max(1, round(both.width * scale)), max(1, round(both.height * scale))))
    canvas.paste(both, ((SIZE - both.width) // 2, (SIZE - both.height) // 2), both)
    return canvas


def mdi_names(svg_dir: Path, meta: Path | None) -> list[str]:
    """MDI's icon names in name order, without its "Brand / Logo" and deprecated icons
    (by `meta`, its meta.json, when given) and without the "-outline" twins."""
    skip = {m["name"] for m in json.loads(meta.read_text())
            if "Brand / Logo" in m.get("tags", []) or m.get("deprecated")} if meta else set()
    return sorted(f.stem for f in svg_dir.glob("*.svg")
                  if f.stem not in skip and not f.stem.endswith("-outline"))


def tabler_icons(root: Path) -> list[Path]:
    """Tabler's outline icons without its `brand-*` ones, in name order."""
    return sorted(f for f in (root / "icons" / "outline").glob("*.svg")
                  if not f.stem.startswith("brand-"))


# Coin symbols are logos of crypto currencies (DEVELOPERS.md: no coin icons in training);
# Tabler draws them as icons and beside other glyphs ("home-bitcoin").
CRYPTO = re.compile(r"bitcoin|dogecoin|ethereum|litecoin|monero|solana|ripple|xrp|currency-nano")


# Fitzpatrick skin-tone modifiers (U+1F3FB-1F3FF): the same emoji in five skin tones.
SKIN_TONE = re.compile(r"-1f3f[b-f]")


def twemoji_svgs(root: Path) -> list[Path]:
    """Twemoji's emoji without their skin-tone variants: a register calls a recoloured
    mark the same mark, so five tones of one emoji would be five marks the loss pushes
    apart (405 of the 800 emoji of the 2026-12-03 attempt were such variants)."""
    return sorted(f for f in root.glob("*.svg") if not SKIN_TONE.search(f.stem))


def _render_extras(args, fonts: list[str]) -> dict:
    """Marks from other brand-free sets, each kept apart from the background set's marks
    (`--exclude`, a folder of scripts/render_background_marks.py): the decision's
    calibration treats those as marks the network never saw."""
    rng = random.Random(f"{args.seed}:extras")  # the MDI icons and words stay as before
    record = {}
    for name, root, listing, draw, count in (
            ("tabler", args.tabler, tabler_icons, render_stroke_badge, args.tabler_count),
            ("twemoji", args.twemoji, twemoji_svgs, render_colour_badge, args.twemoji_count),
            ("combination", args.tabler, tabler_icons,
             lambda s, r: render_combination(s, r, fonts), args.combinations)):
        if root is None or not count:
            continue
        source = "tabler" if name == "combination" else name  # its icons are Tabler's
        shunned = {f.stem for f in (args.exclude / source).glob("*.png")} if args.exclude else set()
        files = [f for f in listing(root) if f.stem not in shunned and not CRYPTO.search(f.stem)]
        rng.shuffle(files)
        n = 0
        for f in files[:count]:
            try:
                draw(f.read_text(), rng).save(args.out / f"{name}-{f.stem}.png")
                n += 1
            except Exception as e:  # a malformed SVG: skipped, counted
                print(f"skipped {f}: {e}")
        record[name] = {"eligible": len(files), "rendered": n, "left_out": len(shunned)}
        print(f"{n} {name} marks from {len(files)} eligible")
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--svg", type=Path, required=True, help="folder of SVG icons")
    p.add_argument("--meta", type=Path, help="MDI meta.json, to leave out Brand / Logo icons")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--wordmarks", type=int, default=0, help="made-up wordmarks to add")
    p.add_argument("--tabler", type=Path, help="@tabler/icons package folder: outline icons")
    p.add_argument("--tabler-count", type=int, default=1000)
    p.add_argument("--twemoji", type=Path, help="@twemoji/svg package folder: emoji")
    p.add_argument("--twemoji-count", type=int, default=1000)
    p.add_argument("--combinations", type=int, default=0,
                   help="marks of a Tabler icon and a made-up word (needs --tabler)")
    p.add_argument("--exclude", type=Path,
                   help="a background set (scripts/render_background_marks.py): its marks "
                        "are left out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = mdi_names(args.svg, args.meta)
    rng = random.Random(args.seed)
    rng.shuffle(names)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names[:args.count]:
        render((args.svg / f"{name}.svg").read_text(), rng).save(args.out / f"{name}.png")
    print(f"{min(len(names), args.count)} marks from {len(names)} eligible icons in {args.out}")
    fonts = system_fonts() if args.wordmarks or args.combinations else []
    if args.wordmarks:  # finding and test-drawing the fonts only when words are asked for
        for i in range(args.wordmarks):
            render_wordmark(rng, fonts).save(args.out / f"word-{i:05d}.png")
        print(f"{args.wordmarks} wordmarks in {len(fonts)} fonts")
    record = {"mdi": {"eligible": len(names), "rendered": min(len(names), args.count)},
              "wordmarks": {"rendered": args.wordmarks, "fonts": len(fonts)}}
    record |= _render_extras(args, fonts)
    (args.out / "sources.json").write_text(json.dumps({"seed": args.seed, **record}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
