"""The JSON API beside the page, over real HTTP against the real search server."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from PIL import Image

from client.api import MAX_IMAGE_BYTES, SearchClient
from tests.conftest import ROOT, SAMPLES, side_by_side
from tests.web.conftest import UNREGISTERED, plain, running


def post(url: str, fields: dict, image: bytes | None, filename: str = "mark.png"
         ) -> tuple[int, dict]:
    """A multipart POST as a browser sends it: (status, JSON body)."""
    boundary = "----trademark-test"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_info_reports_the_index(web_url, engine):
    status, kind, body = get(f"{web_url}/api/info")
    info = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert info["count"] == engine.index.index.ntotal
    assert info["max_upload_bytes"] == MAX_IMAGE_BYTES
    assert info["filterable_columns"] == ["name", "nice_classes", "source", "status", "text"]
    assert abs(info["threshold"] - engine.threshold) < 1e-4


def test_search_answers_like_a_batch_line(web_url):
    q = plain("known")
    status, res = post(f"{web_url}/api/search", {"k": "5"}, q["path"].read_bytes(),
                       q["path"].name)
    assert status == 200, res
    assert res["exists"] and res["matched_serial"] == q["expected_serial"]
    assert res["file"] == q["path"].name and len(res["matches"]) == 5
    assert set(res) >= {"request_id", "top_score", "confidence", "threshold", "error"}
    assert res["matches"][0]["serial"] == q["expected_serial"]


def test_an_unregistered_mark_is_not_found(web_url):
    q = plain("unknown", UNREGISTERED)
    status, res = post(f"{web_url}/api/search", {}, q["path"].read_bytes())
    assert status == 200 and not res["exists"] and res["matched_serial"] is None


def test_region_crops_to_the_mark(web_url):
    """A registered mark pasted into the corner of a larger picture beside another one:
    the region picks it out."""
    q = plain("known", 1)
    canvas, box = side_by_side(plain("unknown", 0)["path"], q["path"], gap=40)
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    region = ",".join(map(str, box))
    status, res = post(f"{web_url}/api/search", {"region": region}, buf.getvalue())
    assert status == 200 and res["matched_serial"] == q["expected_serial"]


@pytest.mark.parametrize("fields, image, status, says", [
    ({}, b"", 400, "empty"),
    ({}, b"this is not an image", 400, "INVALID_ARGUMENT"),
    ({"k": "0"}, None, 400, "k"),
    ({"k": "ten"}, None, 400, "k"),
    ({"threshold": "2"}, None, 400, "threshold"),
    ({"region": "1,2,3"}, None, 400, "X,Y,WIDTH,HEIGHT"),
    ({"region": "0,0,0,10"}, None, 400, "empty"),
    ({"region": "0,0,5000,5000"}, None, 400, "not inside"),
    ({"filter": "status"}, None, 400, "COLUMN=VALUE"),
    ({"filter": "owner=ACME"}, None, 400, "'owner'"),
    ({"k": "100000"}, None, 400, "k must be between"),
])
def test_bad_requests_get_a_4xx_with_a_message(web_url, fields, image, status, says):
    png = (SAMPLES / "registry").glob("*.png").__next__().read_bytes()
    code, body = post(f"{web_url}/api/search", fields, png if image is None else image)
    assert code == status and says in body["detail"], body


def test_a_missing_image_field_is_a_400(web_url):
    code, body = post(f"{web_url}/api/search", {"k": "3"}, None)
    assert code == 400 and "image" in body["detail"]


def test_an_upload_over_the_limit_is_refused(web_url):
    code, body = post(f"{web_url}/api/search", {}, b"\0" * (MAX_IMAGE_BYTES + 1))
    assert code == 413 and "MB" in body["detail"]


def test_filters_pass_through_to_the_server(web_url):
    q = plain("known")
    status, res = post(f"{web_url}/api/search", {"filter": "status=dead", "k": "30"},
                       q["path"].read_bytes())
    assert status == 200 and res["filtered"] and res["candidates"] == 57
    assert all(m["metadata"]["status"] == "dead" for m in res["matches"])
    status, info = post(f"{web_url}/api/search", {}, q["path"].read_bytes())
    assert not info["filtered"] and info["candidates"] is None


def test_thumbnails_by_serial(web_url):
    serial = plain("known")["expected_serial"]
    status, kind, body = get(f"{web_url}/api/thumbnails/{serial}")
    assert status == 200 and kind == "image/png"
    assert Image.open(io.BytesIO(body)).format == "PNG"
    status, _, body = get(f"{web_url}/api/thumbnails/no-such-serial")
    assert status == 404 and b"no-such-serial" in body


def test_page_and_assets_are_served_by_the_app(web_url):
    status, kind, body = get(f"{web_url}/")
    assert status == 200 and kind.startswith("text/html") and b"/static/app.js" in body
    assert b"http" not in body.replace(b"http-equiv", b"")  # nothing from elsewhere
    for asset in ("app.js", "app.css"):
        status, _, body = get(f"{web_url}/static/{asset}")
        assert status == 200 and b"http://" not in body and b"https://" not in body


def test_an_unreachable_server_is_a_503():
    with SearchClient("127.0.0.1:1", timeout=2) as client, running(client) as url:
        status, _, body = get(f"{url}/api/info")
        code, res = post(f"{url}/api/search", {}, plain("known")["path"].read_bytes())
    assert status == 503 and b"UNAVAILABLE" in body
    assert code == 503 and "UNAVAILABLE" in res["detail"]


def test_web_command_prints_where_it_listens(server_address):
    proc = subprocess.Popen([sys.executable, "-m", "client", "web", "--server", server_address,
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("web on http://127.0.0.1:"), line
        status, _, body = get(f"{line.split()[-1]}/api/info")
        assert status == 200 and json.loads(body)["count"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_web_on_a_busy_port_exits_2(server_address):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "client", "web", "--server",
                               server_address, "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
