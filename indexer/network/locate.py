"""A picture -> the parts of it to search, each one mark with its box.

Three kinds of picture reach the service:
- a clean image of a mark (a register's file, a screenshot, a scan): its border is one
  flat colour. It is searched whole, as it always was, at no extra cost;
- a part chosen by the caller (a region): searched as one mark;
- a photograph (a sign, a label, a sticker on a laptop): its border is a texture, or
  one colour under uneven light (preprocess.looks_photographed, on the 128 px probe it
  takes anyway). The detector (indexer.network.detector) finds the marks in it, and
  each is cut out of the picture and searched on its own. The picture is searched whole
  too, as before: a photograph of one mark filling the frame is best searched that way
  (trimming lifts the mark off its surface, and the detector's box of it can be rough),
  and where the whole picture is answered more surely than every mark found, it is the
  answer.

Boxes are in the pixels of the image as sent, EXIF orientation applied (as a region).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from indexer.network.detector import Detector
from indexer.network.preprocess import (
    BlankImageError, PreprocessConfig, Prepared, Region, crop_region, first_look,
    looks_photographed, open_at_least, open_image, open_scaled, to_query)

# A photograph is decoded with at least this many pixels on its longer side (libjpeg
# reduces a larger JPEG while decoding): a mark a tenth of a 12 Mpx photo still gets
# 300 px, more than the network's 224.
SCENE_SIDE = 3000
# A found box is widened by this share of its longer side before it is cut out: the
# detector's box is rough, and trimming (preprocess.trim_background) takes off the
# surface it lets in.
CUT_MARGIN = 0.08
# Each found mark is also searched cut closer, by these shares of its box's shorter side
# on every side: a card or plate around a mark, and the surface beside it, are not in
# the registered mark, and trimming cannot tell a card from the mark (its border is the
# photograph's). The cut that makes the mark stand out most answers. On 150 marks of
# LogoBench-scenes cut at their true boxes, recall@1 0.70 -> 0.86, TPR 0.27 -> 0.55
# (2026-12-04, docs/scenes.md).
INSETS = (0.08, 0.16)


# Compared by identity: two parts of one picture are two parts, whatever they hold (and
# their crops are arrays, which do not compare to a bool).
@dataclass(frozen=True, eq=False)
class Part:
    """One part of a picture to search."""

    box: Region  # (x, y, width, height) in the pixels of the image sent
    # The network's input for the part: the part itself, and for a mark found in a
    # photograph, the same cut closer (INSETS); the one whose answer is surest counts.
    crops: tuple[Prepared, ...]
    # The detector's certainty where it found this part; None for a clean image, a
    # caller's region or a photograph searched whole.
    detected: float | None = None
    # False for a photograph searched whole beside the marks the detector found in it:
    # it answers the request where it is surer than they are (server.engine.answer).
    is_mark: bool = True


def _box_in_file(box: tuple[int, int, int, int], scale: float) -> Region:
    x0, y0, x1, y1 = box
    return (round(x0 / scale), round(y0 / scale), round((x1 - x0) / scale),
            round((y1 - y0) / scale))


def locate(data: bytes, cfg: PreprocessConfig, region: Region | None = None,
           detector: Detector | None = None, map_: Callable = map) -> list[Part]:
    """The parts of the picture in `data` to search; ImageDecodeError if unreadable or
    blank. Without a detector every picture is searched whole, as before. `map_`: how a
    photograph's cuts are prepared, all at once (a thread pool's map prepares them side
    by side: most of the work is Pillow's, which lets go of the GIL)."""
    if region is not None:
        im = crop_region(open_image(data, cfg.max_pixels), region)
        return [Part(region, (to_query(im, cfg),))]
    decoded = open_scaled(data, cfg)
    im = decoded.image
    whole = (0, 0, round(im.width / decoded.scale), round(im.height / decoded.scale))
    look = first_look(im) if detector is not None and cfg.trim else None
    if detector is None or not looks_photographed(im, look=look):
        return [Part(whole, (to_query(im, cfg, decoded.scale, look),))]
    if decoded.scale < 1.0:  # reduced for the whole picture's mark: too far for a part
        decoded = open_at_least(data, cfg, SCENE_SIDE)
        im = decoded.image
    found = detector.detect([im])[0]
    cuts = [_cuts(det.box, im.size) for det in found]

    def prepared(cut: tuple[int, int, int, int] | None) -> Prepared | BlankImageError:
        try:
            return to_query(im if cut is None else im.crop(cut), cfg, decoded.scale)
        except BlankImageError as e:
            return e  # nothing in it after all (the whole picture's: raised below)

    # The whole picture first: the largest, it is not left to the end of a pool's queue.
    done = list(map_(prepared, [None] + [c for boxes in cuts for c in boxes]))
    if isinstance(done[0], BlankImageError):
        raise done[0]
    parts, at = [], 1
    for det, boxes in zip(found, cuts):
        crops = tuple(c for c in done[at:at + len(boxes)] if not isinstance(c, BlankImageError))
        at += len(boxes)
        if crops:
            x, y, w, h = det.box
            parts.append(Part(_box_in_file((x, y, x + w, y + h), decoded.scale), crops,
                              det.score))
    return parts + [Part(whole, (done[0],), is_mark=False)]


def _cuts(box: tuple[int, int, int, int], size: tuple[int, int]
          ) -> list[tuple[int, int, int, int]]:
    """A mark found, cut out: its box widened by CUT_MARGIN, then cut closer (INSETS)."""
    x, y, w, h = box
    m = CUT_MARGIN * max(w, h)
    cut = (max(0, round(x - m)), max(0, round(y - m)),
           min(size[0], round(x + w + m)), min(size[1], round(y + h + m)))
    return [cut] + [_inset((x, y, x + w, y + h), f) for f in INSETS]


def _inset(box: tuple[int, int, int, int], share: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    m = round(share * min(x1 - x0, y1 - y0))
    return x0 + m, y0 + m, x1 - m, y1 - m
