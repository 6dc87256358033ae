"""Decoding every image mode a registry holds, and refusing what is not an image."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bench.photos import photo_jpeg
from indexer.network.preprocess import (
    WHITE,
    ImageDecodeError,
    Prepared,
    PreprocessConfig,
    first_look,
    ink,
    looks_photographed,
    open_image,
    open_scaled,
    painted_over,
    prepare,
    prepare_query,
    to_query,
    trim_background,
)
from tests.conftest import SAMPLES

CFG = PreprocessConfig()


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def red_square_rgba() -> Image.Image:
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (10, 10, 30, 30))
    return im


def test_transparency_is_flattened_onto_white():
    rgb = np.asarray(open_image(encode(red_square_rgba())))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[20, 20]) == (255, 0, 0)


def test_palette_with_transparent_index():
    im = red_square_rgba().convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    black = im.getpixel((0, 0))
    data = encode(im, transparency=black)
    rgb = np.asarray(open_image(data))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[20, 20]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["L", "LA", "1", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    im = Image.new("L", (30, 20), 0)
    im.paste(200, (5, 5, 25, 15))
    if mode in ("I;16", "I"):
        im = Image.fromarray(np.asarray(im).astype(np.uint16) * 257)  # mode I;16
        im = im if mode == "I;16" else im.convert("I")
    else:
        im = im.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("I", "F") else "PNG"
    out = open_image(encode(im, fmt))
    assert out.mode == "RGB" and out.size == (30, 20)
    arr = np.asarray(out).astype(int)
    # Bright inside, dark outside: 16-bit values are scaled, not clipped to white.
    assert arr[10, 15].mean() > arr[0, 0].mean() + 100


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (60, 30), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = open_image(encode(im, "JPEG", exif=exif))
    assert out.size == (30, 60)


def test_letterbox_keeps_aspect_and_size():
    im = Image.new("RGB", (200, 50), (0, 0, 255))
    arr = prepare(encode(im), CFG)
    assert arr.shape == (1, 224, 224, 3) and arr.dtype == np.uint8  # one view: the colours
    arr = arr[0]
    assert tuple(arr[112, 112]) == (0, 0, 255)      # the mark, centred
    assert tuple(arr[5, 112]) == (255, 255, 255)    # white bands above and below


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(open_image(buf.getvalue()))[10, 10, 0] > 200


def test_tiny_image_is_upscaled():
    assert prepare(encode(Image.new("RGB", (1, 1), "red")), CFG).shape == (1, 224, 224, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image", "known format"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "known format"),
])
def test_non_images_are_refused_clearly(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        open_image(data)


def test_truncated_file_is_refused():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(ImageDecodeError):
        open_image(data[: len(data) // 2])


def _png_bomb(width: int, height: int) -> bytes:
    """A real PNG: width x height 1-bit black pixels, a few hundred KB compressed."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    data = _png_bomb(30000, 30000)
    assert len(data) < 1_000_000
    with pytest.raises(ImageDecodeError, match="Mpx limit"):
        open_image(data)


def _mark_on(canvas_color, canvas=(600, 400), at=(420, 40), size=(100, 80)):
    im = Image.new("RGB", canvas, canvas_color)
    im.paste((200, 30, 30), (at[0], at[1], at[0] + size[0], at[1] + size[1]))
    return im


def test_trim_crops_a_plain_canvas_to_the_mark():
    out = trim_background(_mark_on((40, 160, 60)))
    # The mark's box plus a 4% margin, whatever the canvas colour; the box is found on a
    # 128 px probe, so at this canvas size it is exact to about 5 px.
    assert 100 <= out.width <= 118 and 80 <= out.height <= 98
    arr = np.asarray(out)
    assert tuple(arr[out.height // 2, out.width // 2]) == (200, 30, 30)


def test_trim_survives_noise_and_leaves_textures_alone():
    noisy = np.asarray(_mark_on((255, 255, 255))).astype(int)
    noisy = noisy + np.random.default_rng(0).normal(0, 25, noisy.shape)
    out = trim_background(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    assert out.width < 130 and out.height < 110
    texture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), np.uint8))
    assert trim_background(texture).size == (300, 300)
    blank = Image.new("RGB", (50, 50), "white")
    assert trim_background(blank).size == (50, 50)


def _surface(seed: int = 2) -> np.ndarray:
    """Brick-like stripes plus grain, the kind of surface a mark is photographed on."""
    xs = np.arange(400)[None, :, None]
    grain = np.random.default_rng(seed).normal(0, 20, (400, 400, 3))
    return np.clip(130 + 40 * np.sin(xs / 3.0) + grain, 0, 255).astype(np.uint8)


