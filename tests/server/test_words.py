"""Searching by a mark's words through the real server: words alone, words with a
picture, the answer's words fields, and bad text (INVALID_ARGUMENT, alone in a stream)."""
from __future__ import annotations

import random

import grpc
import pytest

from indexer import words
from indexer.build import build
from indexer.sources import read_manifest
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.engine import SearchEngine
from tests.conftest import SAMPLES, quiet, sample_queries, serving

pytestmark = pytest.mark.skipif(not words.can_read(),
                                reason="rapidocr-onnxruntime is not installed")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def worded(engine) -> tuple[str, str]:
    """A sample mark whose words the build read (five letters or more): serial, words."""
    cat = engine.index.catalog
    texts = cat.texts(cat.all_ids())
    mark_id, text = next((i, t) for i, t in sorted(texts.items())
                         if sum(map(len, words.words_of(t))) >= 5)
    return cat.refs([mark_id])[mark_id].serial, text


def _photographed(serial: str, seed: int) -> bytes:
    """A JPEG photograph of a made-up surface with the registered mark `serial` on it, its
    box (300, 150, 360, 360)."""
    import io

    from PIL import Image

    from indexer.network.scenes import photograph, surface
    rng = random.Random(seed)
    wall = surface(rng, 800, 600)
    wall.paste(Image.open(SAMPLES / "registry" / f"{serial}.png").convert("RGB")
               .resize((360, 360)), (300, 150))
    buf = io.BytesIO()
    photograph(rng, wall).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _with_words_under(image, word: str) -> bytes:
    """A mark shrunk to 70 px at the top of a 296 x 326 white card, `word` set in large
    type under it: a device filed with its company's name, a product line beside it."""
    import io

    from PIL import Image, ImageDraw, ImageFont
    mark = Image.open(image).convert("RGB")
    mark.thumbnail((70, 70))
    card = Image.new("RGB", (296, 326), "white")
    card.paste(mark, (40, 40))
    ImageDraw.Draw(card).text((20, 250), word, fill=(20, 20, 20),
                              font=ImageFont.load_default(size=44))
    buf = io.BytesIO()
    card.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def devices(engine) -> list[str]:
    """Serials of six sample marks without words."""
    cat = engine.index.catalog
    ids = cat.all_ids()
    texts, refs = cat.texts(ids), cat.refs(ids)
    return [refs[i].serial for i in sorted(ids) if not texts.get(i, "").strip()][:6]


def test_a_device_with_words_set_under_it_exists_by_its_figure(stub, devices):
    """Made-up words under a registered device that has none: the picture with them is
    unsure, the device alone (the words read painted over) is registered."""
    rng = random.Random(3)
    said = [stub.Search(pb.SearchRequest(image=_with_words_under(
        SAMPLES / "registry" / f"{s}.png", words.made_up_word(rng).upper()), k=5))
        for s in devices]
    assert all(r.exists and r.matched_serial == s for r, s in zip(said, devices))
    by_figure = [r for r in said if r.matched_by == "figure"]
    assert len(by_figure) >= 4
    for r in by_figure:
        assert r.words and r.confidence >= r.threshold  # the figure's own decision
        assert r.marks[0].matched_by == "figure" and r.matches[0].serial == r.matched_serial


