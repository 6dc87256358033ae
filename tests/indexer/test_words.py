"""The words of marks: text checks, comparison, the catalog's word index against an
exhaustive scan, reading words from a picture, and builds that keep or read them."""
from __future__ import annotations

import csv
import io
import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from indexer import words
from indexer.build import build
from indexer.index import wordindex
from indexer.index.catalog import Catalog, Mark
from indexer.index.reader import open_index
from indexer.sources import ManifestError, read_manifest
from indexer.word_calibration import calibrate_words
from tests.conftest import SAMPLES, quiet


@pytest.mark.parametrize("text, why", [
    ("x" * 10_000, "at most 200"),
    ("MAVEN\x00", "control characters"),
    ("ACME\x1b[31m", "control characters"),
    ("!!! --- ???", "no letter or digit"),
])
def test_bad_text_is_refused_with_the_reason(text, why):
    with pytest.raises(words.WordsError, match=why):
        words.check_text(text)


def test_good_text_is_kept_and_empty_means_none():
    assert words.check_text("  Café Noir ") == "Café Noir"
    assert words.check_text("") == ""
    assert words.words_of("Visual-Studio CODE™") == ("visual", "studio", "code")  # ™ dropped
    assert words.words_of("ＡＢＣ") == ("abc",)  # full-width letters folded (NFKC)


@pytest.mark.parametrize("a, b", [("Kwik", "Quick"), ("Klassik", "Classic")])
def test_words_that_sound_alike_share_a_key_and_score_high(a, b):
    assert words.sound(a.lower()) == words.sound(b.lower())
    assert words.similarity(words.words_of(a), words.words_of(b)) >= words.SOUND_SCORE


def test_a_key_of_two_sounds_ranks_but_says_less():
    # Metaphone keeps consonants: Foto ~ Photo, but tile ~ toll too.
    assert words.sound("foto") == words.sound("photo") == words.sound("fat")
    assert words.similarity(("foto",), ("photo",)) == words.SHORT_SOUND_SCORE
    assert words.sound("t1o") == ""  # digits: no sound key


def test_similarity_ranks_as_an_examiner_would():
    sim = lambda a, b: words.similarity(words.words_of(a), words.words_of(b))  # noqa: E731
    assert sim("maven", "MAVEN") == 1.0
    assert sim("studio visual", "Visual Studio") == 1.0  # word order
    assert sim("visualstudio", "Visual Studio") == 1.0  # run together
    assert 0.95 <= sim("maven", "Apache Maven") < 1.0  # a word among several
    assert 0.75 <= sim("mavne", "maven") < 0.95  # two letters swapped
    assert 0.75 <= sim("mavin", "maven") < 1.0
    assert sim("maven", "gradle") < 0.5
    # Short words alone never match what was read; a typed short query does.
    assert sim("tm", "TM") == 0.0
    assert words.similarity(("go",), ("go",), short=True) == 1.0


def _made_up_catalog(tmp_path, n=600, seed=3):
    rng = random.Random(seed)
    texts = [" ".join(words.made_up_word(rng) for _ in range(rng.choice([1, 1, 2])))
             for _ in range(n)]
    cat = Catalog(tmp_path / "catalog.sqlite")
    ids, _ = cat.upsert([Mark(f"S{i:04d}", text=t) for i, t in enumerate(texts)])
    return cat, dict(zip(ids, texts)), rng


def _slip(word, rng):
    i = rng.randrange(len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:] if rng.random() < 0.5 else \
        word[:i] + rng.choice("xzq") + word[i + 1:]


def test_word_index_finds_what_a_full_scan_finds(tmp_path):
    """The FTS5 trigram + key candidates against the exact oracle: every registered mark
    scored with the same similarity."""
    cat, texts, rng = _made_up_catalog(tmp_path)
    queries = [words.words_of(t) for t in rng.sample(list(texts.values()), 60)]
    queries += [(_slip(q[0], rng),) for q in queries[:60] if len(q[0]) >= 4]
    agree = 0
    for q in queries:
        oracle = max(words.similarity(q, words.words_of(t)) for t in texts.values())
        hits = wordindex.search(cat, q, 5)
        assert hits and hits[0].score <= oracle + 1e-9
        agree += abs(hits[0].score - oracle) < 1e-9
    assert agree / len(queries) >= 0.97
    cat.close()


