"""A region of interest and filters on the register's data, through the real gRPC server."""
from __future__ import annotations

import csv
import io
import json

import grpc
import pytest
from PIL import Image

from proto import trademark_search_pb2 as pb
from tests.conftest import SAMPLES, side_by_side


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    with open(SAMPLES / "registry.csv") as f:
        return {r["serial"]: r for r in csv.DictReader(f)}


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def two_marks(left: str, right: str) -> tuple[bytes, tuple[int, int, int, int]]:
    """Two registered marks side by side, and the box of the right one."""
    canvas, box = side_by_side(*(SAMPLES / "registry" / f"{s}.png" for s in (left, right)))
    return png(canvas), box


def request(image: bytes, k: int = 5, region=None, filters=(), request_id="r"):
    req = pb.SearchRequest(request_id=request_id, image=image, k=k)
    if region is not None:
        req.region.CopyFrom(pb.Region(x=region[0], y=region[1], width=region[2],
                                      height=region[3]))
    for column, values in filters:
        req.filters.append(pb.Filter(column=column, values=values))
    return req


def test_the_region_picks_the_mark_out_of_a_larger_picture(stub):
    image, box = two_marks("86000000", "86000296")
    whole = stub.Search(request(image), timeout=30)
    cropped = stub.Search(request(image, region=box), timeout=30)
    assert cropped.exists and cropped.matched_serial == "86000296"
    assert cropped.top_score > whole.top_score  # the other mark no longer in the way
    left = stub.Search(request(image, region=(0, 0, box[0] - 60, box[3])), timeout=30)
    assert left.matched_serial == "86000000"


@pytest.mark.parametrize("region, says", [((0, 0, 0, 10), "empty"),
                                          ((-5, 0, 10, 10), "empty or starts outside"),
                                          ((400, 0, 200, 100), "not inside the")])
def test_a_bad_region_is_invalid_argument(stub, region, says):
    image, _ = two_marks("86000000", "86000296")
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(request(image, region=region), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in e.value.details()


def test_filters_keep_to_the_marks_that_pass_and_say_how_many(stub, manifest):
    dead = {s for s, r in manifest.items() if r["status"] == "dead"}
    query = (SAMPLES / "registry" / "86000000.png").read_bytes()  # a live mark
    assert manifest["86000000"]["status"] == "live"
    resp = stub.Search(request(query, k=20, filters=[("status", ["dead"])]), timeout=30)
    assert resp.filtered and resp.candidates == len(dead)
    assert len(resp.matches) == 20 and {m.serial for m in resp.matches} <= dead
    assert all(json.loads(m.metadata)["status"] == "dead" for m in resp.matches)
    # The mark itself does not pass: among the dead marks, it does not exist.
    assert not resp.exists
    live = stub.Search(request(query, filters=[("status", ["live"])]), timeout=30)
    assert live.exists and live.matched_serial == "86000000" and live.filtered


def test_a_cell_with_several_classes_matches_each(stub, manifest):
    query = (SAMPLES / "registry" / "86000296.png").read_bytes()
    classes = manifest["86000296"]["nice_classes"].split(";")
    assert len(classes) == 2
    passing = {s for s, r in manifest.items()
               if classes[1] in r["nice_classes"].split(";")
               and r["status"] == manifest["86000296"]["status"]}
    resp = stub.Search(request(query, k=300, filters=[
        ("nice_classes", [classes[1]]), ("status", [manifest["86000296"]["status"]])]),
        timeout=30)
    assert resp.matched_serial == "86000296" and resp.candidates == len(passing)
    assert {m.serial for m in resp.matches} == passing  # every passing mark, none other


def test_an_unknown_column_is_refused_before_decoding(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(request(b"not even an image", filters=[("owner", ["ACME"])]), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'owner'" in e.value.details() and "nice_classes" in e.value.details()


def test_a_stream_mixes_filters_regions_and_bad_items(stub):
    image, box = two_marks("86000000", "86000296")
    reqs = [request(image, region=box, request_id="crop"),
            request(image, region=(0, 0, 9999, 9), request_id="outside"),
            request(image, filters=[("status", ["dead"])], request_id="dead"),
            request(image, filters=[("colour", ["red"])], request_id="unknown"),
            request(image, request_id="plain")]
    out = {r.request_id: r for r in stub.SearchStream(iter(reqs), timeout=60)}
    assert out["crop"].matched_serial == "86000296" and not out["crop"].HasField("error")
    assert out["outside"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert out["unknown"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert out["dead"].filtered and not out["plain"].filtered and out["plain"].matches


def test_info_lists_the_filterable_columns(stub):
    info = stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=30)
    # `text`: the words of the marks the build read them in (indexer.words)
    assert list(info.filterable_columns) == ["name", "nice_classes", "source", "status", "text"]
