"""`python -m indexer` build / add / remove / info on real marks, and what it refuses."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.cli import main
from indexer.index import store, vectors
from indexer.index.reader import OpenIndex, open_index
from indexer.sources import ManifestError, ManifestItems, prefetch, read_manifest
from server.engine import EngineConfig, SearchEngine
from tests.conftest import ROOT, SAMPLES, quiet


def first_marks(tmp_path: Path, n: int, start: int = 0) -> Path:
    src = sorted((SAMPLES / "registry").glob("*.png"))[start:start + n]
    dst = tmp_path / f"marks{start}"
    dst.mkdir()
    for p in src:
        shutil.copy(p, dst / p.name)
    return dst


def run(*argv) -> int:
    return main([*argv])


def test_prefetch_keeps_order_and_only_depth_loads_in_flight():
    pulled = []

    def items():
        for i in range(50):
            pulled.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        got = []
        for item, fut in prefetch(pool, lambda i: i * i, items(), depth=3):
            assert len(pulled) <= item + 3  # never more than `depth` ahead of the consumer
            got.append((item, fut.result()))
    assert got == [(i, i * i) for i in range(50)]


def test_encoding_in_lanes_gives_one_lanes_vectors_in_order(encoder, sample_items):
    """Two lanes encode batches side by side (one torch thread each); the vectors, small
    copies included, come back in the items' order, as one lane encodes them."""
    from indexer.build import encode_items
    items = sample_items[:17]  # 5 batches of 4 marks, the last one short
    one, two = (encode_items(items, encoder, quiet(batch_size=4, lanes=n)) for n in (1, 2))
    assert [m.serial for m in two.marks] == [m.serial for m in one.marks] == [
        i.serial for i in items]
    np.testing.assert_allclose(two.matrix(encoder.descriptor_dim),
                               one.matrix(encoder.descriptor_dim), atol=1e-5)
    for a, b in zip(two.small_copy_matrices(), one.small_copy_matrices(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert torch.get_num_threads() == 2  # the lanes' own counts stay in their threads


def test_build_refuses_zero_lanes(tmp_path, capsys):
    out = tmp_path / "index"
    assert run("build", "--images", str(first_marks(tmp_path, 3)), "--out", str(out),
               "--lanes", "0", "--no-progress") == 2
    assert "lanes must be >= 1" in capsys.readouterr().err and not out.exists()


def test_build_info_and_skip_report(tmp_path, capsys):
    marks = first_marks(tmp_path, 12)
    (marks / "nested").mkdir()
    shutil.copy(sorted((SAMPLES / "registry").glob("*.png"))[20], marks / "nested" / "X1.png")
    (marks / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (marks / "notes.txt").write_text("ignored: not an image extension")
    from PIL import Image
    Image.new("RGBA", (256, 256), (0, 0, 0, 0)).save(marks / "blank.png")  # a render that failed
    assert run("build", "--images", str(marks), "--out", str(tmp_path / "idx"),
               "--no-lowres", "--no-progress") == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "indexed 13 marks" in out and "skipped 2" in out and "broken.png" in out
    assert "WARNING: the estimate rests on 6 edited copies of 3 marks" in captured.err
    opened = open_index(tmp_path / "idx")
    assert opened.index.ntotal == 13 and opened.manifest.dim == 512
    # --no-lowres: no small copies, and the index is served without them.
    assert opened.manifest.lowres == {} and opened.reranker is None
    assert not list(opened.path.glob("lowres*"))
    assert opened.catalog.ids_for(["X1"])  # recursed into nested/
    report = json.loads((opened.path / store.REPORT_FILE).read_text())
    assert sorted(Path(s["file"]).name for s in report["skipped"]) == ["blank.png", "broken.png"]
    assert any("blank" in s["reason"] for s in report["skipped"])
    # Encoding is part of the build, so its rate is the higher one.
    assert 0 < report["encode_seconds"] < report["seconds"]
    assert report["encode_images_per_s"] > report["images_per_s"] > 0
    assert run("info", "--index", str(tmp_path / "idx"), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 13 and info["metric"] == "inner_product"
    # 13 marks calibrate on 3 of them: the estimate says how little it rests on.
    assert any("rests on 6 edited copies of 3 marks" in w
               for w in info["calibration"]["warnings"])
    assert run("info", "--index", str(tmp_path / "idx")) == 0
    assert "WARNING: the estimate rests on 6 edited copies" in capsys.readouterr().out
    assert info["encoder"]["name"] == "efficientnet-lite0-gem3-tuned512"
    assert 0 < info["threshold"] < 1 and info["bytes_on_disk"] > 0


def test_manifest_keeps_names_and_metadata(tmp_path, index_copy):
    opened = open_index(index_copy)
    serial = "86000000"
    ref = opened.catalog.refs(list(opened.catalog.ids_for([serial]).values()))
    assert next(iter(ref.values())).name == "Starling Bank"
    name, thumb = opened.catalog.thumbnails([serial])[serial]
    assert thumb.startswith(b"\x89PNG")


def test_manifest_from_before_the_margin_score_decides_on_the_top_score(index_copy, encoder):
    path = store.current_version_dir(index_copy) / store.MANIFEST
    data = json.loads(path.read_text())
    assert data["decision"] == "family-margin" and 0 < data["family_similarity"] < 1
    image = (SAMPLES / "registry" / "86000000.png").read_bytes()
    # Before families: the plain margin over the next five, whatever they are.
    path.write_text(json.dumps(data | {"decision": "margin", "family_similarity": None}))
    engine = SearchEngine.open(index_copy, encoder)
    try:
        hits = engine.search([engine.prepare(image)], 3)[0]
        answer = engine.decide(hits, engine.threshold, 3)
        assert engine.rule.kind == "margin" and len(hits) == 6
        assert answer.confidence == pytest.approx(
            hits[0].score - np.mean([h.score for h in hits[1:6]]), abs=1e-6)
    finally:
        engine.close()
    # Before margins: the top similarity.
    del data["decision"]
    data["threshold"] = 0.9
    path.write_text(json.dumps(data))
    engine = SearchEngine.open(index_copy, encoder)
    try:
        hits = engine.search([engine.prepare(image)], 3)[0]
        answer = engine.decide(hits, engine.threshold, 3)
        assert engine.rule.kind == "top" and answer.confidence == answer.top_score
        assert answer.exists and len(answer.hits) == 3
    finally:
        engine.close()
    path.write_text(json.dumps(data | {"decision": "family-margin", "family_similarity": None}))
    with pytest.raises(store.IndexFormatError, match="records no family_similarity"):
        open_index(index_copy)
    data["decision"] = "median"
    path.write_text(json.dumps(data))
    with pytest.raises(store.IndexFormatError, match="decision score 'median'"):
        open_index(index_copy)


def test_add_replace_and_remove_keep_ids_stable(tmp_path, capsys):
    idx = tmp_path / "idx"
    assert run("build", "--images", str(first_marks(tmp_path, 10)), "--out", str(idx),
               "--no-progress") == 0
    before = open_index(idx)
    ids_before = before.catalog.ids_for([p.stem for p in (tmp_path / "marks0").iterdir()])
    extra = first_marks(tmp_path, 5, start=10)
    # One serial already indexed, with a different picture: it is replaced, same id.
    existing = next(iter(ids_before))
    shutil.copy(next(extra.iterdir()), extra / f"{existing}.png")
    capsys.readouterr()
    assert run("add", "--images", str(extra), "--index", str(idx), "--no-progress") == 0
    out = capsys.readouterr().out
    assert "1 serial(s) were already indexed and have been replaced" in out
    after = open_index(idx)
    assert after.index.ntotal == 15 and after.manifest.version == "v000002"
    assert after.catalog.ids_for(list(ids_before)) == ids_before
    assert set(vectors.stored_ids(after.index)) == set(after.catalog.all_ids())
    assert all(set(vectors.stored_ids(s)) == set(after.catalog.all_ids())
               for s in after.reranker.indexes)

    gone = sorted(ids_before)[:2]
    assert run("remove", "--index", str(idx), "--serials", *gone, "nope") == 0
    out = capsys.readouterr().out
    assert "removed 2 mark(s)" in out and "not in the index: nope" in out
    final = open_index(idx)
    assert final.index.ntotal == 13 and not final.catalog.ids_for(gone)
    assert set(vectors.stored_ids(final.index)) == set(final.catalog.all_ids())
    assert all(set(vectors.stored_ids(s)) == set(final.catalog.all_ids())
               for s in final.reranker.indexes)
    assert run("verify", "--index", str(idx)) == 0
    # Older versions beyond the last two are pruned.
    assert sorted(p.name for p in (idx / store.VERSIONS).iterdir()) == ["v000002", "v000003"]


def test_add_without_a_manifest_keeps_a_replaced_marks_name_and_metadata(tmp_path, capsys):
    marks = first_marks(tmp_path, 4)
    files = sorted(p.name for p in marks.iterdir())
    manifest = tmp_path / "m.csv"
    manifest.write_text("serial,file,name,nice_classes\n" + "".join(
        f"S{i},{f},Mark {i},9;42\n" for i, f in enumerate(files)))
    idx = tmp_path / "idx"
    assert run("build", "--images", str(marks), "--manifest", str(manifest), "--out", str(idx),
               "--no-progress") == 0
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(marks / files[0], again / "S0.png")  # the serial is the stem: no manifest
    capsys.readouterr()
    assert run("add", "--images", str(again), "--index", str(idx), "--no-progress") == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("already indexed and have been replaced") == 1
    catalog = open_index(idx).catalog
    ref = next(iter(catalog.refs(list(catalog.ids_for(["S0"]).values())).values()))
    assert ref.name == "Mark 0"
    row = catalog._db.execute("SELECT metadata FROM marks WHERE serial='S0'").fetchone()
    assert json.loads(row[0]) == {"name": "Mark 0", "nice_classes": "9;42"}


def test_build_refuses_a_folder_that_holds_other_files(tmp_path, capsys):
    marks = first_marks(tmp_path, 3)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("not an index")
    assert run("build", "--images", str(marks), "--out", str(out), "--no-progress") == 2
    assert "holds files and is not an index" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_manifest_errors_write_nothing(tmp_path, capsys):
    marks = first_marks(tmp_path, 3)
    files = sorted(p.name for p in marks.iterdir())
    cases = {
        "dup.csv": (f"serial,file\nA,{files[0]}\nA,{files[1]}\n", "duplicate serial 'A'"),
        "escape.csv": ("serial,file\nA,../../etc/passwd\n", "points outside"),
        "nocol.csv": ("id,path\nA,x.png\n", "missing column(s) serial, file"),
        "case.csv": (f"Serial,File\nA,{files[0]}\n", "found 'Serial', 'File': column names "
                                                      "are lower case"),
        "semicolons.csv": (f"serial;file\nA;{files[0]}\n", "must be comma-separated"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        rc = run("build", "--images", str(marks), "--manifest", str(tmp_path / name),
                 "--out", str(tmp_path / "idx"), "--no-progress")
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:") and message in err, (name, err)
        assert not (tmp_path / "idx" / store.CURRENT).exists()


def test_a_manifest_read_lazily_gives_the_items_read_manifest_gives(tmp_path):
    """ManifestItems (what `indexer build` reads) against the list: every row, slices as a
    build takes them (shards), rows whose quoted cells hold line breaks, a BOM, blank lines;
    and a bad row is refused when the manifest is opened, with its line."""
    rows = "".join(f'S{i},m{i}.png,Mark {i},"{"two" + chr(10) + "lines" if i % 3 else "a, b"}"\r\n'
                   for i in range(12))
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffserial,file,name,note\r\n".encode() + rows.encode() + b"\r\n")
    lazy, whole = ManifestItems(path, tmp_path), read_manifest(path, tmp_path)
    assert len(lazy) == 12 and list(lazy) == whole
    assert lazy[4:9] == whole[4:9] and lazy[-1] == whole[-1] and lazy[::5] == whole[::5]
    assert lazy[7].metadata == {"name": "Mark 7", "note": "two\nlines"}
    assert lazy[12:20] == [] and pytest.raises(IndexError, lambda: lazy[12])
    path.write_text("serial,file\nA,a.png\n,b.png\n")
    with pytest.raises(ManifestError, match=r"m\.csv:3: empty serial or file"):
        ManifestItems(path, tmp_path)


def test_manifest_paths_are_those_path_resolve_gives_and_links_out_are_refused(tmp_path):
    """ManifestItems resolves each folder once (sources.ManifestItems._resolve): every path
    must still be what Path.resolve gives, links followed, and a link out of the images'
    folder refused wherever it sits in the path."""
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    (root / "sub" / "deep").mkdir(parents=True)
    outside.mkdir()
    for p in (root / "a.png", root / "sub" / "b.png", root / "sub" / "deep" / "c.png",
              outside / "d.png"):
        p.write_bytes(b"x")
    (root / "alias").symlink_to(root / "sub")  # a folder link that stays inside
    (root / "sub" / "link.png").symlink_to(root / "a.png")  # a file link that stays inside
    (root / "out").symlink_to(outside)  # a folder link out
    (root / "sub" / "out.png").symlink_to(outside / "d.png")  # a file link out
    inside = ["a.png", "sub/b.png", "sub/deep/c.png", "alias/deep/c.png", "sub/link.png",
              "sub/../a.png", "alias/../a.png", "./sub/./b.png", "missing/none.png",
              "sub/deep/../b.png", str(root / "a.png")]
    path = tmp_path / "m.csv"
    path.write_text("serial,file\n" + "".join(f"S{i},{f}\n" for i, f in enumerate(inside)))
    items = ManifestItems(path, root)
    assert [i.file for i in items] == [str((root / f).resolve()) for f in inside]
    for escape in ("out/d.png", "sub/out.png", "alias/out.png", "../elsewhere/d.png",
                   "sub/../../elsewhere/d.png", str(outside / "d.png"), "alias/../out/d.png"):
        path.write_text(f"serial,file\nA,a.png\nB,{escape}\n")
        with pytest.raises(ManifestError, match=r"m\.csv:3: .* points outside"):
            ManifestItems(path, root)


def test_manifest_missing_file_is_skipped_and_binary_csv_refused(tmp_path, capsys):
    marks = first_marks(tmp_path, 3)
    files = sorted(p.name for p in marks.iterdir())
    (tmp_path / "m.csv").write_text("serial,file,name\n" + "".join(
        f"S{i},{f},Mark {i}\n" for i, f in enumerate(files)) + "GONE,missing.png,Lost\n")
    assert run("build", "--images", str(marks), "--manifest", str(tmp_path / "m.csv"),
               "--out", str(tmp_path / "idx"), "--no-progress") == 0
    out = capsys.readouterr().out
    assert "indexed 3 marks" in out and "missing.png" in out
    (tmp_path / "bin.csv").write_bytes(b"serial,file\n\xff\xfe\x00garbage\n")
    assert run("build", "--images", str(marks), "--manifest", str(tmp_path / "bin.csv"),
               "--out", str(tmp_path / "idx2"), "--no-progress") == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "idx2" / store.CURRENT).exists()


def test_build_of_only_broken_files_fails_clearly(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.png").write_bytes(b"nope")
    assert run("build", "--images", str(d), "--out", str(tmp_path / "idx"),
               "--no-progress") == 2
    assert "none of the 1 images could be read" in capsys.readouterr().err


def test_crash_while_writing_keeps_the_old_version(tmp_path, index_copy, monkeypatch):
    real_save = vectors.save

    def crash_after_partial_write(index, path):
        real_save(index, path)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # torn write...
        raise KeyboardInterrupt("power cut")                   # ...then the crash

    monkeypatch.setattr(vectors, "save", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        run("remove", "--index", str(index_copy), "--serials", "86000000")
    monkeypatch.undo()
    opened = open_index(index_copy)
    assert opened.manifest.version == "v000001" and opened.index.ntotal == 300
    assert opened.catalog.ids_for(["86000000"])


def test_sigkill_during_build_keeps_the_old_index(tmp_path, index_copy):
    """A real process killed mid-build: the previous version stays live and complete."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer", "build", "--images", str(SAMPLES / "registry"),
         "--out", str(index_copy), "--batch-size", "8"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.time() + 60
    while "encoding:" not in seen and time.time() < deadline:  # wait until it is working
        seen += proc.stderr.read(1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    opened = open_index(index_copy)
    assert opened.manifest.version == "v000001" and opened.index.ntotal == 300
    # The next writer starts cleanly and removes anything the killed one left.
    assert run("remove", "--index", str(index_copy), "--serials", "86000000") == 0
    leftovers = [p for p in (index_copy / store.VERSIONS).iterdir() if p.name.startswith(".")]
    assert leftovers == [] and open_index(index_copy).index.ntotal == 299


class Tiny(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def test_server_refuses_index_of_another_encoder(tmp_path, encoder, monkeypatch):
    ts = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(ts))
    idx = tmp_path / "idx"
    assert run("build", "--images", str(first_marks(tmp_path, 4)), "--out", str(idx),
               "--encoder", str(ts), "--no-progress") == 0
    assert open_index(idx).manifest.dim == 48  # a small encoder is used as is, no PCA
    closed = []
    monkeypatch.setattr(OpenIndex, "close", lambda self: closed.append(self.path))
    with pytest.raises(store.IndexFormatError, match="built with encoder torchscript:tiny.pt"):
        SearchEngine.open(idx, encoder)
    assert len(closed) == 1  # the refused index is let go of, not left open
    monkeypatch.undo()
    # And adding with the wrong encoder is refused too, leaving the index as it was.
    assert run("add", "--images", str(first_marks(tmp_path, 2, start=4)), "--index",
               str(idx), "--no-progress") == 2
    assert open_index(idx).index.ntotal == 4


def test_not_an_index_says_how_to_build_one(tmp_path, capsys):
    assert run("info", "--index", str(tmp_path)) == 2
    assert "python -m indexer build" in capsys.readouterr().err


def test_verify_passes_a_good_index_and_names_each_problem(index_copy, capsys):
    assert run("verify", "--index", str(index_copy)) == 0
    assert "verified" in capsys.readouterr().out
    vdir = open_index(index_copy).path
    # A truncated FAISS file: verify says which file, and the index is refused for serving.
    data = (vdir / store.INDEX_FILE).read_bytes()
    (vdir / store.INDEX_FILE).write_bytes(data[: len(data) // 2])
    assert run("verify", "--index", str(index_copy)) == 1
    assert "index.faiss does not match its recorded SHA-256" in capsys.readouterr().out
    with pytest.raises(store.IndexFormatError, match="index.faiss does not match"):
        open_index(index_copy)
    (vdir / store.INDEX_FILE).write_bytes(data)
    # A catalog row without a vector (checksums re-recorded, as a buggy writer would).
    from indexer.index.catalog import Catalog, Mark
    cat = Catalog(vdir / store.CATALOG_FILE)
    cat.upsert([Mark("ORPHAN")])
    cat.close()
    manifest = store.Manifest.read(vdir / store.MANIFEST)
    manifest.checksums[store.CATALOG_FILE] = store.sha256_file(vdir / store.CATALOG_FILE)
    (vdir / store.MANIFEST).write_text(manifest.to_json())
    assert run("verify", "--index", str(index_copy)) == 1
    out = capsys.readouterr().out
    assert "catalog holds 301 marks, manifest says 300" in out
    assert "1 catalog rows have no vector" in out


def test_ivf_pq_preset_serves_memory_mapped_and_refuses_to_replace(tmp_path, capsys, encoder):
    # The ivf-pq preset's structure with 4-bit codes: 8-bit ones train 256 centroids per
    # sub-vector, more than 80 marks (and the 15 s to encode 300 more) can give.
    idx, marks = tmp_path / "idx", first_marks(tmp_path, 80)
    factory = vectors.resolve("ivf-pq", 80).factory.replace("PQ64", "PQ16x4")
    assert run("build", "--images", str(marks), "--out", str(idx), "--index-factory", factory,
               "--dim", "64", "--calibration-marks", "20", "--no-progress") == 0
    capsys.readouterr()
    assert run("info", "--index", str(idx), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_type"].endswith(",RFlat") and "k_factor_rf" in info["search_params"]
    # In RAM when mapped: the codes, not the 80 x 64 floats re-ranked from the page cache.
    assert info["index_memory_bytes_mmap"] == info["index_memory_bytes"] - 80 * 64 * 4
    engine = SearchEngine.open(idx, encoder, EngineConfig(mmap=True))
    try:
        for path in sorted(marks.iterdir())[:10]:
            assert engine.search([engine.prepare(path.read_bytes())], 1)[0][0].serial == path.stem
    finally:
        engine.close()
    assert run("add", "--images", str(marks), "--index", str(idx), "--no-progress") == 2
    assert "cannot replace marks" in capsys.readouterr().err


def test_ivf_preset_build_tunes_nprobe_and_survives_remove(tmp_path, capsys, encoder):
    idx = tmp_path / "idx"
    assert run("build", "--images", str(first_marks(tmp_path, 80)), "--out", str(idx),
               "--index-factory", "ivf-sq8", "--calibration-marks", "20", "--no-progress") == 0
    manifest = store.read_manifest(idx)
    assert manifest.index_type == "IVF2,SQ8" and manifest.index_preset == "ivf-sq8"
    assert "nprobe" in manifest.search_params and manifest.sampled_recall >= 0.95
    serials = sorted(p.stem for p in (tmp_path / "marks0").iterdir())
    assert run("remove", "--index", str(idx), "--serials", *serials[:10]) == 0
    capsys.readouterr()
    assert run("info", "--index", str(idx), "--measure-recall", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 70 and info["measured_recall"] >= 0.95
    assert info["index_memory_bytes"] > 70 * 512  # one byte per dimension and mark at least
    assert "index_memory_bytes_mmap" not in info  # an IVF's lists are all read in the end
    engine = SearchEngine.open(idx, encoder)
    try:  # the marks left are still found under their own serials after the remove
        for serial in serials[10:20]:
            image = (tmp_path / "marks0" / f"{serial}.png").read_bytes()
            assert engine.search([engine.prepare(image)], 1)[0][0].serial == serial
    finally:
        engine.close()
