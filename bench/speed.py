"""`make bench`: the service against the limit of its parts and against peers, one run.

    python -m bench.speed --out out/bench [--sizes 10000,100000,1000000] [--seconds 10]

1. encoder limit: model-only images/s at batch 1, 4, 8, 16, 32 (bench.load), one batch at a
   time with all threads, and in the server's encoder lanes side by side (server/batcher.py),
   through each runtime (OpenVINO and PyTorch, indexer.network.encoder.load_encoder); the
   best of them is the limit at that batch size, and the faster runtime is the reference
   every service figure is divided by;
2. indexing: `python -m indexer build` of the sample registry vs the model at its batch,
   through the default runtime and through PyTorch, one after the other;
3. the real server: one client's Search latency (vs one image through the model), and
   of 12 Mpx JPEG photos of sample marks (bench.photos; decoding included, no ratio),
   throughput with 1/4/16/64 clients and one SearchStream (vs the model at that batch),
   each model figure measured right beside the server's (bench.load.ModelReference);
4. vector search at each N: presets, naive numpy/torch, Milvus Lite (bench.vector_search);
5. server start-up with an index of the largest N, read and memory-mapped (bench.startup).
Writes report.md, bench.json, bench.png and server.log in --out; prints the report.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench import load, startup, vector_search
from bench.photos import photo_jpeg, scene_jpegs
from bench.procs import run_build, start_server, stop_server
from indexer.network.encoder import GPU_BATCH, default_lanes, lane_threads

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
MODEL_BATCHES = (1, 4, 8, 16, 32)
CLIENTS = (1, 4, 16, 64)
PHOTO_MARK_PX = 1200  # marks pasted into phone-sized photos (bench.photos)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} x {cpu}, {gpu}, Python {platform.python_version()}"


def encoder_limit(threads: int) -> tuple[dict[str, dict], load.ModelReference]:
    """Model-only images/s at each batch size through each runtime the encoder can use:
    {runtime: {"one_lane": {batch: images/s}, "lanes": {...}}}, one batch at a time with
    all `threads` and in the server's encoder lanes side by side (empty with one lane);
    and the reference, on the faster runtime, that measures both ways again beside each
    server figure."""
    import torch

    from indexer.network.encoder import load_encoder
    from indexer.network.preprocess import prepare
    torch.set_num_threads(threads)
    encoders = {"torch": load_encoder(runtime="torch")}
    default = load_encoder(threads=threads)  # what the indexer and the server load
    if default.runtime != "torch":
        encoders[default.runtime] = default
    arrays = [prepare(p, default.preprocess)
              for p in load.read_payloads([SAMPLES / "registry"], limit=64)]
    lanes = default_lanes(default.device.type, threads)
    batches = MODEL_BATCHES + ((GPU_BATCH,) if default.device.type == "cuda" else ())
    runtimes: dict[str, dict] = {name: {"one_lane": {}, "lanes": {}} for name in encoders}
    for b in batches:  # the runtimes side by side at each batch size: the machine drifts
        for name, encoder in encoders.items():
            runtimes[name]["one_lane"][b] = load.model_images_per_s(encoder, arrays, b)
            if lanes > 1:
                runtimes[name]["lanes"][b] = load.lanes_images_per_s(encoder, arrays, b,
                                                                     lanes, threads)
    for name, r in runtimes.items():
        log.info("model-only images/s through %s: %s; in %d lanes: %s", name,
                 {b: round(v, 1) for b, v in r["one_lane"].items()}, lanes,
                 {b: round(v, 1) for b, v in r["lanes"].items()})
    # The faster at the servers' and the build's default batch.
    faster = max(runtimes, key=lambda name: best_of(runtimes[name])[default.default_batch])
    return runtimes, load.ModelReference(encoders[faster], arrays, lanes, threads)


def best_of(runtime: dict) -> dict:
    """{batch: images/s}, the better way of running one runtime at each batch size."""
    return {b: max(v, runtime["lanes"].get(b, 0.0)) for b, v in runtime["one_lane"].items()}


def beside(model: load.ModelReference, batch: int, measure,
           in_flight: int | None = None) -> dict:
    """`measure()`'s figures plus the model-only images/s at `batch` with `in_flight`
    images at hand (load.ModelReference.figures), each way of running it the mean of one
    run just before and one just after; `model_images_per_s` is the better way's."""
    before = model.figures(batch, in_flight)
    out = measure()
    after = model.figures(batch, in_flight)
    for way in before:
        out[f"model_{way}_images_per_s"] = (before[way] + after[way]) / 2
    out["model_images_per_s"] = max(out[f"model_{way}_images_per_s"] for way in before)
    return out


