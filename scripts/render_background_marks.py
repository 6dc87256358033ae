"""Render the background set: brand-free marks the decision compares every query with.

    npm pack @mdi/svg@7.4.47 @tabler/icons@3.19.0 @twemoji/svg@15.0.0 circle-flags@2.8.3
    (untar each into its own folder)
    python scripts/render_background_marks.py --mdi mdi/package --tabler tabler/package \
        --twemoji twemoji/package --flags circle-flags/package --out data/background

A register's unregistered queries are marks of every style, and a query that looks like
many marks (a letter in a circle, a round badge, a flag-like disc) must not be said to
exist because the register holds one more of them. The background set stands for "marks
in general": generic icons, emoji, flags and made-up wordmarks, **never** logos, brands,
app icons or coin icons (the evaluation registers are brand marks; see DEVELOPERS.md).
So: MDI without its "Brand / Logo" icons and without the 3,000 icons the shipped network
was trained on (the same seed and order as scripts/render_training_marks.py), Tabler's
outline icons without its `brand-*` icons, Twemoji (its flag and keycap emoji included,
no logos there), circle-flags' country flags (not its `other/` folder: NATO, the
Olympics), and wordmarks of made-up words from a seed the training did not use.

Each source gets its own folder under --out, and `sources.json` records the packages,
counts and rules.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_training_marks import (  # noqa: E402
    CRYPTO, SIZE, mdi_names, render, render_colour, render_stroke, render_wordmark,
    system_fonts, tabler_icons)

TRAINING_SEED, TRAINING_COUNT = 0, 3000  # what render_training_marks.py took from MDI


def mdi_unused(root: Path) -> list[Path]:
    """The eligible MDI icons the shipped network never saw, in a fixed order."""
    names = mdi_names(root / "svg", root / "meta.json")
    random.Random(TRAINING_SEED).shuffle(names)
    return [root / "svg" / f"{n}.svg" for n in names[TRAINING_COUNT:]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mdi", type=Path, required=True, help="@mdi/svg package folder")
    p.add_argument("--tabler", type=Path, required=True, help="@tabler/icons package folder")
    p.add_argument("--twemoji", type=Path, required=True, help="@twemoji/svg package folder")
    p.add_argument("--flags", type=Path, required=True, help="circle-flags package folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-source", type=int, default=400)
    p.add_argument("--seed", type=int, default=1)  # training used 0
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    sources = {
        "mdi": (mdi_unused(args.mdi), lambda s: render(s, rng),
                "@mdi/svg 7.4.47 without Brand / Logo, -outline twins and the 3,000 training icons"),
        "tabler": (tabler_icons(args.tabler), lambda s: render_stroke(s, rng),
                   "@tabler/icons 3.19.0 outline, no brand-* and no coin symbols"),
        "twemoji": (sorted((args.twemoji).glob("*.svg")), lambda s: render_colour(s, rng),
                    "@twemoji/svg 15.0.0"),
        "flags": (sorted((args.flags / "flags").glob("*.svg")), lambda s: render_colour(s, rng),
                  "circle-flags 2.8.3, country flags (flags/*.svg, not other/ or language/)"),
    }
    record = {"seed": args.seed, "size": SIZE, "sources": {}}
    for name, (files, draw, what) in sources.items():
        files = list(files)
        rng.shuffle(files)
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        # Coin symbols are drawn and thrown away, not left out of the draw: every other
        # mark then stays exactly as drawn before (the training marks were chosen apart
        # from these).
        n, coins = 0, 0
        for f in files[:args.per_source]:
            try:
                im = draw(f.read_text())
                if CRYPTO.search(f.stem):
                    coins += 1
                    continue
                im.save(out / f"{f.stem}.png")
                n += 1
            except Exception as e:  # a malformed SVG: skipped, counted
                print(f"skipped {f}: {e}", file=sys.stderr)
        record["sources"][name] = {"what": what, "eligible": len(files), "rendered": n,
                                   "coin_symbols_left_out": coins}
        print(f"{name}: {n} of {len(files)} eligible")
    fonts = system_fonts()
    out = args.out / "wordmarks"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.per_source):
        render_wordmark(rng, fonts).save(out / f"word-{i:05d}.png")
    record["sources"]["wordmarks"] = {"what": f"made-up words in {len(fonts)} fonts, seed "
                                      f"{args.seed}", "eligible": None,
                                      "rendered": args.per_source}
    (args.out / "sources.json").write_text(json.dumps(record, indent=1))
    print(f"wordmarks: {args.per_source} in {len(fonts)} fonts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
