"""`python -m bench.build_scale` (`make bench-build`): a register of millions built here.

A synthetic register of small image files (made once, on disk: made-up shapes, no
brands) is built by `indexer build` with the stand-in encoder (`--encoder pixels`), so
that the pipeline around the network is what is measured: reading, preparing, the
shards on disk, the catalog, the PCA, FAISS (`ivf-sq8`), the calibration. For each size:
the build's peak RSS (its VmHWM, read until it exits) against the rule
1.5 GB + the index's own codes (512 B a mark for ivf-sq8), and its marks/s. At the
smallest size the build is also SIGKILLed at random moments and run again each time; its
final index is compared with the uninterrupted one's (catalog rows, stored vectors,
projection, thresholds) and the shards encoded again after each kill are counted.

The variants and small copies of the marks are left out (`--registry-variants none
--no-lowres --no-read-words`): they cost CPU a mark, not memory held, and without them the
stand-in build is ~10x faster. `--ray` builds through a local Ray too (`--ray only`: alone).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from bench.procs import high_water_mark
from indexer.index import store
from indexer.network.encoder import PIXELS_ENCODER, load_encoder
from indexer.shards import SHARD_FILES, progress

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BASE_RSS = 1.5e9  # the rule's allowance for everything but the index's codes
PER_FOLDER = 10_000
SIDE = 64


def make_register(data: Path, n: int, seed: int = 0) -> Path:
    """The first n marks of the synthetic register under `data` (made where missing) and
    a manifest of them; returns the manifest's path."""
    made = 0
    for i in tqdm(range(n), desc="register", unit="mark", mininterval=5):
        path = data / f"{i // PER_FOLDER:04d}" / f"m{i:08d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # .tmp then os.replace: a run stopped mid-write leaves no cut-off file that the
        # next run would take as made (and the build would skip as unreadable).
        _mark(np.random.default_rng([seed, i])).save(path.with_suffix(".tmp"), format="PNG")
        os.replace(path.with_suffix(".tmp"), path)
        made += 1
    manifest = data / f"register-{n}.csv"
    if made or not manifest.exists():
        with open(manifest.with_suffix(".tmp"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["serial", "file"])
            for i in range(n):
                w.writerow([f"m{i:08d}", f"{i // PER_FOLDER:04d}/m{i:08d}.png"])
        os.replace(manifest.with_suffix(".tmp"), manifest)
    return manifest


def _mark(rng: np.random.Generator) -> Image.Image:
    """A made-up mark: a plain ground and two to four shapes."""
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    im = Image.new("RGB", (SIDE, SIDE), colour())
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = (int(v) for v in rng.integers(0, SIDE - 8, 2))
        x1, y1 = x0 + int(rng.integers(6, SIDE - x0)), y0 + int(rng.integers(6, SIDE - y0))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour())
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour())
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour())
    return im


def build_args(data: Path, manifest: Path, out: Path, ray: bool, shard_size: int) -> list[str]:
    args = ["build", "--images", str(data), "--manifest", str(manifest), "--out", str(out),
            "--encoder", "pixels", "--index-factory", "ivf-sq8", "--registry-variants", "none",
            "--no-lowres", "--no-read-words", "--no-progress", "--shard-size", str(shard_size)]
    return args + (["--ray"] if ray else [])


