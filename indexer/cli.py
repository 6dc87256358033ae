"""`python -m indexer {build,add,remove,calibrate,verify,info}`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from indexer import build as pipeline
from indexer import decision, shards, variants
from indexer.index import lowres, store, vectors
from indexer.index.verify import checksum_problems
from indexer.network.encoder import CPU_BATCH, GPU_BATCH, EncoderError, load_encoder
from indexer.network.options import add_encoder_args
from indexer.sources import ManifestError, ManifestItems, read_manifest, scan_folder

log = logging.getLogger(__name__)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("images")
    g.add_argument("--images", required=True, type=Path,
                   help="folder of marks (searched recursively: jpg png gif bmp tiff webp)")
    g.add_argument("--manifest", type=Path, help="CSV with columns serial,file[,name,text,...]; "
                   "file is relative to --images; text is the mark's words as filed. Without "
                   "it the serial is the file's stem")
    g.add_argument("--no-read-words", dest="read_words", action="store_false",
                   help="do not read the words of marks whose manifest gives none (OCR: "
                        "~20 ms a mark); such marks are then found by their picture alone")
    g = parser.add_argument_group("pipeline")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"images per encoder batch (default: {CPU_BATCH} on CPU, "
                        f"{GPU_BATCH} on a GPU)")
    g.add_argument("--workers", type=int, default=4, help="decoding threads "
                                                          "(default: %(default)s)")
    g.add_argument("--lanes", type=int, default=None,
                   help="batches encoded side by side, each with its share of --threads "
                        "(default: 2 on a CPU with 2+ threads, 1 on a GPU)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("cluster (pip install \".[ray]\")")
    g.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                   help="read, prepare and encode the images on a Ray cluster (ADDRESS as "
                        "ray.init takes it: ray://HOST:10001, HOST:6379 or auto); without "
                        "ADDRESS, on a Ray started on this machine. Every node must see the "
                        "images at the same paths")
    g.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="encoder actors (default: one per GPU of the cluster; on CPUs, one "
                        "per --ray-actor-threads CPUs)")
    g.add_argument("--ray-actor-threads", type=int, default=1, metavar="N",
                   help="encoder threads of each CPU actor (default: %(default)s)")


# --ray without an address: a Ray started on this machine for the build.
LOCAL_RAY = "local"


def _add_calibration_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("calibration (the default existence threshold)")
    g.add_argument("--target-fpr", type=float, default=0.01,
                   help="share of unregistered marks the threshold may let through "
                        "(default: %(default)s)")
    g.add_argument("--calibration-marks", type=int, default=500,
                   help="registered marks sampled for calibration (default: %(default)s)")
    g.add_argument("--calibration-edits", type=int, default=2,
                   help="edited copies made of each (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m indexer",
                                description="Build and maintain a trademark image index.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="index a folder of marks (replaces the index atomically)")
    _add_source_args(b)
    b.add_argument("--out", required=True, type=Path, help="index directory to write")
    g = b.add_argument_group("index")
    g.add_argument("--index-factory", default=vectors.DEFAULT_FACTORY, metavar="PRESET|FACTORY",
                   help="how vectors are searched: a preset (" + "; ".join(
                       f"{p.name}: {p.help}" for p in vectors.PRESETS.values()) +
                   ") or a FAISS factory string such as IVF4096,SQ8 (default: %(default)s)")
    g.add_argument("--dim", type=int, default=pipeline.DEFAULT_DIM,
                   help="vector dimension after PCA (default: %(default)s)")
    g.add_argument("--whiten", type=float, default=0.5,
                   help="PCA whitening power, 0 (none) to 1 (full) (default: %(default)s)")
    g.add_argument("--no-pca", dest="pca", action="store_false",
                   help="store the encoder's vectors as they are (needs an encoder of at most "
                        "--dim dimensions)")
    g.add_argument("--registry-variants", type=_variants,
                   default=",".join(variants.DEFAULT), metavar="NAMES|none",
                   help="store each mark as the mean of its descriptors over itself and these "
                        f"mild variants ({', '.join(variants.EDITS)}): edited copies are found "
                        "more often, each mark costs 1 + len(NAMES) encoder passes to index; "
                        "`none` for the fastest build (default: %(default)s)")
    small = lowres.LowResConfig()
    g.add_argument("--no-lowres", dest="lowres", action="store_const", const=None,
                   default=small,
                   help=f"store no small copies of the marks (they cost {len(small.copy_px)} "
                        "encoder passes and 1 KB each per mark): queries whose mark is under "
                        f"{small.below_px} px are then not re-ranked by them")
    g = b.add_argument_group("resuming (the build is checkpointed in OUT/.building)")
    g.add_argument("--shard-size", type=int, default=pipeline.BuildOptions.shard_size,
                   metavar="N", help="marks encoded and written to disk at a time: a killed "
                   "build, run again with the same command, goes on from its last shard "
                   "(default: %(default)s)")
    g.add_argument("--restart", action="store_true",
                   help="discard an unfinished build of other images or options in OUT, "
                        "which is otherwise refused")
    _add_calibration_args(b)
    add_encoder_args(b)

    a = sub.add_parser("add", help="add marks to an index; an existing serial is replaced")
    _add_source_args(a)
    a.add_argument("--index", required=True, type=Path, help="index directory")
    add_encoder_args(a)

    r = sub.add_parser("remove", help="remove marks by serial")
    r.add_argument("--index", required=True, type=Path, help="index directory")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--serials", nargs="+", help="serials to remove")
    g.add_argument("--serials-file", type=Path, help="file with one serial per line")

    c = sub.add_parser("calibrate", help="re-estimate the default threshold from the registry")
    c.add_argument("--index", required=True, type=Path, help="index directory")
    _add_calibration_args(c)
    add_encoder_args(c)

    v = sub.add_parser("verify", help="check that manifest, FAISS index and catalog agree")
    v.add_argument("--index", required=True, type=Path, help="index directory")

    d = sub.add_parser("duplicates", help="list the registered marks the service would call "
                                          "the same mark (a register's self-check)")
    d.add_argument("--index", required=True, type=Path, help="index directory")
    d.add_argument("--out", required=True, type=Path,
                   help="folder for pairs.csv and sheet.png (a contact sheet of the "
                        "strongest groups)")
    d.add_argument("--min-score", type=float, default=None,
                   help="also list every pair at least this similar (near duplicates)")
    d.add_argument("--threshold", type=float, default=None,
                   help="the existence threshold to decide with (default: the index's)")
    d.add_argument("--batch", type=int, default=1024, help="marks searched per FAISS call")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="describe an index")
    i.add_argument("--index", required=True, type=Path, help="index directory")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--measure-recall", action="store_true",
                   help="load the index and measure recall@10 against exact search on a "
                        "sample of its marks (approximate indexes)")
    return p


def _variants(text: str) -> tuple[str, ...]:
    try:
        return variants.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _items(args, lazy: bool = False):
    """The marks to index. `lazy`: a manifest's rows read from the file when the build
    asks for them (a build's memory then holds no row a mark: sources.ManifestItems)."""
    if args.manifest:
        if lazy:
            return ManifestItems(args.manifest, args.images)
        return read_manifest(args.manifest, args.images)
    return scan_folder(args.images)


def _options(args) -> pipeline.BuildOptions:
    """BuildOptions from whichever of its fields this subcommand has flags for."""
    fields = pipeline.BuildOptions.__dataclass_fields__
    given = {k: getattr(args, k) for k in fields if hasattr(args, k)}
    if hasattr(args, "no_progress"):
        given["progress"] = not args.no_progress
    if getattr(args, "ray", None) is not None:
        from indexer.ray_pipeline import RayOptions
        if args.ray_actors is not None and args.ray_actors < 1:
            raise ValueError(f"--ray-actors must be >= 1, got {args.ray_actors}")
        given["ray"] = RayOptions(None if args.ray == LOCAL_RAY else args.ray, args.ray_actors,
                                  max(1, args.ray_actor_threads), args.encoder, args.runtime)
    return pipeline.BuildOptions(**given)


def _encoder(args):
    import torch
    torch.set_num_threads(max(1, args.threads))
    return load_encoder(args.encoder, args.device, args.runtime, max(1, args.threads))


def _print_build(result: pipeline.BuildResult) -> None:
    print(result.summary())
    # Said again at the end, where a long build's log has scrolled them away.
    for w in store.read_manifest(result.index_dir).calibration.get("warnings", []):
        print(f"WARNING: {w}", file=sys.stderr)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s), listed in "
              f"{Path(result.index_dir) / store.VERSIONS / result.version / store.REPORT_FILE}")
        for s in result.skipped[:10]:
            print(f"  {s.file}: {s.reason}")


