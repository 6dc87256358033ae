"""The client CLI against a real server: printed answers, JSON, JSONL, the picture."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from client.cli import main
from tests.conftest import ROOT, SAMPLES, side_by_side


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
    # Any failed item: exit 1, the failures counted by reason.
    assert main(["--server", server_address, "batch", str(folder), "--out", str(out),
                 "--retrievals-num", "2", "--no-progress"]) == 1
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == 4 and len({l["request_id"] for l in lines}) == 4
    by_name = {l["file"].split("/")[-1]: l for l in lines}
    assert by_name["q00169.png"]["exists"] and by_name["q00169.png"]["matched_serial"] == "86030192"
    assert by_name["q01121.jpg"]["exists"] is False
    assert by_name["zz-corrupt.png"]["error"]["code"] == "INVALID_ARGUMENT"
    keys = {"file", "request_id", "exists", "matched_serial", "top_score", "confidence",
            "threshold", "matches", "filtered", "candidates", "marks", "words", "words_score",
            "matched_by", "words_threshold", "error"}
    assert all(set(l) == keys for l in lines)
    assert "4 images: 2 exist, 1 not, 1 failed (1 INVALID_ARGUMENT)" in capsys.readouterr().out


def test_batch_from_csv_reports_missing_files_in_input_order(server_address, tmp_path, capsys):
    csv = tmp_path / "list.csv"
    q = SAMPLES / "queries"
    csv.write_text(f"file,note\nmissing.png,x\n{q / 'q00042.jpg'},\nalso-missing.png,\n"
                   f"{q / 'q00169.png'},\n")
    out = tmp_path / "r.jsonl"
    assert main(["--server", server_address, "batch", str(csv), "--out", str(out),
                 "--no-progress"]) == 1
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["file"].split("/")[-1] for l in lines] == [
        "missing.png", "q00042.jpg", "also-missing.png", "q00169.png"]
    assert [l["request_id"] for l in lines] == ["0", "1", "2", "3"]
    assert lines[1]["exists"] and lines[0]["error"]["code"] == "NOT_FOUND"
    assert "2 failed (2 NOT_FOUND)" in capsys.readouterr().out


def test_batch_reads_an_indexer_manifest_with_images(server_address, tmp_path):
    # The registry's own manifest names files relative to --images, as `indexer build` reads it.
    out = tmp_path / "r.jsonl"
    head = tmp_path / "head.csv"
    head.write_text("".join((SAMPLES / "registry.csv").read_text().splitlines(True)[:4]))
    assert main(["--server", server_address, "batch", str(head), "--images",
                 str(SAMPLES / "registry"), "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == 3 and all(l["exists"] and l["error"] is None for l in lines)


def test_connection_options_go_before_or_after_the_command(server_address, capsys):
    img = str(SAMPLES / "queries" / "q00169.png")
    assert main(["search", "--input-img", img, "--retrievals-num", "5",
                 "--server", server_address]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Trade Mark Existed! - serial number: 86030192"
    assert out[1].startswith("Serial Numbers of similar images: ['86030192', ")
    assert main(["info", "--server", server_address]) == 0
    threshold = next(l for l in capsys.readouterr().out.splitlines() if "threshold:" in l)
    assert len(threshold.split(":")[1].strip()) <= 6  # 0.307, not 0.30700001120567322


def test_a_host_without_port_means_the_default_port():
    from client.channel import target
    assert target("localhost") == "localhost:50051"
    assert target("10.0.0.7:6000") == "10.0.0.7:6000"
    assert target("[::1]") == "[::1]:50051" and target("::1") == "[::1]:50051"
    assert target("[::1]:7000") == "[::1]:7000"
    assert target("dns:///search.internal:50051") == "dns:///search.internal:50051"


def test_several_addresses_make_one_balanced_target():
    from client.channel import AddressError, authority, target
    assert target("10.0.0.7:6000,10.0.0.8") == "ipv4:10.0.0.7:6000,10.0.0.8:50051"
    assert target("localhost:7001,127.0.0.1:7002") == "ipv4:127.0.0.1:7001,127.0.0.1:7002"
    assert target("[::1]:7001,::1") == "ipv6:[::1]:7001,[::1]:50051"
    assert authority("localhost:7001,127.0.0.1:7002") == "localhost:7001"
    for bad, says in (("127.0.0.1:1,[::1]:2", "IPv4 and IPv6"), ("a:b", "port must be a number"),
                      ("h:1,,h:2", "empty address"), ("h:70000", "1-65535"),
                      ("no-such-host.invalid:1,127.0.0.1:2", "cannot resolve")):
        with pytest.raises(AddressError, match=says):
            target(bad)


def test_usage_errors_say_how_to_fix_them(tmp_path, capsys):
    img = str(SAMPLES / "queries" / "q00169.png")
    for argv, message in (
            (["search", "--input-img", img, "--plot", str(tmp_path / "out")], ".png or .jpg"),
            (["search", "--input-img", str(SAMPLES / "queries")], "use `batch` for a folder"),
            (["search", "--input-img", "https://example.org/mark.png"], "a URL"),
            (["search", "--input-img", img, "--region", "1,2,3"], "X,Y,WIDTH,HEIGHT"),
            (["search", "--input-img", img, "--filter", "status"], "COLUMN=VALUE")):
        try:
            main(argv)
            raise AssertionError(f"{argv} was accepted")
        except SystemExit as e:
            assert e.code == 2
        assert message in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(capsys):
    rc = main(["--server", "127.0.0.1:1", "--timeout", "2", "search", "--input-img",
               str(SAMPLES / "queries" / "q00042.jpg")])
    err = capsys.readouterr().err
    assert rc == 1 and "UNAVAILABLE" in err and "--server HOST:PORT" in err
    # With --json the error is a JSON object too.
    rc = main(["--server", "127.0.0.1:1", "--timeout", "2", "search", "--json",
               "--input-img", str(SAMPLES / "queries" / "q00042.jpg")])
    result = json.loads(capsys.readouterr().out)
    assert rc == 1 and result["error"]["code"] == "UNAVAILABLE" and result["exists"] is False


def test_client_imports_neither_torch_nor_faiss():
    code = ("import sys, client.cli, client.plot, client.api; "
            "bad = [m for m in ('torch', 'faiss', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)


def test_search_with_a_region_and_filters(server_address, capsys, tmp_path):
    canvas, box = side_by_side(*(SAMPLES / "registry" / f"{s}.png"
                                 for s in ("86000000", "86000296")))
    path = tmp_path / "two.png"
    canvas.save(path)
    box = ",".join(map(str, box))
    assert main(["--server", server_address, "search", "--input-img", str(path), "--region", box,
                 "--filter", "status=live,dead", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["matched_serial"] == "86000296" and result["filtered"]
    assert result["candidates"] == 300 and result["matches"][0]["metadata"]["status"]
    assert main(["--server", server_address, "search", "--input-img", str(path),
                 "--region", box, "--filter", "status=dead"]) == 0
    out = capsys.readouterr().out
    assert "among the 57 registered marks that pass the filters" in out
    assert '"status": "dead"' in out


def test_batch_takes_a_region_column(server_address, tmp_path):
    a = Image.open(SAMPLES / "registry" / "86000296.png").convert("RGB")
    canvas = Image.new("RGB", (a.width * 2, a.height), (250, 250, 250))
    canvas.paste(a, (a.width, 0))
    canvas.save(tmp_path / "wide.png")
    # a region holds commas, so a CSV quotes it
    (tmp_path / "in.csv").write_text(f'file,region\nwide.png,"{a.width},0,{a.width},{a.height}"\n'
                                     'wide.png,\nwide.png,"0,0,99999,10"\n')
    out = tmp_path / "out.jsonl"
    assert main(["--server", server_address, "batch", str(tmp_path / "in.csv"), "--out",
                 str(out), "--no-progress"]) == 1  # the last one fails, alone
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["matched_serial"] == "86000296" and lines[1]["error"] is None
    assert lines[2]["error"]["code"] == "INVALID_ARGUMENT"
    assert "not inside" in lines[2]["error"]["message"]
