"""The background set: descriptors of brand-free marks that are in no register.

The calibration needs marks that are really unregistered, to measure what an
unregistered query scores. Registered marks held out of the index are not: their
siblings (the same mark in one colour, in outline, with its words) stay indexed, and
score like the mark itself (see docs/decision.md). The background set is generic icons,
emoji, flags and made-up wordmarks (scripts/render_background_marks.py), each encoded
as a query is, untouched and through one edit of the calibration's cycle
(indexer.network.augment.CYCLE). Its descriptors ship beside the weights they were
encoded with, so a build needs no images and no encoder passes for them, and two builds
of one register get the same threshold.

    python -m indexer.network.background --images data/background --out FILE.npz

encodes a rendered set anew (needed after retraining: the file records the encoder's
identity, and an encoder whose identity differs gets no background set).
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.network.augment import CYCLE, nth_edit
from indexer.network.encoder import DEFAULT_ENCODER, WEIGHTS_FILE, Encoder, load_encoder
from indexer.network.preprocess import open_image, to_query

log = logging.getLogger(__name__)

BACKGROUND_FILE = WEIGHTS_FILE.parent / "background.npz"
SEED = 0


@dataclass(frozen=True)
class Background:
    """Raw (unprojected) unit descriptors: each mark untouched, and edited once."""
    clean: np.ndarray
    edited: np.ndarray
    identity: dict  # the encoder's (EncoderIdentity.to_dict()) they were made with
    sources: dict  # what the marks are (the renderer's sources.json)

    def __len__(self) -> int:
        return len(self.clean)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, clean=self.clean.astype(np.float16),
                                edited=self.edited.astype(np.float16),
                                identity=json.dumps(self.identity, sort_keys=True),
                                sources=json.dumps(self.sources, sort_keys=True))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Background":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["clean"].astype(np.float32), z["edited"].astype(np.float32),
                       json.loads(str(z["identity"])), json.loads(str(z["sources"])))


def for_encoder(encoder: Encoder, path: str | Path = BACKGROUND_FILE) -> Background | None:
    """The background set made with this very encoder, or None (with the reason logged)."""
    path = Path(path)
    if not path.exists():
        log.warning("no background set at %s: calibrating without one", path)
        return None
    bg = Background.load(path)
    if bg.identity != json.loads(json.dumps(encoder.identity.to_dict())):
        log.warning("the background set %s was encoded by %s, not by %s: calibrating without "
                    "it (python -m indexer.network.background makes one)", path,
                    bg.identity.get("name"), encoder.identity.short())
        return None
    return bg


def encode(encoder: Encoder, files: list[Path], batch: int = 16, seed: int = SEED,
           progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Raw descriptors of each file as a query, untouched and through one edit (the
    i-th mark gets the cycle's edit i, skipping the untouched one)."""
    from tqdm import tqdm

    rng = random.Random(seed)
    edits = len(CYCLE) - 1
    clean, edited = [], []
    for start in tqdm(range(0, len(files), batch), disable=not progress, unit="batch"):
        ims = [open_image(f.read_bytes()) for f in files[start:start + batch]]
        clean.append(encoder.descriptors([to_query(im, encoder.preprocess).array for im in ims]))
        copies = [nth_edit(im, 1 + (start + i) % edits, rng) for i, im in enumerate(ims)]
        edited.append(encoder.descriptors([to_query(c, encoder.preprocess).array
                                           for c in copies]))
    return np.concatenate(clean), np.concatenate(edited)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m indexer.network.background",
                                description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, required=True,
                   help="the rendered set (scripts/render_background_marks.py --out)")
    p.add_argument("--out", type=Path, default=BACKGROUND_FILE)
    p.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = sorted(args.images.glob("*/*.png"))
    if not files:
        print(f"error: no PNG files in the folders of {args.images}", file=sys.stderr)
        return 2
    encoder = load_encoder(args.encoder)
    clean, edited = encode(encoder, files)
    record = args.images / "sources.json"
    sources = json.loads(record.read_text()) if record.exists() else {}
    sources["files"] = len(files)
    Background(clean, edited, encoder.identity.to_dict(), sources).save(args.out)
    print(f"{len(files)} background marks encoded by {encoder.identity.short()} into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