def test_removing_and_replacing_marks_updates_their_words(tmp_path):
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.upsert([Mark("1", text="Zorblax"), Mark("2", text="Quintella Brook")])
    assert [h.text for h in wordindex.search(cat, ("zorblax",), 3)] == ["Zorblax"]
    cat.upsert([Mark("1", text="Marwood")])
    assert wordindex.search(cat, ("zorblax",), 3) == []
    cat.delete(["2"])
    assert wordindex.search(cat, ("brook",), 3) == []
    assert cat.count_with_words() == 1
    cat.close()


def test_a_catalog_from_before_words_gains_them(tmp_path):
    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE marks (id INTEGER PRIMARY KEY AUTOINCREMENT, serial TEXT NOT NULL "
               "UNIQUE, name TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '', "
               "sha256 TEXT NOT NULL DEFAULT '', thumbnail BLOB, metadata TEXT NOT NULL "
               "DEFAULT '{}', added_at TEXT NOT NULL)")
    db.execute("INSERT INTO marks (serial, added_at) VALUES ('old', 'then')")
    db.commit()
    db.close()
    ro = Catalog(path, readonly=True)
    assert ro.count_with_words() == 0 and ro.refs([1])[1].text == ""
    ro.close()
    cat = Catalog(path)
    cat.upsert([Mark("new", text="Fenwick")])
    assert [h.text for h in wordindex.search(cat, ("fenwick",), 1)] == ["Fenwick"]
    cat.close()


def test_made_up_words_set_a_threshold_they_rarely_reach(tmp_path):
    cat, texts, _ = _made_up_catalog(tmp_path)
    cal = calibrate_words(cat, 0.01)
    assert cal.threshold >= 0.8 and cal.estimated_fpr <= 0.01
    assert cal.marks_with_words == len(texts)
    empty = Catalog(tmp_path / "empty.sqlite")
    assert calibrate_words(empty, 0.01) is None
    cat.close()
    empty.close()


def _word_picture(text: str) -> Image.Image:
    im = Image.new("RGB", (520, 160), "white")
    ImageDraw.Draw(im).text((20, 40), text, fill=(20, 40, 160),
                            font=ImageFont.load_default(size=72))
    return im


@pytest.mark.skipif(not words.can_read(), reason="rapidocr-onnxruntime is not installed")
def test_the_reader_reads_a_word_set_in_a_picture():
    read = words.reader().read(_word_picture("MARWOOD"))
    assert words.similarity(words.words_of(read), ("marwood",)) >= 0.85, read
    # A picture of no words reads as none.
    assert words.reader().read(Image.new("RGB", (300, 300), (200, 30, 30))) == ""


def test_lines_near_each_other_are_one_block_read_in_order():
    name, slogan = ((100, 100, 300, 140), "python"), ((105, 150, 290, 175), "Package Index")
    far = ((600, 400, 700, 430), "Chelsea")
    beside = ((330, 100, 420, 140), "Labs")  # on the same line, a space of 0.75 heights
    (one, two) = words.blocks([name, beside, slogan, far])
    assert one == ((100, 100, 420, 175), "python Labs Package Index")
    assert two == far
    assert words.blocks([]) == []


@pytest.mark.skipif(not words.can_read(), reason="rapidocr-onnxruntime is not installed")
def test_the_reader_boxes_each_line_in_the_pictures_pixels():
    big = _word_picture("MARWOOD").resize((900, 450))  # read at most 960 px: boxes scale back
    ((x0, y0, x1, y1), text), = words.reader().read_lines(big)
    assert words.similarity(words.words_of(text), ("marwood",)) >= 0.85, text
    assert 0 <= x0 < x1 <= 900 and 0 <= y0 < y1 <= 450 and x1 - x0 > 300


