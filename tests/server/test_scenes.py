"""Marks in photographs, through the real gRPC server with the shipped detector: each mark
found answered on its own, with its box (indexer.network.locate)."""
from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys

import grpc
import pytest
from PIL import Image

from indexer.network.detector import iou
from indexer.scene_calibration import strangers
from indexer.network.scenes import compose
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from tests.conftest import ROOT, SAMPLES


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def stub(scene_server_address):
    with grpc.insecure_channel(scene_server_address) as ch:
        yield pb_grpc.TrademarkSearchStub(ch)


@pytest.fixture(scope="module")
def registered() -> list[str]:
    """Sample marks that have no other rendition in the sample register."""
    with open(SAMPLES / "registry.csv") as f:
        return [r["serial"] for r in csv.DictReader(f)]


def mark(serial: str) -> Image.Image:
    return Image.open(SAMPLES / "registry" / f"{serial}.png").convert("RGB")


def search(stub, image: bytes, **kw) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(request_id="t", image=image, k=5, **kw), timeout=60)


def box(m: pb.MarkAnswer) -> tuple[int, int, int, int]:
    return m.box.x, m.box.y, m.box.width, m.box.height


def test_two_registered_marks_in_photographs_are_each_answered_with_their_box(stub, registered):
    """Photographs made by the scene generator (the detector never saw these marks, nor
    these pictures), two registered marks each: each mark gets an answer of its own,
    where the generator put it, with that mark first among its matches; a mark said to
    exist is said to be the right one. (How many are confirmed over the threshold is
    `make eval`'s figure: docs/scenes.md.)"""
    rng = random.Random(11)
    answered = total = 0
    for _ in range(6):
        serials = rng.sample(registered, 2)
        scene = compose(rng, [mark(s) for s in serials])
        resp = search(stub, jpeg(scene.image))
        # Marks that exist first, each group most confident first.
        assert list(resp.marks) == sorted(resp.marks, key=lambda m: (-m.exists, -m.confidence))
        for serial, true in zip(serials, scene.boxes):
            total += 1
            answered += any(iou(box(m), true) >= 0.5 and m.matches[0].serial == serial
                            for m in resp.marks)
        for m in resp.marks:
            if m.exists:
                assert any(m.matched_serial == s and in_place(m, b)
                           for s, b in zip(serials, scene.boxes))
        if resp.marks:  # the answer's own fields are the surest mark's
            top = resp.marks[0]
            assert (resp.exists, resp.matched_serial, resp.confidence) == (
                top.exists, top.matched_serial, top.confidence)
            assert [m.serial for m in resp.matches] == [m.serial for m in top.matches]
    assert total == 12
    assert answered >= 8, f"{answered} of {total} registered marks answered in their place"


def in_place(m, true) -> bool:
    """A mark's box is where the mark is: the detector's overlaps it by IoU >= 0.5; one
    boxed by its words (found by reading the picture whole) has its centre in it."""
    if m.HasField("detection_score"):
        return iou(box(m), true) >= 0.5
    x, y, w, h = box(m)
    return true[0] <= x + w / 2 <= true[0] + true[2] and true[1] <= y + h / 2 <= true[1] + true[3]


def test_a_strangers_mark_in_a_photograph_does_not_exist(stub):
    """Brand-free marks (in no register) photographed: no mark over them is said to be
    registered."""
    rng = random.Random(5)
    pool = strangers()
    said = 0
    for _ in range(6):
        scene = compose(rng, [rng.choice(pool)])
        resp = search(stub, jpeg(scene.image))
        said += any(m.exists and iou(box(m), scene.boxes[0]) > 0 for m in resp.marks)
    assert said == 0


def test_a_photographed_mark_whose_keypoints_line_up_exists_by_them(stub, registered):
    """With a threshold no decision score reaches, a mark found in a photograph can still
    exist: by its keypoints lined up with its first match's (indexer.geometry), and then
    it is the mark photographed. Strangers photographed the same way never line up."""
    rng = random.Random(3)
    by_keypoints = 0
    for serial in rng.sample(registered, 16):
        scene = compose(rng, [mark(serial)])
        resp = search(stub, jpeg(scene.image), threshold=1.0)
        for m in resp.marks:
            if m.matched_by == "keypoints":
                by_keypoints += 1
                assert m.exists and m.matched_serial == serial and in_place(m, scene.boxes[0])
                assert m.confidence < 1.0  # not by its decision score
    assert by_keypoints >= 4  # of 16 (a plain disc has too few keypoints to say)
    pool = strangers()
    for _ in range(6):
        scene = compose(rng, [rng.choice(pool)])
        resp = search(stub, jpeg(scene.image), threshold=1.0)
        assert not any(m.matched_by == "keypoints" for m in resp.marks)


