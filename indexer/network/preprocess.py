"""Image bytes -> letterboxed RGB uint8 arrays of fixed size, one per view of the mark.

Trademark images arrive in every mode Pillow knows (palette PNGs with a
transparent colour, 16-bit scans, CMYK print files, phone photos with an EXIF
rotation), so decoding normalises all of them to one RGB picture on white.
Normalisation to the network's input range happens later, on the batch tensor.
"""
from __future__ import annotations

import functools
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

WHITE = (255, 255, 255)
# Pixel count checked from the header, before any pixel is decoded: a 30000x30000
# PNG of a few KB would otherwise take gigabytes to decode.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can read; the message says why."""


class InvalidRegion(ImageDecodeError):
    """The region of interest of a query is empty or not inside its image."""


# (x, y, width, height) in pixels of an image as a viewer shows it.
Region = tuple[int, int, int, int]


class BlankImageError(ImageDecodeError):
    """The image decodes, but there is no mark in it: every pixel is white (or transparent,
    which is flattened onto white). Such a file matches every other blank one perfectly,
    so it is neither indexed nor searched. A flat colour other than white is a mark (a
    colour mark) and is kept."""


# How far from white (per channel, 0-255) a pixel may be and still count as blank paper:
# JPEG and scanner noise on an empty page stays within it.
BLANK_LEVELS = 8


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the network's input; travels with the encoder weights."""

    size: int = 224
    mean: float = 127.0
    std: float = 128.0
    fill: tuple[int, int, int] = WHITE
    trim: bool = True
    # What the network sees of each mark, in this order (see VIEWS); the encoder
    # concatenates one descriptor per view.
    views: tuple[str, ...] = ("rgb",)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        views = tuple(self.views)  # a list, when read from JSON
        unknown = [v for v in views if v not in VIEWS]
        if not views or unknown:
            raise ValueError(f"unknown preprocessing views {unknown or views!r}; "
                             f"known: {', '.join(VIEWS)}")
        object.__setattr__(self, "views", views)
        object.__setattr__(self, "fill", tuple(self.fill))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fill"] = list(self.fill)
        del d["max_pixels"]  # a safety limit, not part of what the vectors mean
        if self.views == ("rgb",):
            del d["views"]  # as written before views existed: such indexes keep matching
        else:
            d["views"] = list(self.views)
        return d


@dataclass(frozen=True)
class Decoded:
    """A decoded image, and its size as a fraction of the file's (< 1: decoded reduced)."""

    image: Image.Image
    scale: float = 1.0