def cmd_build(args) -> int:
    result = pipeline.build(_items(args, lazy=True), args.out, _encoder(args), _options(args),
                            restart=args.restart)
    _print_build(result)
    return 0


def cmd_add(args) -> int:
    result = pipeline.add(_items(args), args.index, _encoder(args), _options(args))
    if result.replaced:
        print(f"{result.replaced} serial(s) were already indexed and have been replaced")
    _print_build(result)
    return 0


def cmd_remove(args) -> int:
    serials = args.serials or args.serials_file.read_text().split()
    result = pipeline.remove(serials, args.index)
    print(f"removed {len(result.removed)} mark(s); index version {result.version} holds "
          f"{result.total}")
    if result.not_found:
        print(f"not in the index: {' '.join(result.not_found)}")
    return 0


def cmd_calibrate(args) -> int:
    cal = pipeline.recalibrate(args.index, _encoder(args), _options(args))
    print(f"threshold {cal.threshold:.4f} (estimated TPR {cal.estimated_tpr:.3f} at FPR "
          f"{cal.estimated_fpr}, from {cal.positives} edited copies and {cal.negatives} "
          f"unregistered marks); index version {store.read_manifest(args.index).version}")
    for w in cal.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from indexer.index.verify import verify
    report = verify(args.index)
    for item in report.checked:
        print(f"ok: {item}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print(f"{args.index} version {report.version or '?'}: "
          f"{'verified' if report.ok else f'{len(report.problems)} problem(s)'}")
    return 0 if report.ok else 1