@pytest.mark.skipif(not words.can_read(), reason="rapidocr-onnxruntime is not installed")
def test_openvino_reads_what_onnx_runtime_reads():
    """PP-OCR's models run through OpenVINO (faster here) in rapidocr's place: the same
    lines, boxes and words as the wheel's own ONNX Runtime, on the sample marks."""
    fast = words.WordReader()
    if fast.runtime != "openvino":
        pytest.skip("OpenVINO cannot run PP-OCR here")
    assert words.warm_up((1, 2))  # a server's, for its reads on one thread and on two
    wheel = words.WordReader(words.ReaderConfig(runtime="onnxruntime"))
    assert wheel.runtime == "onnxruntime"
    queries = sorted((SAMPLES / "queries").iterdir())[:40]
    pictures = [Image.open(p).convert("RGB") for p in queries]
    pictures.append(_word_picture("MARWOOD").resize((900, 450)))
    read = [fast.read_lines(p) for p in pictures]
    assert sum(map(bool, read)) >= 10  # words were read, not nothing twice
    for picture, lines in zip(pictures, read):
        other = wheel.read_lines(picture)
        assert [text for _, text in lines] == [text for _, text in other]
        for (box, _), (box2, _) in zip(lines, other):
            assert box == pytest.approx(box2, abs=1.0)
    # A lone server call reads with more threads (server.engine): the same words.
    for picture, lines in zip(pictures, read):
        assert fast.read_lines(picture, threads=2) == lines
    with pytest.raises(ValueError, match="runtime must be one of"):
        words.WordReader(words.ReaderConfig(runtime="tensorrt"))
    # Threads read at once (a build's decoding threads; each its own reader, the compiled
    # models shared): each picture reads as it does alone.
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda p: words.reader().read_lines(p), pictures)) == read


def _manifest(tmp_path, rows):
    path = tmp_path / "registry.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["serial", "file", "name", "text"])
        w.writerows(rows)
    return path


def test_a_manifest_text_with_control_characters_names_its_line(tmp_path):
    path = _manifest(tmp_path, [["1", "registry/86000000.png", "a", "ok"],
                                ["2", "registry/86000037.png", "b", "bad\x07"]])
    with pytest.raises(ManifestError, match=r"registry.csv:3: .*control"):
        read_manifest(path, SAMPLES)


def test_a_half_empty_text_column_keeps_what_it_gives(tmp_path, encoder):
    """Words as filed are kept; an empty cell is read from the picture, or left empty with
    read_words off; the index then finds marks by their filed words."""
    with open(SAMPLES / "registry.csv") as f:
        rows = list(csv.DictReader(f))[:24]
    filed = {r["serial"]: words.made_up_word(random.Random(i)) + " Tonic"
             for i, r in enumerate(rows[::2])}
    path = _manifest(tmp_path, [[r["serial"], r["file"], r["name"], filed.get(r["serial"], "")]
                                for r in rows])
    out = tmp_path / "index"
    build(read_manifest(path, SAMPLES / "registry"), out, encoder,
          quiet(read_words=False, scene_calibration=False, calibration_marks=6))
    index = open_index(out)
    try:
        ids = index.catalog.ids_for(list(filed))
        assert index.catalog.texts(list(ids.values())) == {ids[s]: t for s, t in filed.items()}
        assert index.catalog.count_with_words() == len(filed)
        assert index.manifest.words_threshold is not None
        serial, text = next(iter(filed.items()))
        hits = wordindex.search(index.catalog, words.words_of(text), 1)
        assert index.catalog.refs([hits[0].id])[hits[0].id].serial == serial
    finally:
        index.close()


@pytest.mark.skipif(not words.can_read(), reason="rapidocr-onnxruntime is not installed")
def test_the_detection_input_is_rapidocrs_own_made_in_float32():
    """The reader makes PP-OCR's detection input in float32 (words._detection_input_in_
    float32, faster): bit for bit what rapidocr's own float64 steps make, on photographs
    and on marks of every size."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
    det = words.WordReader(words.ReaderConfig(runtime="onnxruntime"))._ocr.text_det
    assert not isinstance(det.get_preprocess(800), DetPreProcess)  # the reader's own
    from bench.photos import scene_jpegs
    marks = [Image.open(p).convert("RGB") for p in sorted((SAMPLES / "queries").iterdir())[:20]]
    scenes = [Image.open(io.BytesIO(b)) for b in scene_jpegs(marks, 4, seed=3)]
    for im in marks + scenes + [_word_picture("MARWOOD").resize((1300, 650))]:
        bgr = np.asarray(im)[:, :, ::-1]
        ours = det.get_preprocess(max(bgr.shape[:2]))(bgr)
        theirs = type(det).get_preprocess(det, max(bgr.shape[:2]))(bgr)  # rapidocr's own
        assert ours.dtype == theirs.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)
