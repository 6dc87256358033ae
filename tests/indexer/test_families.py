"""A register that files one mark in several renditions, through the real server: a copy
of such a mark is answered "exists" with one of them, the others follow as the same mark."""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from indexer import decision
from indexer.build import build
from indexer.sources import ImageItem
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.app import create_server
from server.engine import SearchEngine
from server.service import TrademarkSearchServicer
from tests.conftest import quiet

BRAND = 7  # the sample mark registered three times


def _one_colour(im: Image.Image) -> Image.Image:
    """The mark in black on white, as owners file a one-colour version."""
    grey = np.asarray(ImageOps.grayscale(im), dtype=np.float32)
    return Image.fromarray(np.where(grey < 235, 0, 255).astype(np.uint8)).convert("RGB")


@pytest.fixture(scope="module")
def family_stub(tmp_path_factory, encoder, sample_items):
    root = tmp_path_factory.mktemp("families")
    brand = Image.open(sample_items[BRAND].path).convert("RGB")
    items = list(sample_items[:80])
    for suffix, im in (("refiled", ImageOps.expand(brand, 60, "white")),
                       ("gray", ImageOps.grayscale(brand).convert("RGB")),
                       ("black", _one_colour(brand))):
        path = root / f"{suffix}.png"
        im.save(path)
        items.append(ImageItem(f"{sample_items[BRAND].serial}-{suffix}", path))
    build(items, root / "index", encoder, quiet())
    engine = SearchEngine.open(root / "index", encoder)
    servicer = TrademarkSearchServicer(engine)
    server, port, _ = create_server("127.0.0.1:0", servicer)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield pb_grpc.TrademarkSearchStub(ch), engine, brand
    server.stop(None)
    servicer.close()
    engine.close()


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.filter(ImageFilter.GaussianBlur(1)).save(buf, "JPEG", quality=70)
    return buf.getvalue()


def test_a_copy_of_a_mark_filed_three_times_exists_with_its_renditions_next(family_stub,
                                                                          sample_items):
    stub, engine, brand = family_stub
    assert engine.rule.kind == decision.FAMILY and 0.3 < engine.rule.family_similarity < 1
    serial = sample_items[BRAND].serial
    family = {serial} | {f"{serial}-{s}" for s in ("refiled", "gray", "black")}
    query = _jpeg(brand)
    resp = stub.Search(pb.SearchRequest(image=query, k=6), timeout=30)
    assert resp.exists and resp.matched_serial in family
    assert {m.serial for m in resp.matches[:4]} == family
    # A match is the same mark where it is as close to the top one as the register's
    # renditions bound says: the mark filed again on a larger canvas is, at least.
    hits = engine.search([engine.prepare(query)], 6)[0]
    assert [m.same_mark for m in resp.matches] == \
        [h.to_top >= engine.rule.family_similarity for h in hits[:6]]
    assert resp.matches[0].same_mark and sum(m.same_mark for m in resp.matches[1:4]) >= 1
    assert not any(m.same_mark for m in resp.matches[4:])
    # Renditions are not runners-up: the plain margin would count them.
    plain = decision.Rule(decision.MARGIN).scores([[m.score for m in resp.matches]])[0]
    assert resp.confidence > plain + 0.05


def test_an_unregistered_mark_is_not_confirmed_by_look_alikes(family_stub, sample_items):
    stub, _, _ = family_stub
    stranger = sample_items[200].path.read_bytes()  # not among the 80 indexed
    resp = stub.Search(pb.SearchRequest(image=stranger, k=5), timeout=30)
    assert not resp.exists and resp.confidence < resp.threshold
    assert [m.same_mark for m in resp.matches][:1] == [True]
