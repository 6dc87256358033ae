"""`python -m bench.ray_build`: a register built here and on a local Ray, side by side.

The same items built three ways in one run: in this process (`indexer build`), and as a
Ray Data pipeline (`indexer build --ray`) with 1 and 2 encoder actors on a local Ray
started once beforehand (its start-up is reported apart). Also the per-mark costs that a
cluster estimate rests on: CPU time to prepare a mark (read, decode, variants, small
copies, thumbnail) and to encode it on one thread, measured on a sample of the marks.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from indexer.build import BuildOptions, build, encode_batch, prepare
from indexer.index import store, vectors
from indexer.network.encoder import load_encoder
from indexer.sources import read_manifest

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def per_mark_costs(items, encoder, opts: BuildOptions, n: int = 40) -> dict:
    """CPU-ms a mark to prepare it, and to encode it on one thread (7 network passes with
    the default variants and small copies)."""
    sample = items[:n]
    t = time.process_time()
    prepared = [prepare(i.path.read_bytes(), encoder.preprocess, opts) for i in sample]
    prep = (time.process_time() - t) / n
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = load_encoder("efficientnet-lite0", "cpu", "auto", 1)
    encode_batch(one, [p.array for p in prepared[:8]], [p.small for p in prepared[:8]])
    t = time.process_time()
    for s in range(0, n, 8):
        chunk = prepared[s:s + 8]
        encode_batch(one, [p.array for p in chunk], [p.small for p in chunk])
    enc = (time.process_time() - t) / n
    torch.set_num_threads(threads)
    mb = np.mean([p.array.nbytes + (p.small.nbytes if p.small is not None else 0)
                  for p in prepared]) / 1e6
    thumb_kb = np.mean([len(p.thumbnail) for p in prepared]) / 1e3
    return {"prepare_cpu_ms": round(prep * 1e3, 1), "encode_cpu_ms_1_thread": round(enc * 1e3, 1),
            "prepared_mb_per_mark": round(float(mb), 2), "thumbnail_kb": round(float(thumb_kb), 1)}


def _vectors(index_dir: Path) -> np.ndarray:
    from indexer.index.catalog import Catalog
    vdir = store.current_version_dir(index_dir)
    catalog = Catalog(vdir / store.CATALOG_FILE, readonly=True)
    ids = catalog.all_ids()
    catalog.close()
    index = vectors.load(vdir / store.INDEX_FILE)
    return np.stack([index.reconstruct(i) for i in ids])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ray_build", description=__doc__)
    p.add_argument("--images", type=Path, default=SAMPLES / "registry")
    p.add_argument("--manifest", type=Path, default=SAMPLES / "registry.csv")
    p.add_argument("--out", type=Path, default=Path("out/bench-ray"))
    p.add_argument("--actors", default="1,2", help="encoder actor counts to measure")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import ray

    from indexer.ray_pipeline import RayOptions
    items = read_manifest(args.manifest, args.images)
    torch.set_num_threads(os.cpu_count() or 1)
    encoder = load_encoder("efficientnet-lite0", "cpu", "auto", os.cpu_count())
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []

    def run(name: str, opts: BuildOptions) -> None:
        r = build(items, args.out / name, encoder, opts)
        rows.append({"build": name, "marks": r.indexed, "seconds": round(r.seconds, 1),
                     "encoding_seconds": round(r.encode_seconds, 1),
                     "images_per_s": round(r.images_per_s, 2),
                     "encoding_images_per_s": round(r.encode_images_per_s, 2)})
        log.info("%s", rows[-1])

    run("local", BuildOptions(progress=False))
    t = time.perf_counter()
    ray.init(include_dashboard=False, configure_logging=False)
    ray_start = time.perf_counter() - t
    try:
        for n in (int(a) for a in args.actors.split(",")):
            run(f"ray-{n}-actors", BuildOptions(progress=False, ray=RayOptions(actors=n)))
    finally:
        ray.shutdown()
    local = _vectors(args.out / "local")
    for row in rows[1:]:
        other = _vectors(args.out / row["build"])
        cos = (local * other).sum(1) / np.linalg.norm(local, axis=1) / np.linalg.norm(other,
                                                                                      axis=1)
        row["min_cosine_to_local"] = round(float(cos.min()), 6)
    costs = per_mark_costs(items, encoder, BuildOptions())
    report = {"cpus": os.cpu_count(), "ray_start_seconds": round(ray_start, 1),
              "builds": rows, "per_mark": costs}
    (args.out / "ray_build.json").write_text(json.dumps(report, indent=2))
    print(f"| build ({len(items)} marks, {os.cpu_count()} CPUs) | s | encoding s | images/s "
          "| images/s encoding | min cosine to local |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['build']} | {r['seconds']} | {r['encoding_seconds']} | "
              f"{r['images_per_s']} | {r['encoding_images_per_s']} | "
              f"{r.get('min_cosine_to_local', '-')} |")
    print(f"Ray start-up (not in the figures above): {ray_start:.1f} s; per mark: {costs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