# A JPEG is decoded reduced only as far as its mark keeps this many times the network's
# input size on its longer side: Pillow's own thumbnail() default (reducing_gap=2.0).
DRAFT_GAP = 2.0
# MPO: a JPEG with more pictures after the first (many phone cameras write them).
JPEGS = ("JPEG", "MPO")


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` to an RGB image: first frame, EXIF-rotated, transparency on white."""
    return _decode(data, max_pixels).image


def open_scaled(data: bytes, cfg: PreprocessConfig) -> Decoded:
    """`open_image`, at the size the network needs: a JPEG much larger than its mark needs
    is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, Pillow's draft()),
    its mark keeping DRAFT_GAP x `cfg.size` pixels; any other image at full size. A 12 Mpx
    phone photo took 19-36 ms to decode in full, and every later step paid for its size."""
    least = DRAFT_GAP * cfg.size
    return _decode(data, cfg.max_pixels,
                   lambda size: _draft_divisor(data, size, least, cfg.trim))


def _decode(data: bytes, max_pixels: int,
            divisor: Callable[[tuple[int, int]], int] | None = None) -> Decoded:
    """`divisor(size)`: how far a JPEG of that size may be reduced while decoding."""
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height / 1e6:.0f} Mpx, over the "
                    f"{max_pixels / 1e6:.0f} Mpx limit; downscale it before sending")
            if divisor is not None and im.format in JPEGS and (d := divisor(im.size)) > 1:
                # At least 1 px: a side under d px is not reduced (Pillow divides by it).
                im.draft(None, (max(1, width // d), max(1, height // d)))
            im.load()
            scale = im.width / width
            # In place: a copy only when the image is turned (a 12 Mpx photo's copy: 4-7 ms).
            ImageOps.exif_transpose(im, in_place=True)
            return Decoded(to_rgb(im), scale)
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError as e:
        fmt = sniff_format(data)
        if fmt:
            raise ImageDecodeError(f"cannot decode image: a {fmt} file, damaged or truncated "
                                   f"({len(data)} bytes)") from e
        raise ImageDecodeError(
            f"not an image in a known format ({len(data)} bytes, starting {data[:8]!r}); "
            "send JPEG, PNG, GIF, BMP, TIFF or WebP") from e
    except Image.DecompressionBombError as e:
        # Pillow's own header check, for images far past any sane limit.
        raise ImageDecodeError(f"image is over the {max_pixels / 1e6:.0f} Mpx limit ({e}); "
                               "downscale it before sending") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports unknown formats and truncated files as OSError/SyntaxError.
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {e}") from e


def open_at_least(data: bytes, cfg: PreprocessConfig, side: int) -> Decoded:
    """`open_image`, a JPEG reduced while decoding only as far as its longer side keeps
    `side` px (a photograph whose marks are parts of it, not the whole)."""
    return _decode(data, cfg.max_pixels,
                   lambda size: next((d for d in (8, 4, 2) if max(size) / d >= side), 1))


@dataclass(frozen=True)
class FirstLook:
    """What trimming sees first of a picture: a copy at most `probe` px on its longer side,
    that copy's scale, the mark's box on it, and whether the background is a texture.
    A server with a detector asks looks_photographed and then trim_background of every
    clean mark; taken once for both, it spares a lone request ~0.3 ms of its ~3."""
    small: Image.Image
    scale: float
    box: object  # _first_box's: a box, None, or _NOT_PLAIN
    textured: bool


def first_look(im: Image.Image, tol: int = 32, probe: int = 128) -> FirstLook:
    small, scale = _probe(im, probe)
    return FirstLook(small, scale, *_first_box(small, tol))


def looks_photographed(im: Image.Image, tol: int = 32, probe: int = 128,
                       look: FirstLook | None = None) -> bool:
    """Whether the picture is a photograph with a mark somewhere in it rather than a
    mark's file: its border is a texture (as trim_background tells them apart), or one
    colour under uneven light.

    A register's file, a screenshot or a scan has a flat background: half its border
    within UNEVEN_LIGHT levels of the border's colour once noise is averaged out (the
    probe box-blurred over 5 x 5 pixels). A plain wall, table or card photographed is
    lit unevenly: 52 of the 53 made-up photographs on one-colour surfaces among 800
    (indexer.network.scenes, seed 123) are that far off at half their border, and 2 of
    300 brand-free marks on white with sensor noise up to sigma 12 and JPEG at quality
    40-90 (2026-12-04, docs/scenes.md).
    """
    look = look or first_look(im, tol, probe)
    if look.textured:
        return True
    smooth = np.asarray(look.small.filter(ImageFilter.BoxBlur(2)), np.int16)
    border = _border(smooth, 1)
    off = np.abs(border - np.median(border, axis=0)).max(axis=1)
    return float(np.median(off)) >= UNEVEN_LIGHT


# Levels (of 255) that half a flat background's border stays within once blurred; see
# looks_photographed.
UNEVEN_LIGHT = 4


def _draft_divisor(data: bytes, size: tuple[int, int], least: float, trim: bool) -> int:
    """8, 4, 2 or 1: how far a JPEG of `size` may be reduced while decoding, its mark
    keeping `least` pixels on its longer side. When trimming, the mark is measured on a
    copy decoded at 1/8 (3.4 ms for 12 Mpx, against 19 for the full decode)."""
    extent = max(size)
    if extent < 2 * least:
        return 1  # no reduction could keep it
    if trim:
        small = Image.open(io.BytesIO(data))
        small.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
        small = to_rgb(small)
        extent = _mark_extent(small) * size[0] / small.width  # in the file's pixels
    return next((d for d in (8, 4, 2) if extent / d >= least), 1)


_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def sniff_format(data: bytes) -> str | None:
    """The format a file's first bytes claim, to tell a damaged image from a non-image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def to_rgb(im: Image.Image, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels become `fill`. An RGB image is returned
    as it is (convert() would copy it)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _high_bit_depth_to_l(im)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, fill + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values instead of scaling them.
    a = np.asarray(im, dtype=np.float32)
    top = 65535.0 if a.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), "L")


def trim_background(im: Image.Image, tol: int = 32, margin: float = 0.04,
                    probe: int = 128, look: FirstLook | None = None) -> Image.Image:
    """Crop the background around the mark down to the mark's bounding box.

    A mark arrives small in a corner of a large canvas, with wide margins, or printed on
    a textured surface; the registry's marks fill their frame. Cropping both to the mark
    puts them at the same scale. The box is found on a small copy of the image, where
    the background is the colour of the border: plain (`_plain_box`) or, when the border
    is not one colour, a texture (`_textured_box`), which is then lifted off the mark
    (`lift_off_surface`) so that the mark is compared on white, as registered. `look`:
    first_look(im) where the caller took it already.
    """
    look = look or first_look(im, tol, probe)
    small, scale, box = look.small, look.scale, look.box
    if look.textured:
        if box is None:
            return im
        box = [v / scale for v in box]
        lifted = lift_off_surface(im, box)
        if lifted is None:
            return _crop(im, box, TEXTURE_MARGIN)
        im = lifted
        small, scale = _probe(im, probe)
        box = _plain_box(small, tol)
    if box is None or box is _NOT_PLAIN:
        return im
    return _crop(im, [v / scale for v in box], margin)


def painted_over(im: Image.Image, boxes: list[tuple[float, float, float, float]],
                 grow: float = 0.25, tol: int = 32, probe: int = 128) -> Image.Image | None:
    """`im` with each (x0, y0, x1, y1) of `boxes` (grown by `grow` of its height) painted
    in the background's colour, where the rest stands apart from all of them: a plain
    background (as trim_background finds one) around a mark whose box meets none of the
    boxes. None where something else is left: a textured background, nothing, or a mark
    that the boxes lie in or cut into (words inside a frame, a letter of a wordmark)."""
    erased = im.copy()
    draw = ImageDraw.Draw(erased)
    colour = _border_colour(im)
    for x0, y0, x1, y1 in boxes:
        g = grow * (y1 - y0)  # a line's box is tight: its letters' antialiased edges
        draw.rectangle((x0 - g, y0 - g, x1 + g, y1 + g), fill=colour)
    small, scale = _probe(erased, probe)
    box = _plain_box(small, tol)
    if box is None or box is _NOT_PLAIN:
        return None
    mx0, my0, mx1, my1 = (v / scale for v in box)
    if any(x0 < mx1 and x1 > mx0 and y0 < my1 and y1 > my0 for x0, y0, x1, y1 in boxes):
        return None
    return erased


def _first_box(small: Image.Image, tol: int):
    """The mark's box on a probe, as trim_background first finds it, and whether the
    background is textured: (box or None, textured)."""
    box = _plain_box(small, tol)
    if box is not _NOT_PLAIN:
        return box, False
    return _textured_box(small, tol), True


def _mark_extent(im: Image.Image, tol: int = 32, probe: int = 128) -> float:
    """The longer side, in `im`'s pixels, of the box trim_background starts from; the
    whole image's when it finds none."""
    small, scale = _probe(im, probe)
    box, _ = _first_box(small, tol)
    if box is None:
        return max(im.size)
    return max(box[2] - box[0], box[3] - box[1]) / scale


def _probe(im: Image.Image, probe: int) -> tuple[Image.Image, float]:
    """A copy of `im` at most `probe` pixels on its longer side, and its scale."""
    scale = min(1.0, probe / max(im.size))
    if scale == 1.0:
        return im, scale
    # Box averages first (reduce()) when the image is over 6x the probe: a 12 Mpx photo's
    # probe took 29 ms filtered in one go, 6.7 this way, within 3 levels of 255 (mean
    # 0.016). Images up to 6x the probe (768 px) are resized exactly as before.
    return _scaled(im, scale, Image.Resampling.BILINEAR, reducing_gap=3.0), scale


def _scaled(im: Image.Image, scale: float, resample: Image.Resampling,
            reducing_gap: float | None = None) -> Image.Image:
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                     resample, reducing_gap=reducing_gap)


def _crop(im: Image.Image, box, margin: float) -> Image.Image:
    return im.crop(_widen(box, margin, im.size))


def _widen(box, margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` (x0, y0, x1, y1) widened by `margin` of its longer side, within `size`."""
    x0, y0, x1, y1 = box
    m = margin * max(x1 - x0, y1 - y0)
    return (max(0, int(x0 - m)), max(0, int(y0 - m)),
            min(size[0], int(np.ceil(x1 + m))), min(size[1], int(np.ceil(y1 + m))))


_NOT_PLAIN = "not plain"
# A box found on a texture is rough (thin strokes blur into the surface): a wider margin
# keeps the whole mark in it.
TEXTURE_MARGIN = 0.12


def _border(a: np.ndarray, width: int) -> np.ndarray:
    """Pixels of the outer `width` rows and columns of an (h, w[, c]) array, (n[, c])."""
    px = a.shape[2:]
    return np.concatenate([a[:width].reshape(-1, *px), a[-width:].reshape(-1, *px),
                           a[:, :width].reshape(-1, *px), a[:, -width:].reshape(-1, *px)])


def _plain_box(small: Image.Image, tol: int):
    """(x0, y0, x1, y1) of what differs from a one-colour border; `_NOT_PLAIN` if the
    border is not one colour; None if nothing stands out.

    Works on one channel, each pixel's largest channel difference from the border's
    colour; a pixel counts when most of its 3 x 3 neighbourhood is far (the median filter
    of the distances, thresholded, at a fifth of the cost), so that noise and JPEG speckle
    do not count as mark. All of it in Pillow's C code.
    """
    dist = _distance(small, _border_colour(small))
    far = np.asarray(_majority(dist.point(_above(tol)))) > 0
    if _border(far, 1).mean() > 0.1:
        return _NOT_PLAIN
    ys, xs = np.nonzero(far)
    if len(ys) < 4:
        return None  # blank, or nothing that stands out
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _majority(mask: Image.Image) -> Image.Image:
    """A 0/255 "L" mask -> the same, set where most of the 3 x 3 neighbourhood is set."""
    return mask.filter(ImageFilter.BoxBlur(1)).point(_above(127))


# Pillow's point() turns a function into a 256-entry table by calling it 256 times, in
# Python, holding the GIL, at every call. The tables are made once instead (~3% of a
# mark's preprocessing).
@functools.cache
def _above(level: int) -> list[int]:
    """Lookup table of an "L" image thresholded: 255 above `level`, else 0."""
    return [255 if v > level else 0 for v in range(256)]


@functools.cache
def _ink_table(darkest: int) -> list[int]:
    """Lookup table from a distance to its grey: `darkest` and beyond are black."""
    return [255 - min(255, v * 255 // darkest) for v in range(256)]


def _border_colour(im: Image.Image) -> tuple[int, ...]:
    """The median colour of the outermost pixels: the background, where there is one."""
    return tuple(int(v) for v in np.median(_border(np.asarray(im), 1), axis=0))


def _distance(im: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    """"L" image of each pixel's largest channel difference from `colour`."""
    r, g, b = ImageChops.difference(im, Image.new("RGB", im.size, colour)).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b)


