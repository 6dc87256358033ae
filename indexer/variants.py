"""Registry-side augmentation: a registered mark is stored as the mean of its descriptors
over its prepared image and a few mild variants of it.

A query is a registered mark after some edit, and the network is touchier than a person
about the commonest ones: a little lost sharpness or resolution, a small tilt. Averaging
the registered mark's descriptor over the mildest versions of those edits moves the stored
vector towards where such copies land. It costs nothing per query; the build encodes each
mark 1 + len(variants) times. The index records the variants it was built with, so that
`add` stores new marks the same way.

The variants work on the prepared (views, size, size, 3) uint8 array, after trimming and
letterboxing, so every image view of the encoder gets the same edit. The build makes them
in its decoding threads (`expand`), beside the decoding.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from PIL import Image, ImageFilter

from indexer.network.preprocess import WHITE


def _blur(im: Image.Image) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(1.0))


def _resolution(divisor: int) -> Callable[[Image.Image], Image.Image]:
    """1/divisor of the resolution and back: what a small web copy keeps."""
    def edit(im: Image.Image) -> Image.Image:
        small = im.resize((im.width // divisor, im.height // divisor), Image.Resampling.BOX)
        return small.resize(im.size, Image.Resampling.BICUBIC)
    return edit


def _rotation(degrees: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=WHITE)


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "blur": _blur, "half": _resolution(2), "quarter": _resolution(4),
    "rot+10": _rotation(10), "rot-10": _rotation(-10)}
# A quarter of the 224 px input is 56 px, the size of a thumbnail or favicon copy; it
# took the place of `half` (112 px), which indexes built before keep using, because the
# build's own label-free calibration estimate rose with it (estimated TPR 0.783 -> 0.799
# on LogoBench's registry; see the README) at the same build cost.
DEFAULT = ("blur", "quarter", "rot+10", "rot-10")


def check(names: Iterable[str]) -> tuple[str, ...]:
    """Names as given, validated; raises ValueError naming the known ones."""
    names = tuple(names)
    unknown = [n for n in names if n not in EDITS]
    if unknown:
        raise ValueError(f"unknown registry variant(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(EDITS)}, or none")
    return names


def parse(text: str) -> tuple[str, ...]:
    """`blur,half` -> ("blur", "half"); `none` or an empty string -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    return check(n.strip() for n in text.split(",") if n.strip())


def expand(array: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """(1 + len(names), views, size, size, 3): the prepared array and its variants."""
    return np.stack([array, *(apply(array, name) for name in names)])


def apply(array: np.ndarray, name: str) -> np.ndarray:
    """One variant of a prepared (views, size, size, 3) uint8 array."""
    edit = EDITS[name]
    return np.stack([np.asarray(edit(Image.fromarray(view))) for view in array])