def cmd_duplicates(args) -> int:
    from indexer import duplicates
    from indexer.index.reader import open_index
    if args.min_score is not None and not -1.0 <= args.min_score <= 1.0:
        raise ValueError(f"--min-score is a cosine similarity in [-1, 1], got {args.min_score}")
    index = open_index(args.index)
    try:
        report = duplicates.find(index, args.threshold, args.min_score, max(1, args.batch),
                                 progress=not args.no_progress)
        pairs, sheet = duplicates.write(report, index, args.out)
    finally:
        index.close()
    exists = sum(p.exists for p in report.pairs)
    print(f"{report.marks} marks checked in {report.seconds:.1f} s: {len(report.pairs)} pairs "
          f"in {len(report.groups)} groups ({exists} the service would answer \"exists\" with, "
          f"{sum(p.same_mark for p in report.pairs)} renditions); {pairs}, {sheet}")
    return 0


def index_info(root: Path, measure_recall: bool = False) -> dict:
    vdir = store.current_version_dir(root)
    manifest = store.Manifest.read(vdir / store.MANIFEST)
    info = json.loads(manifest.to_json())
    info["path"] = str(vdir)
    # The checksums the server checks at open: info must not call a damaged index fine.
    info["problems"] = checksum_problems(vdir, manifest)
    info["bytes_on_disk"] = sum(p.stat().st_size for p in vdir.iterdir())
    info["index_memory_bytes"] = vectors.memory_bytes(vdir / store.INDEX_FILE)
    mapped = vectors.mapped_memory_bytes(manifest.index_type, info["index_memory_bytes"],
                                         manifest.count, manifest.dim)
    if mapped is not None:
        info["index_memory_bytes_mmap"] = mapped
    if manifest.lowres:
        info["lowres_memory_bytes"] = sum(vectors.memory_bytes(vdir / n)
                                          for n in lowres.files(manifest.lowres))
    if measure_recall and not info["problems"]:
        index = vectors.load(vdir / store.INDEX_FILE)
        recall = vectors.sampled_recall(index, params=manifest.search_params)
        info["measured_recall"] = round(recall, 4)
    return info