def indexing(work: Path, model: load.ModelReference, batch: int,
             runtime: str = "auto") -> dict:
    """`indexer build --runtime RUNTIME` of the sample registry; `batch`: its default
    --batch-size."""
    index = work / f"index-{runtime}"

    def build() -> dict:
        wall, info, report = run_build(SAMPLES / "registry", SAMPLES / "registry.csv", index,
                                       "--runtime", runtime, quiet=True)
        # The build also fits the PCA and calibrates (encodes 2 edited copies of its
        # held-out marks); images/s counts the registry images only: a lower bound. Each
        # image goes through the encoder once, once per registry variant and once per
        # small copy (indexer.index.lowres).
        return {"index": str(index), "images": report["indexed"], "wall_s": wall,
                "images_per_s": report["images_per_s"],
                "encode_images_per_s": report["encode_images_per_s"],
                "passes_per_image": 1 + len(info.get("registry_variants") or [])
                + len((info.get("lowres") or {}).get("copy_px", []))}
    return beside(model, batch, build)


def service(index: Path, seconds: float, model: load.ModelReference, batch: int,
            log_path: Path) -> dict:
    """The server's figures, each with the model-only figure measured beside it; `batch`:
    the server's default --max-batch and --stream-batch; its log goes to `log_path`."""
    payloads = load.read_payloads([SAMPLES / "registry", SAMPLES / "queries"])
    photos = [photo_jpeg(Image.open(io.BytesIO(p)), PHOTO_MARK_PX) for p in payloads[:10]]
    scenes = scene_jpegs([Image.open(io.BytesIO(p)) for p in payloads[:20]])
    proc, address, startup_s = start_server(index, log_path=log_path)
    try:
        out = {"startup_s": startup_s,
               "latency": load.latency_ms(address, payloads, model=model),
               "photo_latency": load.latency_ms(address, photos, calls=30),
               "scene_latency": load.latency_ms(address, scenes, calls=30), "clients": []}
        for c in CLIENTS:
            # c clients keep at most c images in flight: 1 client cannot fill 2 lanes.
            out["clients"].append(beside(model, min(c, batch), lambda: load.throughput(
                address, payloads, c, seconds), in_flight=c))
            log.info("%d clients: %s", c, out["clients"][-1])
        out["stream"] = beside(model, batch, lambda: load.stream_rate(address, payloads, 400))
    finally:
        stop_server(proc)
    return out


def ratios(limit: dict, build: dict, svc: dict, torch_build: dict | None = None) -> dict:
    """Each service figure over the model-only figure at the batch size it ran at,
    measured beside it (`_vs_model`), and over the best figure of the model-only table
    measured at the start (`_vs_best`)."""
    best = max(limit.values())  # the better way at each batch size, measured at the start
    lat = svc["latency"]
    passes = build.get("passes_per_image", 1)  # encoder passes, vs the model's images/s
    r = {"lone_request_latency_vs_model": lat["p50_ms"] / lat["model_p50_ms"],
         "indexing_vs_model": build["images_per_s"] * passes / build["model_images_per_s"],
         "indexing_vs_best": build["images_per_s"] * passes / best,
         "indexing_encode_vs_model":
             build["encode_images_per_s"] * passes / build["model_images_per_s"],
         "stream_vs_model": svc["stream"]["items_per_s"] / svc["stream"]["model_images_per_s"],
         "stream_vs_best": svc["stream"]["items_per_s"] / best}
    if torch_build:
        r["indexing_vs_torch_build"] = build["images_per_s"] / torch_build["images_per_s"]
    for row in svc["clients"]:
        c = row["clients"]
        r[f"clients_{c}_vs_model"] = row["requests_per_s"] / row["model_images_per_s"]
        r[f"clients_{c}_vs_best"] = row["requests_per_s"] / best
    return r