def run_build(args: list[str], log_file: Path, kill_after: float | None = None,
              shard_size: int | None = None) -> dict:
    """One `indexer build` process: its wall time, peak RSS and exit status; SIGKILLed
    after `kill_after` seconds where given. With `shard_size`, also where its time went
    (`phases`): when each shard appeared in OUT/.building, polled each second."""
    building = Path(args[args.index("--out") + 1]) / store.BUILDING
    # Shards an earlier run left (--resume) are not this run's work.
    seen: dict[str, float | None] = {f.name: None for f in building.glob(SHARD_FILES)}
    polled = 0.0
    with open(log_file, "a") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "indexer", *args], cwd=ROOT,
                                stdout=logf, stderr=subprocess.STDOUT)
        deadline = None if kill_after is None else t0 + kill_after
        peak = 0
        while True:
            # The build's own high-water mark (VmHWM, which starts anew at exec), read until
            # it exits: os.wait4's ru_maxrss would count the memory of this process too,
            # which the child had until it exec'd (a test runner holding models: 3.4 GB).
            peak = max(peak, high_water_mark(proc.pid))
            if shard_size and time.perf_counter() - polled > 1:
                polled = time.perf_counter()
                for f in building.glob(SHARD_FILES):
                    seen.setdefault(f.name, polled - t0)
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.send_signal(signal.SIGKILL)
                deadline = None
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    r = {"seconds": time.perf_counter() - t0, "peak_rss": peak, "returncode": proc.returncode}
    made = sorted(t for t in seen.values() if t is not None)
    if shard_size and len(made) >= 8:
        r["phases"] = phases(made, shard_size, r["seconds"])
    return r


def phases(shard_times: list[float], shard_size: int, seconds: float) -> dict:
    """Where a build's time went, from the moments its shards appeared: before the first
    (reading the manifest, the build's key, the first shard), encoding at the start and at
    the end (marks/s over the first and the last quarter of the shards: flat, or slower as
    the register grows?), and after the last (catalog, PCA, FAISS, calibration)."""
    t, q = shard_times, len(shard_times) // 4
    return {"first_shard_s": round(t[0], 1),
            "encode_marks_per_s_first_quarter": round(q * shard_size / (t[q] - t[0]), 1),
            "encode_marks_per_s_last_quarter": round(q * shard_size / (t[-1] - t[-1 - q]), 1),
            "after_last_shard_s": round(seconds - t[-1], 1)}


def shards_on_disk(out: Path) -> int:
    """The shards an unfinished build in `out` has on disk (0 where there is none)."""
    unfinished = progress(out)
    return unfinished["shards_done"] if unfinished else 0


def contents(root: Path) -> dict:
    """What a build decides, as digests to compare two builds: catalog rows (all but the
    time they were added), stored ids and vectors, projection, thresholds."""
    from indexer.index import vectors
    vdir = store.current_version_dir(root)
    catalog = hashlib.sha256()
    db = sqlite3.connect(vdir / store.CATALOG_FILE)
    for row in db.execute("SELECT id, serial, name, source, sha256, thumbnail, metadata, text "
                          "FROM marks ORDER BY id"):
        catalog.update(repr(row).encode())
    db.close()
    ids, vecs = vectors.all_vectors(vectors.load(vdir / store.INDEX_FILE))
    m = json.loads((vdir / store.MANIFEST).read_text())
    return {"catalog": catalog.hexdigest(),
            "ids": hashlib.sha256(ids.tobytes()).hexdigest(),
            "vectors": hashlib.sha256(vecs.tobytes()).hexdigest(),
            "projection": store.sha256_file(vdir / store.PROJECTION_FILE),
            "thresholds": [m["threshold"], m["scene_threshold"], m["words_threshold"]],
            "count": m["count"]}