def test_a_registered_marks_keypoints_are_taken_once_and_kept(scene_engine, registered,
                                                                monkeypatch):
    """The registered mark a photographed one is compared with: its thumbnail read and its
    keypoints taken at the first comparison, kept for the next (server.engine
    KEYPOINTS_KEPT), which lines up alike; so do marks lined up side by side."""
    from server.engine import KEYPOINTS_KEPT, Picture, paired

    rng = random.Random(8)
    pictures = [jpeg(compose(rng, [mark(s) for s in rng.sample(registered, 2)]).image)
                for _ in range(3)]
    found = []
    for data in pictures:
        parts = scene_engine.locate(data)
        hits = scene_engine.search([c for p in parts for c in p.crops], 5)
        answer = scene_engine.answer(paired(parts, hits), None, 5)
        found.append(([m for m in answer.marks if m.detected is not None and m.hits],
                      Picture(data)))
    catalog = scene_engine.index.catalog
    read = []
    thumbnails = catalog.thumbnails
    monkeypatch.setattr(catalog, "thumbnails", lambda serials: read.extend(serials) or
                        thumbnails(serials))
    scene_engine._registered_keypoints.cache_clear()
    first = [scene_engine.alignments(marks, picture) for marks, picture in found]
    named = {m.hits[0].serial for marks, _ in found for m in marks}
    assert len(named) >= 3 and sorted(read) == sorted(named)  # each read once
    assert any(a.verified for aligned in first for a in aligned)  # not all empty
    read.clear()
    assert [scene_engine.alignments(marks, picture) for marks, picture in found] == first
    assert read == []
    assert scene_engine._registered_keypoints.cache_info().maxsize == KEYPOINTS_KEPT
    # A lone call on two cores lines its marks up side by side: the same alignments.
    monkeypatch.setattr(scene_engine, "read_threads", 2)
    assert scene_engine._lone_map() is not map
    assert [scene_engine.alignments(marks, picture) for marks, picture in found] == first


def test_a_clean_mark_is_one_mark_searched_whole(stub, registered):
    image = (SAMPLES / "registry" / f"{registered[0]}.png").read_bytes()
    resp = search(stub, image)
    w, h = Image.open(io.BytesIO(image)).size
    assert resp.exists and resp.matched_serial == registered[0]
    (only,) = resp.marks
    assert box(only) == (0, 0, w, h) and not only.HasField("detection_score")
    assert only.matched_serial == resp.matched_serial and only.confidence == resp.confidence


def test_a_photograph_with_no_mark_says_so_and_is_searched_whole(stub):
    """A photographed surface with nothing on it: no mark, and an answer for the whole."""
    picture = compose(random.Random(1), []).image
    resp = search(stub, jpeg(picture))
    assert list(resp.marks) == [] and not resp.exists and len(resp.matches) == 5


def test_a_huge_photograph_is_answered_in_its_own_pixels(stub, registered):
    """The same photograph at 8 times the size (5-6 k px a side): the same mark, its box
    8 times as large, in the big picture's pixels."""
    rng = random.Random(2)
    scene = compose(rng, [mark(registered[3])])
    small = search(stub, jpeg(scene.image))
    big = search(stub, jpeg(scene.image.resize((scene.image.width * 8,
                                                scene.image.height * 8)), 80))
    assert small.marks and big.marks, "the mark was not found"
    assert big.matched_serial == small.matched_serial == registered[3]
    x, y, w, h = box(small.marks[0])
    assert iou(box(big.marks[0]), (8 * x, 8 * y, 8 * w, 8 * h)) >= 0.7


def test_a_region_with_nothing_in_it_is_invalid_argument(stub, registered):
    canvas = Image.new("RGB", (600, 400), "white")
    canvas.paste(mark(registered[0]).resize((200, 200)), (350, 100))
    with pytest.raises(grpc.RpcError) as e:
        search(stub, jpeg(canvas), region=pb.Region(x=10, y=10, width=200, height=200))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "blank" in e.value.details()


def test_search_stream_answers_every_mark_and_a_bad_item_fails_alone(stub, registered):
    rng = random.Random(7)
    scene = compose(rng, [mark(s) for s in registered[10:12]])
    items = [jpeg(scene.image), b"not an image", (SAMPLES / "registry" /
                                                  f"{registered[5]}.png").read_bytes()]
    out = list(stub.SearchStream(iter(pb.SearchRequest(request_id=str(i), image=im, k=3)
                                      for i, im in enumerate(items)), timeout=120))
    assert [r.request_id for r in out] == ["0", "1", "2"]
    assert len(out[0].marks) >= 1 and all(m.HasField("detection_score") for m in out[0].marks)
    assert out[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert out[2].matched_serial == registered[5] and len(out[2].marks) == 1


def test_client_lines_carry_each_mark(scene_server_address, registered, tmp_path):
    """`client batch` and `search --json`: a "marks" list, most confident first, each
    with its box [x, y, w, h], verdict, serial, confidence and matches."""
    rng = random.Random(3)
    scene = compose(rng, [mark(s) for s in registered[20:22]])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scene.jpg").write_bytes(jpeg(scene.image))
    out = tmp_path / "out.jsonl"
    subprocess.run([sys.executable, "-m", "client", "--server", scene_server_address, "batch",
                    str(tmp_path / "in"), "--out", str(out), "--no-progress"], check=True,
                   cwd=ROOT)
    (line,) = [json.loads(t) for t in out.read_text().splitlines()]
    assert line["marks"], "no mark in the answer"
    for m in line["marks"]:
        assert {"box", "exists", "matched_serial", "confidence", "matches"} <= set(m)
        assert len(m["box"]) == 4 and all(isinstance(v, int) for v in m["box"])
    assert [m["confidence"] for m in line["marks"]] == sorted(
        (m["confidence"] for m in line["marks"]), reverse=True)
    printed = subprocess.run(
        [sys.executable, "-m", "client", "--server", scene_server_address, "search",
         "--input-img", str(tmp_path / "in" / "scene.jpg"), "--plot",
         str(tmp_path / "plot.png")], check=True, cwd=ROOT, capture_output=True, text=True)
    assert "found in the picture" in printed.stdout and "mark 1 at x=" in printed.stdout
    assert Image.open(tmp_path / "plot.png").size[0] > 0