def _unfinished(root: Path) -> dict | None:
    """The unfinished build in `root`, said on stderr; None if there is none."""
    building = shards.progress(root)
    if building:
        print(f"unfinished build in {building['path']}: {building['shards_done']} of "
              f"{building['shards']} shards of {building['shard_size']} marks done "
              f"({building['items']} marks, started {building['started']}); run the command "
              "that started it again to go on", file=sys.stderr)
    return building


def cmd_info(args) -> int:
    building = _unfinished(args.index)
    if building and not (args.index / store.CURRENT).is_file():
        if args.json:
            print(json.dumps({"unfinished_build": building}, indent=2))
        return 1
    info = index_info(args.index, args.measure_recall)
    if building:
        info["unfinished_build"] = building
    status = 1 if info["problems"] else 0
    for problem in info["problems"]:
        print(f"WARNING: {problem}: the server will refuse this version; run "
              f"`python -m indexer verify --index {args.index}`", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=2))
        return status
    enc, cal = info["encoder"], info["calibration"]
    recall = info.get("measured_recall", info.get("sampled_recall"))
    rule = decision.rule_of(info["decision"], info.get("family_similarity"))
    rows = [("path", info["path"]), ("version", info["version"]), ("marks", info["count"]),
            ("dim", info["dim"]), ("metric", info["metric"]),
            ("index type", f"{info['index_type']} ({info.get('index_preset') or 'factory'})"),
            ("search params", info.get("search_params") or "exact"),
            ("recall@10", f"{recall} ({'measured now' if 'measured_recall' in info else 'at build'}"
                          ", sampled, vs exact)" if recall is not None else "-"),
            ("memory", f"{info['index_memory_bytes'] / 1e6:.1f} MB for the vectors" + (
                f" ({info['index_memory_bytes_mmap'] / 1e6:.1f} MB with the server's --mmap, "
                "the full vectors then being page cache)"
                if "index_memory_bytes_mmap" in info else "") + (
                f"; {info['lowres_memory_bytes'] / 1e6:.1f} MB for the small copies"
                if "lowres_memory_bytes" in info else "")),
            ("encoder", f"{enc['name']}@{enc['weights_sha256'][:12]}"),
            ("registry", "each mark the mean over itself and " + ", ".join(
                info["registry_variants"]) if info.get("registry_variants") else "each mark as is"),
            ("small queries", "under {below_px} px: {depth} first candidates re-ranked by their "
                              "{px} px copies".format(**info["lowres"], px="/".join(
                                  map(str, info["lowres"]["copy_px"])))
                              if info.get("lowres") else "not re-ranked"),
            ("threshold", f"{info['threshold']} on the {rule.describe()} "
                          f"({info['threshold_method']})"),
            ("estimate", f"TPR {cal.get('estimated_tpr')} at FPR {cal.get('estimated_fpr', '?')} "
                         f"(target {cal.get('target_fpr')}), on {cal.get('positives')} edited "
                         f"copies and {cal.get('negatives')} unregistered marks"),
            *[("WARNING", w) for w in cal.get("warnings", [])],
            ("size on disk", f"{info['bytes_on_disk'] / 1e6:.1f} MB"),
            ("created", info["created"]), ("updated", info["updated"])]
    for k, v in rows:
        print(f"{k:>13}: {v}")
    return status


COMMANDS = {"build": cmd_build, "add": cmd_add, "remove": cmd_remove, "calibrate": cmd_calibrate,
            "verify": cmd_verify, "info": cmd_info, "duplicates": cmd_duplicates}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ManifestError, store.IndexFormatError, EncoderError, pipeline.BuildError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