def _textured_box(small: Image.Image, tol: int, blur: float = 3.0, spread_factor: float = 2.5):
    """Box of a mark on a textured surface (a photo of a print, a mark on fabric or brick).

    Blurring averages a fine texture to its mean colour, while the solid areas a mark is
    made of keep theirs. The border, after blurring, shows how far the surface itself
    strays from its median colour; pixels several times further away are the mark. None
    when nothing, or nearly everything, stands out (a photo, not a mark on a surface).
    """
    a = np.asarray(small.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    border = _border(a, 3)
    bg = np.median(border, axis=0)
    spread = np.quantile(np.abs(border - bg).max(axis=1), 0.95)
    fg = np.abs(a - bg).max(axis=2) > max(tol, spread_factor * spread)
    if not 0.002 < fg.mean() < 0.6:
        return None
    ys, xs = np.nonzero(fg)
    # Quantiles, not min/max: a stray bright leaf or a brick's shadow must not widen the box.
    x0, x1 = np.quantile(xs, [0.005, 0.995])
    y0, y1 = np.quantile(ys, [0.005, 0.995])
    return x0, y0, x1 + 1, y1 + 1


# Colours are compared in 16 levels per channel; a colour that makes up less than 0.2% of
# the surface is not the surface. Measured on LogoBench's photos, the share of marks
# found first hardly moves between 12 and 24 levels, 0.1% and 0.5%, 3 and 7 px medians.
SURFACE_LEVELS = 16
SURFACE_RARE = 0.002
LIFT_SIZE = 224  # the mark's longer side where the surface is told from it


def lift_off_surface(im: Image.Image, box) -> Image.Image | None:
    """The mark in `box` (widened by TEXTURE_MARGIN) as its own pixels on white.

    Brick, grass or fabric shows the same colours all over, a printed mark a few solid
    colours of its own; so the mark is what has colours the picture's border (the
    surface) rarely has, and telling them apart needs no model of the texture. A 3 px
    majority vote removes the surface's odd pixels and fills the mark's. The surface
    seen through the mark's holes goes too, as in the registered mark. None when
    nothing is left: a mark in the surface's own colours, which then stays on its surface.
    """
    # Colours are read on a copy at most half size: its pixel means smooth the grain of
    # a surface and JPEG speckle (not colours of their own), at a quarter of the work.
    scale = min(0.5, LIFT_SIZE / max(box[2] - box[0], box[3] - box[1], 1))
    small = im.reduce(2) if scale == 0.5 else _scaled(im, scale, Image.Resampling.BOX)
    bins = _colour_bins(small)
    border = _border(bins, max(2, round(0.05 * min(small.size))))
    surface = np.bincount(border, minlength=SURFACE_LEVELS ** 3) / len(border)
    x0, y0, x1, y1 = _widen([v * scale for v in box], TEXTURE_MARGIN, small.size)
    rare = surface[bins[y0:y1, x0:x1]] < SURFACE_RARE
    mask = _majority(Image.fromarray(rare.astype(np.uint8) * 255))
    if mask.getbbox() is None:
        return None
    crop = im.crop(_widen([v / scale for v in (x0, y0, x1, y1)], 0, im.size))
    mask = mask.resize(crop.size, Image.Resampling.BILINEAR)  # soft edges at full size
    return Image.composite(crop, Image.new("RGB", crop.size, WHITE), mask)


def _colour_bins(im: Image.Image) -> np.ndarray:
    """(h, w) index of each pixel's colour, SURFACE_LEVELS levels per channel."""
    a = np.asarray(im) // (256 // SURFACE_LEVELS)
    return (a[..., 0].astype(np.int32) * SURFACE_LEVELS + a[..., 1]) * SURFACE_LEVELS + a[..., 2]


def fit(im: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side is `size`, keeping the aspect."""
    w, h = im.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return im.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def pad(im: Image.Image, size: int, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """Centre `im` (no side over `size`) on a `size` square of `fill`."""
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


# The darkest ink is the 99.5th percentile of the distance from the background (a few
# stray pixels must not set it), and never less than this: a blank image stays blank.
INK_MIN_CONTRAST = 32


def ink(im: Image.Image) -> Image.Image:
    """The mark as grey ink on white: each pixel's distance from the background colour.

    A recoloured, greyscale, inverted or coloured-canvas copy of a mark changes its
    colours but not where, and how strongly, it differs from its background; the
    colour view alone scores such copies low. This view keeps the shape and drops the
    palette. The background is the border's median colour (the image is
    already trimmed), the distance each pixel's largest channel difference from it.
    """
    dist = _distance(im, _border_colour(im))
    counts = np.cumsum(dist.histogram())
    darkest = max(INK_MIN_CONTRAST, int(np.searchsorted(counts, 0.995 * counts[-1])))
    return dist.point(_ink_table(darkest)).convert("RGB")


# What the network can be shown of a mark (PreprocessConfig.views).
VIEWS = {"rgb": lambda im: im, "ink": ink}


@dataclass(frozen=True)
class Prepared:
    """A query ready for the encoder, and how many pixels its mark had to start with."""

    array: np.ndarray  # (views, size, size, 3) uint8
    mark_px: int  # the longer side of the mark (trimmed, when trimming) in the file's pixels


def mark_of(im: Image.Image, cfg: PreprocessConfig, look: FirstLook | None = None
            ) -> Image.Image:
    """The part of a decoded image the network is shown: the mark, trimmed when `cfg.trim`.
    BlankImageError if there is none."""
    mark = trim_background(im, look=look) if cfg.trim else im
    extrema = mark.getextrema()  # per band; one (lo, hi) pair for a one-band image
    lows = [lo for lo, _ in extrema] if isinstance(extrema[0], tuple) else [extrema[0]]
    if min(lows) >= 255 - BLANK_LEVELS:
        raise BlankImageError(f"the image ({im.width}x{im.height}) is blank: every pixel is "
                              "white or transparent, so there is no mark to search for")
    return mark


def views_of(mark: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """A mark -> (views, size, size, 3) uint8: fitted, each view letterboxed."""
    fitted = fit(mark, cfg.size)
    return np.stack([np.asarray(pad(VIEWS[v](fitted), cfg.size, cfg.fill), dtype=np.uint8)
                     for v in cfg.views])


def to_input(im: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Decoded RGB image -> (views, size, size, 3) uint8, ready to stack into a batch."""
    return views_of(mark_of(im, cfg), cfg)


def to_query(im: Image.Image, cfg: PreprocessConfig, scale: float = 1.0,
             look: FirstLook | None = None) -> Prepared:
    """Decoded RGB image -> its network input and its mark's size in pixels of the file
    (`scale`: the image's size over the file's, Decoded.scale; `look`: first_look(im))."""
    mark = mark_of(im, cfg, look)
    return Prepared(views_of(mark, cfg), round(max(mark.size) / scale))


def prepare(data: bytes, cfg: PreprocessConfig) -> np.ndarray:
    """Image bytes -> (views, size, size, 3) uint8, ready to stack into a batch."""
    return to_input(open_scaled(data, cfg).image, cfg)


def prepare_query(data: bytes, cfg: PreprocessConfig, region: Region | None = None
                  ) -> Prepared:
    """Image bytes -> its network input and its mark's size; ImageDecodeError if unreadable.
    `region`: only that part of the image, in its pixels as a viewer shows it (EXIF
    orientation applied); decoded in full then, as the region says where the mark is."""
    if region is None:
        decoded = open_scaled(data, cfg)
        return to_query(decoded.image, cfg, decoded.scale)
    return to_query(crop_region(open_image(data, cfg.max_pixels), region), cfg)


def crop_region(im: Image.Image, region: Region) -> Image.Image:
    """The (x, y, width, height) part of `im`; InvalidRegion where it is not inside."""
    x, y, w, h = region
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > im.width or y + h > im.height:
        raise InvalidRegion(f"region x={x} y={y} width={w} height={h} is not inside the "
                            f"{im.width}x{im.height} image")
    return im.crop((x, y, x + w, y + h))


def prepare_file(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    return prepare(Path(path).read_bytes(), cfg)