def markdown(res: dict) -> str:
    runtimes, svc, rat = res["runtimes"], res["service"], res["ratios"]
    threads, ref = res["threads"], res["reference_runtime"]
    head = ["encoder, model only (no decoding), images/s"]
    for name in runtimes:
        head += [f"{name}: one batch at a time, {threads} threads",
                 f"{name}: {res['lanes']} lanes side by side, "
                 f"{lane_threads(threads, res['lanes'])} thread(s) each"]
    lines = [f"Machine: {res['machine']}", "",
             f"The service's ratios below are to the {ref} runtime, the faster one here.", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for b in next(iter(runtimes.values()))["one_lane"]:
        cells = [f"batch {b}"]
        for r in runtimes.values():
            cells += [f"{r['one_lane'][b]:.1f}",
                      f"{r['lanes'][b]:.1f}" if b in r["lanes"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["one image, ms"]
    for r in runtimes.values():
        cells += [f"{1e3 / r['one_lane'][1]:.1f}", ""]
    lines += ["| " + " | ".join(cells) + " |", "",
              "| service | measured | / model at its batch (the better way), measured "
              "beside it | / best model figure above |",
              "|---|---|---|---|",
              f"| one client Search p50 / p99, ms | {svc['latency']['p50_ms']:.1f} / "
              f"{svc['latency']['p99_ms']:.1f} | {rat['lone_request_latency_vs_model']:.2f}x "
              f"one image's model time ({svc['latency']['model_p50_ms']:.1f} ms) | |",
              f"| one client Search of a 12 Mpx JPEG photo (mark {PHOTO_MARK_PX} px wide) "
              f"p50 / p99, ms | {svc['photo_latency']['p50_ms']:.1f} / "
              f"{svc['photo_latency']['p99_ms']:.1f} | | |",
              f"| one client Search of an 800x600 photographed scene, one or two marks found "
              f"and answered each (bench.photos.scene_jpegs) p50 / p99, ms | "
              f"{svc['scene_latency']['p50_ms']:.1f} / {svc['scene_latency']['p99_ms']:.1f} | "
              f"{svc['scene_latency']['p50_ms'] / svc['latency']['p50_ms']:.2f}x a clean "
              "mark's | |"]
    for row in svc["clients"]:
        c = row["clients"]
        lines.append(f"| {c} client{'s' * (c > 1)}, requests/s | {row['requests_per_s']:.1f} "
                     f"({row['errors']} errors) | {rat[f'clients_{c}_vs_model']:.2f} | "
                     f"{rat[f'clients_{c}_vs_best']:.2f} |")
    lines += [f"| one SearchStream, items/s | {svc['stream']['items_per_s']:.1f} | "
              f"{rat['stream_vs_model']:.2f} | {rat['stream_vs_best']:.2f} |",
              f"| indexer build, images/s ({res['indexing']['images']} marks, "
              f"{res['indexing'].get('passes_per_image', 1)} encoder passes each: the "
              "ratios count passes) | "
              f"{res['indexing']['images_per_s']:.1f} | {rat['indexing_vs_model']:.2f} | "
              f"{rat['indexing_vs_best']:.2f} |",
              f"| of which encoding the images (decode + model), images/s | "
              f"{res['indexing']['encode_images_per_s']:.1f} | "
              f"{rat['indexing_encode_vs_model']:.2f} | |",
              *([f"| indexer build through PyTorch (--runtime torch), images/s, right after "
                 f"| {res['indexing_torch']['images_per_s']:.1f} | the default build is "
                 f"{rat['indexing_vs_torch_build']:.2f}x as fast | |"]
                if res.get("indexing_torch") else []),
              f"| server start-up, sample index, s | {svc['startup_s']:.2f} | | |", "",
              "Vector search (synthetic vectors, bench/synthetic.py; recall@10 vs exact "
              "search over the original floats):", "",
              "| N | method | build s | memory MB | QPS b1 | QPS b64 | recall@10 | params |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res["vector_search"]:
        if r["note"]:
            lines.append(f"| {r['n']:,} | {r['method']} | {r['note']} | | | | | |")
            continue
        lines.append(f"| {r['n']:,} | {r['method']} | {r['build_s']:.1f} | {r['memory_mb']:.0f} "
                     f"| {r['qps_b1']:.1f} | {r['qps_b64']:.1f} | {r['recall10']:.3f} | "
                     f"{json.dumps(r['params']) if r['params'] else ''} |")
    lines += ["", "| server start-up with the largest index | s | RSS MB |", "|---|---|---|"]
    for s in res["startup"]["runs"]:
        lines.append(f"| {res['startup']['n']:,} vectors, {res['startup']['preset']}, "
                     f"{'mmap' if s['mmap'] else 'read'} | {s['startup_s']:.2f} | "
                     f"{s['rss_mb']:.0f} |")
    lines.append(f"\nmake bench ran in {res['wall_s'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    clients = [r["clients"] for r in res["service"]["clients"]]
    a.plot(clients, [r["requests_per_s"] for r in res["service"]["clients"]], "o-",
           label="server, Search requests/s")
    a.plot(clients, [r["model_images_per_s"] for r in res["service"]["clients"]], "s--",
           label="model only at that batch, measured beside it")
    for batch, v in res["model_images_per_s"].items():  # the better way at each batch
        a.axhline(v, ls=":", color="gray")
        a.text(clients[-1], v, f" model b{batch}", va="center", fontsize=8)
    a.set(xscale="log", xlabel="concurrent clients", ylabel="images/s",
          title="Service vs encoder limit", ylim=(0, None))
    a.legend(loc="lower center")
    n = max(r["n"] for r in res["vector_search"])
    for r in res["vector_search"]:
        if r["n"] == n and not r["note"]:
            b.scatter(r["recall10"], r["qps_b1"], label=r["method"])
    b.set(yscale="log", xlabel="recall@10", ylabel="queries/s, batch 1",
          title=f"Vector search at N = {n:,}")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--sizes", default="10000,100000,1000000",
                   help="vector counts, comma-separated (default: %(default)s); 10 M takes "
                        "~25 GB here: bench.streamed (make bench-10m) builds it in chunks")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="measuring time per client count (default: %(default)s)")
    p.add_argument("--hnsw-max-n", type=int, default=100_000,
                   help="largest N to build HNSW at (default: %(default)s; 1000000 adds the "
                        "1 M build, ~6 min on 2 cores)")
    p.add_argument("--milvus-max-n", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict = {"machine": machine(), "threads": args.threads}
    runtimes, model = encoder_limit(args.threads)
    encoder = model.encoder
    best = {name: best_of(r) for name, r in runtimes.items()}
    res.update(lanes=model.lanes, runtimes=runtimes, reference_runtime=encoder.runtime,
               model_images_per_s={b: max(r[b] for r in best.values())
                                   for b in best[encoder.runtime]},
               model_single_ms=1e3 / runtimes[encoder.runtime]["one_lane"][1])
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        res["indexing"] = indexing(Path(tmp), model, encoder.default_batch)
        log.info("indexing: %s", res["indexing"])
        if encoder.runtime != "torch":
            res["indexing_torch"] = indexing(Path(tmp), model, encoder.default_batch, "torch")
            log.info("indexing through PyTorch: %s", res["indexing_torch"])
        res["service"] = service(Path(res["indexing"]["index"]), args.seconds, model,
                                 encoder.default_batch, args.out / "server.log")
        log.info("service: %s", res["service"])
    res["ratios"] = ratios(res["model_images_per_s"], res["indexing"], res["service"],
                           res.get("indexing_torch"))
    sizes = tuple(int(s) for s in args.sizes.split(","))
    config = vector_search.ScaleConfig(sizes=sizes, hnsw_max_n=args.hnsw_max_n,
                                       milvus_max_n=args.milvus_max_n)
    largest: dict = {}
    rows = vector_search.run(config, on_row=lambda r: log.info("%s", r),
                             on_vectors=lambda n, db: largest.update(n=n, db=db))
    res["vector_search"] = [r.to_dict() for r in rows]
    res["startup"] = largest_startup(largest.pop("n"), largest.pop("db"), encoder)
    res["wall_s"] = time.perf_counter() - t0
    (args.out / "bench.json").write_text(json.dumps(res, indent=2))
    report = markdown(res)
    (args.out / "report.md").write_text(report)
    plot(res, args.out / "bench.png")
    print(report)
    return 0


def largest_startup(n: int, db, encoder) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        written = startup.write_synthetic_index(Path(tmp) / "index", encoder, db)
        runs = [startup.time_startup(Path(tmp) / "index", mmap) for mmap in (False, True)]
    return {"n": n, "preset": "flat", **written, "runs": runs}


if __name__ == "__main__":
    sys.exit(main())