def test_trim_finds_a_mark_on_a_textured_surface_and_lifts_it_off():
    im = Image.fromarray(_surface())
    im.paste((20, 20, 160), (220, 60, 320, 140))  # the mark: 100 x 80 at (220, 60)
    out = trim_background(im)
    # The mark's own box plus the plain 4% margin: the surface around it is gone (white).
    assert 100 <= out.width <= 118 and 80 <= out.height <= 98
    arr = np.asarray(out)
    assert tuple(arr[out.height // 2, out.width // 2]) == (20, 20, 160)
    for corner in (arr[0, 0], arr[0, -1], arr[-1, 0], arr[-1, -1]):
        assert tuple(corner) == WHITE


def test_the_surface_seen_through_a_mark_is_lifted_too():
    im = Image.fromarray(_surface(3))
    ImageDraw.Draw(im).ellipse((100, 100, 260, 260), outline=(200, 30, 30), width=25)
    arr = np.asarray(trim_background(im))
    h, w = arr.shape[:2]
    assert 160 <= w <= 190 and 160 <= h <= 190
    assert tuple(arr[h // 2, w // 2]) == WHITE  # the hole, as the registered ring has it
    assert tuple(arr[h // 2, w // 2 + 68]) == (200, 30, 30)  # in the ring (radius 68 ± 12)


def _device_and_line(colour=(240, 240, 240)) -> tuple[Image.Image, tuple[int, ...]]:
    """A 100 x 80 device at (40, 30) on a plain canvas, and a line's box under it."""
    im = Image.new("RGB", (300, 320), colour)
    im.paste((200, 30, 30), (40, 30, 140, 110))
    line = (30, 240, 230, 280)
    im.paste((20, 20, 20), (34, 246, 226, 274))  # "words": dark strokes within the box
    return im, line


def test_words_apart_from_a_device_are_painted_over_in_the_background():
    im, line = _device_and_line()
    out = painted_over(im, [line])
    assert out is not None and out.size == im.size
    arr = np.asarray(out)
    assert (arr[240:281, 30:231] == (240, 240, 240)).all()  # the line, grown, is the canvas
    assert tuple(arr[70, 90]) == (200, 30, 30)  # the device stays
    # Trimmed, what is left is the device alone.
    assert 100 <= trim_background(out).width <= 118
    assert np.array_equal(np.asarray(im)[250, 100], (20, 20, 20))  # the caller's, untouched


def test_words_in_or_across_a_device_or_on_a_texture_are_left():
    im, _ = _device_and_line()
    assert painted_over(im, [(60, 60, 120, 90)]) is None  # inside the device
    assert painted_over(im, [(120, 60, 200, 90)]) is None  # cutting into it
    assert painted_over(im, [(0, 0, 300, 320)]) is None  # nothing left
    textured = Image.fromarray(_surface())
    textured.paste((20, 20, 160), (220, 60, 320, 140))
    assert painted_over(textured, [(200, 300, 380, 340)]) is None


def test_trim_can_be_switched_off():
    data = encode(_mark_on((255, 255, 255)))
    trimmed = prepare(data, CFG)
    kept = prepare(data, PreprocessConfig(trim=False))
    # Trimmed: the mark fills the frame; kept: mostly white canvas.
    assert (trimmed < 250).mean() > 0.5 > (kept < 250).mean()


def test_ink_is_the_same_for_recoloured_grey_and_inverted_copies():
    mark = _mark_on((255, 255, 255))  # a red box on white
    copies = [_mark_on((40, 160, 60)),                     # on a green canvas
              mark.convert("L").convert("RGB"),            # greyscale
              Image.eval(mark, lambda v: 255 - v)]          # inverted: cyan on black
    ref = np.asarray(ink(mark), dtype=int)
    assert ref.min() == 0 and ref[0, 0, 0] == 255  # the mark black, the background white
    for copy in copies:
        assert np.abs(np.asarray(ink(copy), dtype=int) - ref).mean() < 1.0
    # A colour view would tell them apart: the check above is not trivially true.
    assert np.abs(np.asarray(copies[2], dtype=int) - np.asarray(mark)).mean() > 100


def test_ink_leaves_a_blank_image_blank_and_views_stack_in_order():
    blank = Image.new("RGB", (40, 40), (250, 250, 250))
    assert np.asarray(ink(blank)).min() == 255
    both = prepare(encode(_mark_on((40, 160, 60))), PreprocessConfig(views=("rgb", "ink")))
    assert both.shape == (2, 224, 224, 3)
    centre = both[:, 112, 112]
    assert tuple(centre[0]) == (200, 30, 30)
    assert max(centre[1]) < 32 and len(set(centre[1])) == 1  # dark grey ink
    with pytest.raises(ValueError, match="known: rgb, ink"):
        PreprocessConfig(views=("edges",))


# -- large JPEGs are decoded reduced (open_scaled) ---------------------------------------
VIEWS2 = PreprocessConfig(views=("rgb", "ink"))


def _photo(mark_px: int, **save) -> bytes:
    """A sample mark `mark_px` wide on a plain 3200 x 2400 canvas, as JPEG."""
    mark = Image.open(sorted(SAMPLES.glob("registry/*"))[0])
    return photo_jpeg(mark, mark_px, (3200, 2400), quality=92, **save)


def _full_size(data: bytes, cfg: PreprocessConfig) -> Prepared:
    """The oracle: the same steps on the image decoded at full size."""
    return to_query(open_image(data), cfg)


def test_a_large_jpeg_is_decoded_reduced_as_far_as_its_mark_allows(encoder):
    data = _photo(1200)
    decoded = open_scaled(data, VIEWS2)
    assert decoded.scale == 0.5  # 1200 / 2 keeps 2 x 224 px, 1200 / 4 would not
    assert decoded.image.size == (1600, 1200)
    got, want = prepare_query(data, VIEWS2), _full_size(data, VIEWS2)
    assert abs(got.mark_px - want.mark_px) <= 0.02 * want.mark_px  # in the file's pixels
    assert np.abs(got.array.astype(int) - want.array).mean() < 2.0
    # Two sound resamplings of one mark (1/2 by DCT, then 635 -> 224 px, against 1269 ->
    # 224 px at once): descriptors 0.992 alike; re-saving the photo at JPEG quality 75
    # gives 0.997. On 420 LogoBench queries made into 12 Mpx photos, recall@1 was the same.
    a, b = encoder.encode([got.array, want.array])
    assert float(a @ b) > 0.99


def test_a_small_mark_in_a_large_jpeg_keeps_every_pixel():
    data = _photo(300)
    assert open_scaled(data, VIEWS2).scale == 1.0
    got, want = prepare_query(data, VIEWS2), _full_size(data, VIEWS2)
    assert got.mark_px == want.mark_px and np.array_equal(got.array, want.array)


def test_only_jpegs_are_reduced_and_untrimmed_images_by_their_size():
    im = Image.open(io.BytesIO(_photo(1200)))
    assert open_scaled(encode(im, "PNG"), VIEWS2).scale == 1.0
    untrimmed = PreprocessConfig(trim=False)
    # The whole 3200 px picture is the mark: 1/4 keeps 800 px, 1/8 would keep 400.
    assert open_scaled(_photo(300), untrimmed).scale == 0.25


def test_a_phone_mpo_is_reduced_like_a_jpeg_from_its_first_picture():
    first, second = (Image.open(io.BytesIO(_photo(px))) for px in (1200, 300))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert open_scaled(data, VIEWS2).scale == 0.5
    got, want = prepare_query(data, VIEWS2), _full_size(data, VIEWS2)
    assert abs(got.mark_px - want.mark_px) <= 0.02 * want.mark_px
    assert np.abs(got.array.astype(int) - want.array).mean() < 2.0


def test_a_reduced_jpeg_is_still_turned_by_its_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = open_scaled(_photo(1200, exif=exif), VIEWS2)
    assert decoded.scale == 0.5 and decoded.image.size == (1200, 1600)


def test_a_long_thin_jpeg_is_prepared_like_the_full_size_one():
    for size in ((4000, 1), (1000, 10)):
        data = encode(Image.new("RGB", size, (200, 30, 30)), "JPEG")
        got, want = prepare_query(data, VIEWS2), _full_size(data, VIEWS2)
        assert got.mark_px == want.mark_px == max(size)
        assert np.array_equal(got.array, want.array)


def test_a_truncated_large_jpeg_is_refused_clearly():
    data = _photo(1200)
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        prepare_query(data[: len(data) // 3], VIEWS2)


def test_a_first_look_taken_once_answers_as_each_one_taken_alone():
    """locate() takes the probe and first box once for looks_photographed and trimming:
    same decisions, same arrays as each of them looking for itself."""
    cfg = PreprocessConfig()
    pictures = [Image.open(p).convert("RGB")
                for p in sorted((SAMPLES / "registry").glob("*.png"))[:20]]
    shot = photo_jpeg(pictures[0], 200, (640, 480))
    pictures += [_mark_on((40, 160, 60)), Image.open(io.BytesIO(shot)).convert("RGB")]
    for im in pictures:
        look = first_look(im)
        assert looks_photographed(im, look=look) == looks_photographed(im)
        assert np.array_equal(to_query(im, cfg, look=look).array, to_query(im, cfg).array)
