"""The client CLI against a real server: printed answers, JSON, JSONL, the picture."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from PIL import Image

from client.cli import main
from tests.conftest import ROOT, SAMPLES


def test_search_prints_the_original_tools_answer(server_address, capsys):
    img = SAMPLES / "queries" / "q00169.png"  # a registered mark after JPEG damage
    assert main(["--server", server_address, "search", "--input-img", str(img),
                 "--retrievals-num", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Trade Mark Existed! - serial number: 86030192"
    assert out[1].startswith("Serial Numbers of similar images: ['86030192', ")
    assert len([l for l in out if l.strip()[:2] in ("1.", "2.", "3.")]) == 3


def test_search_unregistered_json_and_plot(server_address, capsys, tmp_path):
    img = SAMPLES / "queries" / "q01121.jpg"  # not in the registry
    plot = tmp_path / "pic" / "result.png"
    assert main(["--server", server_address, "search", "--input-img", str(img),
                 "--retrievals-num", "4", "--json", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exists"] is False and result["matched_serial"] is None
    assert result["file"] == str(img) and result["error"] is None
    assert len(result["matches"]) == 4 and set(result["matches"][0]) >= {"serial", "score"}
    with Image.open(plot) as pic:
        assert pic.format == "PNG" and pic.width > 800 and pic.height > 300


def test_batch_writes_one_line_per_input(server_address, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["q00169.png", "q01121.jpg", "q00042.jpg"]:
        shutil.copy(SAMPLES / "queries" / name, folder / name)
    (folder / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "results.jsonl"
    assert main(["--server", server_address, "batch", str(folder), "--out", str(out),
                 "--retrievals-num", "2", "--no-progress"]) == 0
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == 4 and len({l["request_id"] for l in lines}) == 4
    by_name = {l["file"].split("/")[-1]: l for l in lines}
    assert by_name["q00169.png"]["exists"] and by_name["q00169.png"]["matched_serial"] == "86030192"
    assert by_name["q01121.jpg"]["exists"] is False
    assert by_name["zz-corrupt.png"]["error"]["code"] == "INVALID_ARGUMENT"
    keys = {"file", "request_id", "exists", "matched_serial", "top_score", "confidence",
            "threshold", "matches", "error"}
    assert all(set(l) == keys for l in lines)
    assert "4 images: 2 exist, 1 not, 1 failed" in capsys.readouterr().out


def test_batch_from_csv_reports_missing_files(server_address, tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text(f"file,note\n{SAMPLES / 'queries' / 'q00042.jpg'}\nmissing.png,x\n")
    out = tmp_path / "r.jsonl"
    assert main(["--server", server_address, "batch", str(csv), "--out", str(out),
                 "--no-progress"]) == 0
    lines = {l["file"].split("/")[-1]: l for l in map(json.loads, out.read_text().splitlines())}
    assert lines["q00042.jpg"]["exists"]
    assert lines["missing.png"]["error"]["code"] == "NOT_FOUND"


def test_unreachable_server_is_a_clear_error(capsys):
    rc = main(["--server", "127.0.0.1:1", "--timeout", "2", "search", "--input-img",
               str(SAMPLES / "queries" / "q00042.jpg")])
    assert rc == 1 and "UNAVAILABLE" in capsys.readouterr().err


def test_client_imports_neither_torch_nor_faiss():
    code = ("import sys, client.cli, client.plot, client.api; "
            "bad = [m for m in ('torch', 'faiss', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)