def kill_and_resume(args: list[str], out: Path, log_file: Path, whole_seconds: float,
                    shards: int, kills: int, seed: int) -> dict:
    """The build SIGKILLed at `kills` random moments (uniform over an uninterrupted build's
    time), run again after each, then to its end. Each kill's record: the shards on disk
    it left, and how many of them the next run found done (fewer would be work lost)."""
    rng = random.Random(seed)
    shutil.rmtree(out, ignore_errors=True)
    log_file.unlink(missing_ok=True)
    moments, left = [], 0
    for _ in range(kills):
        # Within what is left to do, so that no kill comes after the build has ended.
        # Up to 0.8 of it: a run may be faster than the one timed (noise of a few tenths
        # of a second on the tests' 200-mark builds of ~3 s).
        at = rng.uniform(0.05, 0.8) * whole_seconds * (1 - left / shards)
        r = run_build(args, log_file, kill_after=at)
        left = shards_on_disk(out)
        moments.append({"after_s": round(at, 1), "returncode": r["returncode"],
                        "shards_left": left})
    final = run_build(args, log_file)
    found = [int(d) for d in re.findall(r"going on with the unfinished build .*: (\d+) of \d+ "
                                        "shards done", log_file.read_text())]
    for m, done in zip([m for m in moments if m["shards_left"]], found):
        m["next_run_found_done"] = done
    return {"kills": moments, "final_returncode": final["returncode"],
            "final_seconds": final["seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    p.add_argument("--data", type=Path, default=None,
                   help="where the register is made (default: OUT/register)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "bench-build")
    p.add_argument("--shard-size", type=int, default=8192)
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs at the smallest size")
    p.add_argument("--ray", nargs="?", const="also", choices=("also", "only"),
                   help="also build through a local Ray (`--ray only`: through Ray alone)")
    p.add_argument("--resume", action="store_true",
                   help="go on with an unfinished build of a size left by a run that was "
                        "stopped (on 2 cores, 2 M marks take ~1.4 h, more on a busy machine): its "
                        "marks/s then counts this run's part only; compare `phases`")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    args.data = args.data or args.out / "register"
    report = {"sizes": {}, "shard_size": args.shard_size}
    # The stand-in's OpenVINO conversion made once, before any build is timed: on a fresh
    # machine the first build converted it and ran seconds longer than the builds after it,
    # so the kill moments drawn from its time fell after a 200-mark run had ended.
    load_encoder(PIXELS_ENCODER)
    runners = {None: [False], "also": [False, True], "only": [True]}[args.ray]
    for n in sorted(args.sizes):
        manifest = make_register(args.data, n)
        for ray in runners:
            name = f"{n}{'-ray' if ray else ''}"
            out = args.out / f"index-{name}"
            done = shards_on_disk(out) if args.resume else 0
            if not done:
                shutil.rmtree(out, ignore_errors=True)
            cmd = build_args(args.data, manifest, out, ray, args.shard_size)
            r = run_build(cmd, args.out / f"build-{name}.log", shard_size=args.shard_size)
            if done:
                r["resumed_with_shards_done"] = done
            if r["returncode"] != 0:
                log.error("the build of %d marks failed: see %s", n, args.out / f"build-{name}.log")
                return 1
            # ivf-sq8 keeps a byte a dimension: 512 B a mark at the index's 512-d.
            dim = json.loads((store.current_version_dir(out) / store.MANIFEST).read_text())["dim"]
            rule = BASE_RSS + dim * n
            r |= {"marks_per_s": n / r["seconds"], "rule_bytes": rule,
                  "peak_over_rule": r["peak_rss"] / rule}
            report["sizes"][name] = r
            log.info("%s marks: %.0f s, %.1f marks/s, peak RSS %.2f GB (rule %.2f GB: %.2fx); "
                     "%s", name, r["seconds"], r["marks_per_s"], r["peak_rss"] / 1e9,
                     rule / 1e9, r["peak_over_rule"], r.get("phases", ""))
    smallest = min(args.sizes)
    if args.kills:
        whole = report["sizes"][str(smallest)]
        out = args.out / f"index-{smallest}-killed"
        cmd = build_args(args.data, args.data / f"register-{smallest}.csv", out, False,
                         args.shard_size)
        k = kill_and_resume(cmd, out, args.out / f"build-{smallest}-killed.log",
                            whole["seconds"], -(-smallest // args.shard_size), args.kills,
                            args.seed)
        k["identical"] = contents(out) == contents(args.out / f"index-{smallest}")
        report["kill_and_resume"] = k
        log.info("killed at %s s, leaving %s shards, found done by the next run: %s; the "
                 "final index identical to the uninterrupted one: %s",
                 [m["after_s"] for m in k["kills"]], [m["shards_left"] for m in k["kills"]],
                 [m.get("next_run_found_done") for m in k["kills"]], k["identical"])
    (args.out / "build_scale.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