def test_the_client_says_a_mark_exists_by_its_figure(server_address, devices, tmp_path,
                                                     capsys):
    from client.cli import main
    path = tmp_path / "device-and-name.png"
    path.write_bytes(_with_words_under(SAMPLES / "registry" / f"{devices[0]}.png", "MAQUOM"))
    assert main(["--server", server_address, "search", "--input-img", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"Trade Mark Existed! - serial number: {devices[0]} (exists by its "
                      "figure: its picture with the words beside it left out)")
    assert any(line.startswith("words 'MAQUOM'") for line in out)


def test_an_unregistered_device_with_words_under_it_stays_unregistered(stub):
    rng = random.Random(4)
    strangers = [q["path"] for q in sample_queries("unknown")
                 if q["transform"] not in ("photo", "text") and not stub.Search(
                     pb.SearchRequest(image=q["path"].read_bytes(), k=5)).exists]
    assert len(strangers) >= 3
    said = [stub.Search(pb.SearchRequest(image=_with_words_under(
        p, words.made_up_word(rng).upper()), k=5)) for p in strangers]
    assert not any(r.exists for r in said)


def test_words_alone_find_the_mark_that_bears_them(stub, worded):
    serial, text = worded
    resp = stub.Search(pb.SearchRequest(text=text, k=5))
    assert resp.exists and resp.matched_by == "words" and resp.matched_serial == serial
    assert resp.matches[0].serial == serial and resp.matches[0].text == text
    assert resp.matches[0].text_score == pytest.approx(1.0)
    assert resp.words == text and resp.words_threshold > 0
    assert resp.words_score >= resp.words_threshold
    assert len(resp.marks) == 1 and resp.marks[0].matched_by == "words"


def test_a_slip_in_the_words_still_ranks_the_mark(stub, worded):
    serial, text = worded
    word = max(words.words_of(text), key=len)
    slipped = word[0] + word[2] + word[1] + word[3:]  # two letters swapped
    resp = stub.Search(pb.SearchRequest(text=slipped, k=10))
    assert serial in [m.serial for m in resp.matches]


def test_made_up_words_do_not_exist(stub):
    rng = random.Random(99)
    said = [stub.Search(pb.SearchRequest(text=words.made_up_word(rng) + " "
                                         + words.made_up_word(rng), k=3)).exists
            for _ in range(20)]
    assert sum(said) <= 1


def test_words_given_with_an_unregistered_picture_decide_by_words(stub, worded):
    serial, text = worded
    image, alone = next((im, r) for q in sample_queries("unknown")
                        if not (r := stub.Search(pb.SearchRequest(
                            image=(im := q["path"].read_bytes()), k=5))).exists)
    assert alone.matched_by == ""
    both = stub.Search(pb.SearchRequest(image=image, text=text, k=5))
    assert both.exists and both.matched_by == "words" and both.matched_serial == serial
    assert both.words == text and both.marks[0].words == text
    assert both.top_score == pytest.approx(alone.top_score)  # the picture's own figure


def test_a_registered_picture_keeps_its_answer_and_can_read_its_words(stub, worded):
    serial, text = worded
    image = (SAMPLES / "registry" / f"{serial}.png").read_bytes()
    resp = stub.Search(pb.SearchRequest(image=image, k=5, read_words=True))
    assert resp.exists and resp.matched_serial == serial and resp.matched_by == "picture"
    assert resp.words == text  # read as the build read it
    assert resp.matches[0].text_score == pytest.approx(1.0)


@pytest.mark.parametrize("text, why", [
    ("x" * 10_000, "at most 200"),
    ("MAVEN\x00", "control characters"),
    ("?!-", "no letter or digit"),
])
def test_bad_text_is_invalid_argument(stub, text, why):
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(pb.SearchRequest(text=text))
    assert e.value.code() == INVALID and why in e.value.details()


def test_neither_image_nor_text_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(pb.SearchRequest(k=3))
    assert e.value.code() == INVALID and "empty (0 bytes) and there is no text" in \
        e.value.details()


def test_a_stream_answers_words_and_fails_bad_text_alone(stub, worded):
    serial, text = worded
    image = (SAMPLES / "registry" / f"{serial}.png").read_bytes()
    requests = [pb.SearchRequest(request_id="words", text=text, k=3),
                pb.SearchRequest(request_id="bad", text="a\x01b", k=3),
                pb.SearchRequest(request_id="picture", image=image, k=3)]
    out = {r.request_id: r for r in stub.SearchStream(iter(requests))}
    assert out["words"].matched_serial == serial and out["words"].matched_by == "words"
    assert out["bad"].error.code == INVALID.value[0]
    assert out["picture"].matched_serial == serial


def test_a_register_without_words_is_searched_by_picture_alone(tmp_path, encoder):
    items = read_manifest(SAMPLES / "registry.csv", SAMPLES / "registry")[:30]
    build(items, tmp_path / "index", encoder,
          quiet(read_words=False, scene_calibration=False, calibration_marks=8))
    engine = SearchEngine.open(tmp_path / "index", encoder)
    try:
        assert engine.words_threshold is None
        with serving(engine) as address, grpc.insecure_channel(address) as ch:
            stub = pb_grpc.TrademarkSearchStub(ch)
            resp = stub.Search(pb.SearchRequest(image=items[0].path.read_bytes(), k=3,
                                                read_words=True))
            assert resp.matched_serial == items[0].serial and resp.words == ""
            assert resp.words_threshold == 0 and resp.matched_by == "picture"
            with pytest.raises(grpc.RpcError) as e:
                stub.Search(pb.SearchRequest(text="anything"))
            assert e.value.code() == INVALID and "keeps no words" in e.value.details()
            info = stub.GetIndexInfo(pb.GetIndexInfoRequest())
            assert info.words_threshold == 0 and info.marks_with_words == 0
    finally:
        engine.close()


def test_marks_can_be_filtered_by_their_words(stub, worded):
    serial, text = worded
    query = next(q for q in sample_queries("known") if q["expected_serial"] != serial)
    resp = stub.Search(pb.SearchRequest(image=query["path"].read_bytes(), k=5, filters=[
        pb.Filter(column="text", values=[text])]))
    assert resp.filtered and resp.candidates >= 1
    assert all(m.text == text for m in resp.matches) and resp.matches[0].serial == serial


def test_exact_words_decide_in_a_photograph_but_only_confirm_in_a_clean_picture(engine):
    """The rule itself, on the real catalog: a mark the picture did not confirm, whose
    words read are exactly a registered mark's, exists by its words where the detector
    found it in a photograph, and not in a clean picture (words there only confirm one of
    the picture's first matches, which here name other marks)."""
    from server.engine import MarkAnswer
    cat = engine.index.catalog
    mark_id, text = next((i, t) for i, t in sorted(cat.texts(cat.all_ids()).items())
                         if len("".join(words.words_of(t))) >= 6)
    serial = cat.refs([mark_id])[mark_id].serial
    other = next(q for q in sample_queries("unknown") if q["transform"] == "identity")
    others = [h for h in engine.search([engine.prepare(other["path"].read_bytes())], 5)[0]
              if h.serial != serial]
    assert all(words.similarity(words.words_of(text), words.words_of(h.text)) < 1.0
               for h in others[:3])
    clean = MarkAnswer((0, 0, 10, 10), False, "", 0.4, 0.1, others[:5])
    photo = MarkAnswer((0, 0, 10, 10), False, "", 0.4, 0.1, others[:5], detected=0.8)
    assert not engine._with_words(clean, text, 5, typed=False, photographed=False).exists
    found = engine._with_words(photo, text, 5, typed=False, photographed=True)
    assert found.exists and found.matched_serial == serial and found.matched_by == "words"
    # A slip in a long word still names it (OCR misses a letter); a made-up word does not.
    slipped = text[:-1] + ("x" if text[-1] != "x" else "y")
    assert engine._with_words(photo, slipped, 5, typed=False,
                              photographed=True).matched_serial == serial
    assert not engine._with_words(photo, "Zorblaxquint", 5, typed=False,
                                  photographed=True).exists
    # One slip in a word of six letters too: it scores under the words' threshold (set
    # for typed words), and is a registered mark's words read with a slip.
    mark_id, text = next((i, t) for i, t in sorted(cat.texts(cat.all_ids()).items())
                         if len(words.words_of(t)) == 1 and len(words.words_of(t)[0]) == 6
                         and t.isalpha())
    serial = cat.refs([mark_id])[mark_id].serial
    slipped = text[:2] + ("x" if text[2].lower() != "x" else "y") + text[3:]
    assert words.similarity(words.words_of(slipped), words.words_of(text)) \
        < engine.words_threshold
    found = engine._with_words(photo, slipped, 5, typed=False, photographed=True)
    assert found.exists and found.matched_serial == serial and found.matched_by == "words"
    assert not engine._with_words(clean, slipped, 5, typed=False, photographed=False).exists


def test_a_short_word_read_with_a_slip_confirms_the_mark_the_photograph_shows(engine):
    """A word of four or five letters read with a slip ("popm" under PNPM) is too short for
    the slip to name a mark alone; it confirms the registered mark that the photographed
    mark's picture ranks among its first matches, and nothing else."""
    from server.engine import MarkAnswer
    cat = engine.index.catalog
    mark_id, text = next((i, t) for i, t in sorted(cat.texts(cat.all_ids()).items())
                         if t.isalpha() and len(words.words_of(t)) == 1
                         and 4 <= len(t) <= 5)
    serial = cat.refs([mark_id])[mark_id].serial
    slipped = text[0] + ("x" if text[1].lower() != "x" else "y") + text[2:]
    assert words.similarity(words.words_of(slipped), words.words_of(text)) \
        < engine.words_threshold
    own = engine.search([engine.prepare((SAMPLES / "registry" / f"{serial}.png").read_bytes())],
                        5)[0]
    assert own[0].serial == serial
    # The picture unsure of it: second among its matches, the mark not existing by them.
    shown = [own[1], own[0], *own[2:]]
    photo = MarkAnswer((0, 0, 10, 10), False, "", 0.4, 0.1, shown, detected=0.8)
    found = engine._with_words(photo, slipped, 5, typed=False, photographed=True)
    assert found.exists and found.matched_serial == serial and found.matched_by == "words"
    # Not where the picture shows other marks, nor in a clean picture (words confirm there
    # at the words' threshold only), nor with two slips.
    others = [h for h in own if h.serial != serial]
    elsewhere = MarkAnswer((0, 0, 10, 10), False, "", 0.4, 0.1, others, detected=0.8)
    assert not engine._with_words(elsewhere, slipped, 5, typed=False, photographed=True).exists
    clean = MarkAnswer((0, 0, 10, 10), False, "", 0.4, 0.1, shown)
    assert not engine._with_words(clean, slipped, 5, typed=False, photographed=False).exists
    twice = slipped[:2] + ("x" if slipped[2].lower() != "x" else "y") + slipped[3:]
    assert not engine._with_words(photo, twice, 5, typed=False, photographed=True).exists


def test_a_photographed_mark_the_detector_misses_is_found_by_its_words(
        sample_index, encoder, detector, worded):
    """No mark the detector finds in a photograph exists: its words are read whole, and a
    block of them that is a registered mark's words is a mark, boxed by its words."""
    import copy

    from server.engine import EngineConfig
    from tests.conftest import serving

    serial, text = worded
    blind = copy.copy(detector)
    blind.min_score = 1.01  # boxes nothing: the miss itself
    data = _photographed(serial, seed=5)
    eng = SearchEngine.open(sample_index, encoder, EngineConfig(detector=blind))
    try:
        with serving(eng) as address, grpc.insecure_channel(address) as ch:
            resp = pb_grpc.TrademarkSearchStub(ch).Search(pb.SearchRequest(image=data, k=5))
    finally:
        eng.close()
    assert resp.exists and resp.matched_by == "words" and resp.matched_serial == serial
    mark = resp.marks[0]
    assert mark.matched_serial == serial and mark.words_score >= resp.words_threshold
    x, y, w, h = mark.box.x, mark.box.y, mark.box.width, mark.box.height
    assert 300 <= x and x + w <= 660 and 150 <= y and y + h <= 510  # within the mark
    assert not mark.HasField("detection_score")


def test_the_same_brand_is_the_same_serial_or_the_same_words(engine, worded):
    serial, text = worded
    cat = engine.index.catalog
    texts = cat.texts(cat.all_ids())
    other_id = next(i for i, t in sorted(texts.items())
                    if words.words_of(t) and words.words_of(t) != words.words_of(text))
    other = cat.refs([other_id])[other_id].serial
    assert engine._same_brand(serial, serial)
    assert not engine._same_brand(serial, other)
    assert not engine._same_brand(serial, "no-such-serial")


def test_words_do_not_bring_in_a_mark_the_filters_leave_out(stub, engine, worded):
    serial, text = worded
    cat = engine.index.catalog
    other = next(t for _, t in sorted(cat.texts(cat.all_ids()).items())
                 if words.words_of(t) != words.words_of(text))
    image = next(im for q in sample_queries("unknown")
                 if not stub.Search(pb.SearchRequest(
                     image=(im := q["path"].read_bytes()), k=5)).exists)
    free = stub.Search(pb.SearchRequest(image=image, text=text, k=5))
    assert free.matched_serial == serial  # unfiltered, the words name it
    resp = stub.Search(pb.SearchRequest(image=image, text=text, k=5, filters=[
        pb.Filter(column="text", values=[other])]))
    assert resp.filtered and resp.matched_serial != serial
    assert all(m.serial != serial and m.text == other for m in resp.matches)


def test_a_lone_call_reads_words_with_all_the_read_threads(sample_index, encoder):
    """As the batcher gives a lone request all the encoder's threads, a lone call reads
    words with all the read threads; beside another call, or in a stream (its next chunk
    encoded meanwhile), one. The count goes back to none however a call ends."""
    from server.engine import EngineConfig
    eng = SearchEngine.open(sample_index, encoder, EngineConfig(read_threads=2))
    try:
        with eng.serving():
            assert eng._read_threads() == 2
            with eng.serving():
                assert eng._read_threads() == 1
        with eng.serving(calls=2):
            assert eng._read_threads() == 1
        with pytest.raises(RuntimeError), eng.serving(), eng.serving():
            raise RuntimeError("a call that fails")
        with eng.serving():
            assert eng._read_threads() == 2
    finally:
        eng.close()


def test_a_photographs_unsure_marks_are_read_closer_where_its_whole_read_found_words(
        engine, worded):
    """A photograph is read whole; an unsure mark found in it is read again in its box
    only where that read found words in the box, or saw the box too small to find any
    (engine.WHOLE_READ_LEAST). Asked for its words, every mark is read."""
    from server.engine import WHOLE_READ_LEAST, Answer, MarkAnswer, Picture, Query

    serial, _ = worded
    data = _photographed(serial, seed=8)
    picture = Picture(data)
    lines = engine.read_lines(picture())

    def clear(w: int) -> tuple[int, int, int, int]:  # a box of the surface with no words
        return next((x, y, w, w) for y in range(0, 600 - w, 10) for x in range(0, 800 - w, 10)
                    if all(x1 <= x or x0 >= x + w or y1 <= y or y0 >= y + w
                           for (x0, y0, x1, y1), _ in lines))

    worded_box, blank, tiny = (300, 150, 360, 360), clear(150), clear(WHOLE_READ_LEAST // 2)
    marks = tuple(MarkAnswer(box, False, "", 0.2, 0.1, [], detected=0.5)
                  for box in (worded_box, blank, tiny))
    answer = Answer(False, "", 0.2, 0.1, engine.scene_threshold, [], marks=marks,
                    photograph=True)
    read: list = []
    engine.read_box = lambda im, box: read.append(box) or []
    try:
        engine.add_words(answer, Query(data), 5, picture)
        assert read == [worded_box, tiny]
        read.clear()
        engine.add_words(answer, Query(data, read_words=True), 5, picture)
        assert read == [worded_box, blank, tiny]
    finally:
        del engine.read_box  # the method again


def test_a_cut_read_of_a_marks_words_names_no_mark_of_its_own(engine):
    """Read closer in a box, a mark's words can come out cut ("apache" of APACHE
    CASSANDRA) and name another registered mark; where the photograph's whole read found
    the whole of them there, naming a registered mark, the cut read's mark exists no more
    and the whole words' mark does. A mark elsewhere, read the same, keeps its answer."""
    from server.engine import MarkAnswer

    cat = engine.index.catalog
    ids = cat.all_ids()
    texts, refs = cat.texts(ids), cat.refs(ids)
    serial, text = next((refs[i].serial, t) for i, t in sorted(texts.items())
                        if len(words.words_of(t)) >= 2
                        and min(map(len, words.words_of(t))) >= 4)
    other = next(refs[i].serial for i in sorted(ids) if refs[i].serial != serial)
    part = words.words_of(text)[0]

    def named_by(box: tuple[int, int, int, int]) -> MarkAnswer:  # as `part` read closer
        return MarkAnswer(box, True, other, 0.3, 0.05, [], detected=0.5, words=part,
                          matched_by="words")
    block = [((120.0, 150.0, 380.0, 190.0), text)]  # its centre (250, 170)
    # The cut read's box holds the block's centre: it is answered anew by the whole words.
    cut = named_by((100, 100, 300, 120))
    marks = engine._marks_by_their_words(block, [cut], 5)
    assert marks[0].exists and marks[0].matched_serial == serial and marks[0].words == text
    # Another unsure mark holds it: that one is named, the cut read's names nothing.
    cut, elsewhere = named_by((100, 100, 140, 120)), named_by((600, 500, 150, 60))
    around = MarkAnswer((80, 90, 360, 160), False, "", 0.3, 0.05, [], detected=0.6)
    marks = engine._marks_by_their_words(block, [cut, around, elsewhere], 5)
    assert not marks[0].exists and marks[0].matched_by == "" and marks[0].words == part
    assert marks[1].exists and marks[1].matched_serial == serial and \
        marks[1].matched_by == "words"
    assert marks[2] == elsewhere
    # Without the whole read's block, the cut read stands (as before).
    assert engine._marks_by_their_words([], [cut, around], 5) == [cut, around]
    # Two marks' words read as one block: the mark that exists by its own words in it
    # stands, though the block's words name another (whose picture it ranks second).
    from server.engine import Hit
    both = [((120.0, 150.0, 380.0, 190.0), "ZORBLAX " + text)]
    own = MarkAnswer((80, 90, 360, 160), True, other, 0.3, 0.05,
                     [Hit(other, "", 0.5), Hit(serial, "", 0.4, text=text)], detected=0.6,
                     words="ZORBLAX", matched_by="words")
    assert engine._marks_by_their_words(both, [own], 5) == [own]
