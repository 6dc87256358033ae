"""Phone-photo-sized JPEGs of sample marks: a mark snapped on a product, for timing.

A registry's marks are small files (LogoBench's are at most 725 px); queries from the
field are often photos of 12 Mpx and more, where decoding and preprocessing, not the
network, set the latency (see indexer.network.preprocess.open_scaled).
"""
from __future__ import annotations

import io

from PIL import Image

PHONE = (4032, 3024)  # 12 Mpx, a common phone camera's size
SURFACE = (238, 232, 220)


def photo_jpeg(mark: Image.Image, mark_px: int, canvas: tuple[int, int] = PHONE,
               quality: int = 90, **save) -> bytes:
    """`mark` resized to `mark_px` wide and pasted on a plain `canvas`, as JPEG bytes;
    `save`: more of Pillow's JPEG options (exif=...)."""
    mark = mark.convert("RGB")
    mark = mark.resize((mark_px, max(1, mark_px * mark.height // mark.width)),
                       Image.Resampling.BICUBIC)
    im = Image.new("RGB", canvas, SURFACE)
    im.paste(mark, (canvas[0] // 5, canvas[1] // 4))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def scene_jpegs(marks: list[Image.Image], count: int = 10, size: tuple[int, int] = (800, 600),
                seed: int = 0) -> list[bytes]:
    """`count` photographed scenes (indexer.network.scenes) of one or two of `marks` on a
    made-up surface, each `size` px, as JPEG bytes: what the mark detector works on."""
    import random

    from indexer.network.scenes import compose
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scene = compose(rng, rng.sample(marks, rng.choice([1, 2])))
        buf = io.BytesIO()
        scene.image.resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out
