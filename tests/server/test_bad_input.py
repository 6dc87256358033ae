"""Every kind of bad input the service must survive, through the real server.

Each gets the right status and a message saying what is wrong, and the server keeps
answering good requests in between. The fuzz test mutates real marks: the server never
crashes or hangs, and the indexer skips and reports what it cannot read.
"""
from __future__ import annotations

import io
import json
import random
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from indexer.cli import main as indexer_main
from proto import trademark_search_pb2 as pb
from tests.conftest import SAMPLES

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GOOD = (SAMPLES / "registry" / "86000000.png").read_bytes()


def _png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0,
                                                                0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


MARK = Image.open(io.BytesIO(GOOD)).convert("RGB")
BAD = {
    "empty": (b"", "empty"),
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8)),
                     "known format"),
    "truncated jpeg": (_encoded(MARK, "JPEG")[:600], "cannot decode"),
    "truncated png": (GOOD[: len(GOOD) // 3], "cannot decode"),
    "truncated gif": (_encoded(MARK, "GIF")[:300], "cannot decode"),
    "truncated webp": (_encoded(MARK, "WEBP")[:200], ""),
    "decompression bomb": (_png_bomb(), "Mpx limit"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>',
            "known format"),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "known format"),
    "text": (b"this is a trademark, honest", "known format"),
    # Decodes, but holds no mark: it would match every blank file perfectly.
    "blank white": (_encoded(Image.new("RGB", (64, 64), "white"), "PNG"), "blank"),
    "blank transparent": (_encoded(Image.new("RGBA", (64, 64), (9, 9, 9, 0)), "PNG"), "blank"),
    "blank jpeg paper": (_encoded(Image.new("RGB", (64, 64), (251, 252, 250)), "JPEG"), "blank"),
}
GOOD_ODD = {
    "1x1": _encoded(Image.new("RGB", (1, 1), "red"), "PNG"),
    "one flat colour (a colour mark)": _encoded(Image.new("RGB", (64, 64), (10, 90, 200)), "PNG"),
    "animated gif": b"",  # filled below
    "cmyk jpeg": _encoded(MARK.convert("CMYK"), "JPEG"),
    "16-bit png": _encoded(Image.fromarray((np.asarray(MARK.convert("L")).astype(np.uint16)
                                            * 257)), "PNG"),
    "palette png with transparency": _encoded(MARK.convert("P"), "PNG", transparency=0),
}
_frames = [MARK, MARK.rotate(90)]
_buf = io.BytesIO()
_frames[0].save(_buf, "GIF", save_all=True, append_images=_frames[1:])
GOOD_ODD["animated gif"] = _buf.getvalue()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_images_are_invalid_argument_with_a_reason(stub, name):
    data, message = BAD[name]
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(pb.SearchRequest(image=data, k=3), timeout=30)
    assert err.value.code() == INVALID, name
    assert message in err.value.details() and err.value.details(), name
    assert stub.Search(pb.SearchRequest(image=GOOD, k=1), timeout=30).matched_serial == "86000000"


@pytest.mark.parametrize("name", list(GOOD_ODD))
def test_odd_but_valid_images_are_answered(stub, name):
    resp = stub.Search(pb.SearchRequest(image=GOOD_ODD[name], k=3), timeout=30)
    assert len(resp.matches) == 3, name


def test_payload_over_the_message_limit_is_resource_exhausted(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(pb.SearchRequest(image=b"\0" * (33 * 1024 * 1024), k=1), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Search(pb.SearchRequest(image=GOOD, k=1), timeout=30).exists


def test_a_stream_abandoned_half_way_does_not_hurt_the_server(stub):
    def requests():
        for i in range(1000):
            yield pb.SearchRequest(request_id=str(i), image=GOOD, k=1)
    stream = stub.SearchStream(requests(), timeout=60)
    got = [next(stream) for _ in range(5)]
    stream.cancel()
    assert [r.request_id for r in got] == ["0", "1", "2", "3", "4"]
    assert stub.Search(pb.SearchRequest(image=GOOD, k=1), timeout=30).exists


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bytes, truncate, splice random bytes in, zero a run, duplicate a run."""
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        b = b[: rng.randrange(len(b))]
    elif kind == 2:
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:
        at, n = rng.randrange(len(b)), rng.randint(1, 256)
        b[at:at + n] = bytes(min(n, len(b) - at))
    else:
        at, n = rng.randrange(len(b)), rng.randint(1, 512)
        b[at:at] = b[at:at + n]
    return bytes(b)


def _corpus():
    files = sorted((SAMPLES / "registry").glob("*.png"))[:10] + \
        sorted((SAMPLES / "queries").glob("*.jpg"))[:10]
    return [f.read_bytes() for f in files]


def fuzz_server(stub, cases: int, seed: int) -> dict:
    rng = random.Random(seed)
    corpus = _corpus()
    reqs = [pb.SearchRequest(request_id=str(i), image=mutate(rng.choice(corpus), rng), k=2)
            for i in range(cases)]
    answers = list(stub.SearchStream(iter(reqs), timeout=max(60, cases)))
    assert [a.request_id for a in answers] == [r.request_id for r in reqs]
    errors = [a for a in answers if a.HasField("error")]
    assert all(a.error.code == INVALID.value[0] and a.error.message for a in errors)
    assert stub.Search(pb.SearchRequest(image=GOOD, k=1), timeout=30).exists
    return {"cases": cases, "errors": len(errors)}


def test_fuzzed_images_never_break_the_server(stub):
    result = fuzz_server(stub, 60, seed=1)
    assert 0 < result["errors"] < 60  # some mutations decode, some do not


@pytest.mark.slow
def test_fuzz_1000_cases(stub):
    result = fuzz_server(stub, 1000, seed=2)
    print(f"fuzz: {result}")


def test_indexer_skips_and_reports_fuzzed_files(tmp_path, capsys):
    rng = random.Random(3)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    for i, data in enumerate(_corpus()[:12]):
        (folder / f"m{i:02d}.png").write_bytes(mutate(data, rng) if i % 2 else data)
    assert indexer_main(["build", "--images", str(folder), "--out", str(tmp_path / "idx"),
                         "--no-progress"]) == 0
    report = json.loads(next((tmp_path / "idx" / "versions").glob("v*/report.json")).read_text())
    assert report["indexed"] + len(report["skipped"]) == 12 and report["indexed"] >= 6
    assert all(s["reason"] for s in report["skipped"])
