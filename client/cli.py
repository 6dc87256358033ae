"""`python -m client {search,batch,info,web}`: ask a trademark search server.

Imports neither torch nor faiss: it needs grpcio, protobuf, Pillow (and tqdm); `web` also
FastAPI and uvicorn (`pip install ".[web]"`).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
from tqdm import tqdm

from client.api import (SearchClient, found_marks, info_to_dict, parse_filters, parse_region,
                        response_to_dict, search_request)
from client.channel import DEFAULT_PORT, AddressError
from indexer.sources import ManifestError, iter_image_files, read_csv_rows
from server.auth import TokenError, read_token
from server.tls import TLSError, channel_credentials

log = logging.getLogger(__name__)

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
CONNECTION = {"server": DEFAULT_SERVER, "timeout": 30.0, "token_file": None, "tls": False,
              "tls_ca": None, "tls_cert": None, "tls_key": None}


def _connection_args(parser: argparse.ArgumentParser) -> None:
    # Defaults are filled in after parsing (CONNECTION), so that the options may come
    # before or after the subcommand without the subcommand's copy resetting them.
    g = parser.add_argument_group("connection (before or after the command)")
    g.add_argument("--server", default=argparse.SUPPRESS,
                   help=f"HOST[:PORT] (default: {DEFAULT_SERVER}; port {DEFAULT_PORT} if none); "
                        "replicas as HOST:PORT,HOST:PORT,... or dns:///NAME:PORT, balanced "
                        "round-robin")
    g.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                   help=f"seconds per unary call (default: {CONNECTION['timeout']:g})")
    g.add_argument("--token-file", type=Path, default=argparse.SUPPRESS,
                   help="file holding the server's bearer token (default: $TRADEMARK_TOKEN)")
    g.add_argument("--tls", action="store_true", default=argparse.SUPPRESS,
                   help="use TLS (implied by the --tls-* flags)")
    g.add_argument("--tls-ca", type=Path, default=argparse.SUPPRESS,
                   help="PEM CA to trust (default: system roots)")
    g.add_argument("--tls-cert", type=Path, default=argparse.SUPPRESS,
                   help="PEM client certificate (mutual TLS)")
    g.add_argument("--tls-key", type=Path, default=argparse.SUPPRESS, help="PEM key of --tls-cert")


def _filter_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", action="append", default=[], metavar="COLUMN=V1,V2",
                        help="only registered marks whose COLUMN (a manifest column: see "
                             "`info`) holds one of the values; repeat for more columns, "
                             "all of which must hold")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client",
                                description="Search a trademark search server.")
    _connection_args(p)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search one image")
    _connection_args(s)
    s.add_argument("--input-img", type=Path, help="image file to look up")
    s.add_argument("--text", default="", metavar="WORDS",
                   help="the mark's words: searched alone (without --input-img), or instead "
                        "of the words read in the image")
    s.add_argument("--read-words", action="store_true",
                   help="read the image's words even where its picture's answer is sure")
    s.add_argument("--retrievals-num", type=int, default=10, help="similar marks to list (k)")
    s.add_argument("--threshold", type=float, default=None,
                   help="existence threshold for this query (default: the server's)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--plot", type=Path, help="write a PNG of the query beside its matches")
    s.add_argument("--region", metavar="X,Y,W,H",
                   help="search only this part of the image (pixels, as a viewer shows it)")
    _filter_arg(s)

    b = sub.add_parser("batch", help="search a folder or CSV through one SearchStream")
    _connection_args(b)
    b.add_argument("input", type=Path, help="folder of images, or CSV with a `file` column "
                                            "(paths relative to the CSV, or to --images)")
    b.add_argument("--images", type=Path, help="folder the CSV's paths start from, as with "
                                               "`python -m indexer build --manifest`")
    b.add_argument("--out", required=True, type=Path, help="JSONL file, one object per input")
    b.add_argument("--retrievals-num", type=int, default=10, help="similar marks per image")
    b.add_argument("--threshold", type=float, default=None, help="existence threshold")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    _filter_arg(b)

    _connection_args(sub.add_parser("info", help="what the server has loaded"))

    w = sub.add_parser("web", help="serve a web page (and a JSON API) that searches the server")
    _connection_args(w)
    w.add_argument("--host", default="127.0.0.1",
                   help="address the page listens on (default: %(default)s; 0.0.0.0 for all)")
    w.add_argument("--port", type=int, default=8080,
                   help="port of the page (default: %(default)s; 0 picks a free one)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    for name, default in CONNECTION.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.command in ("search", "batch"):
        try:
            args.filters = parse_filters(args.filter)
            if getattr(args, "region", None):
                args.region = parse_region(args.region)
        except ValueError as e:
            p.error(str(e))
    if args.command == "search":
        if args.input_img is None and not args.text.strip():
            p.error("give --input-img IMAGE, --text WORDS, or both")
        if args.input_img is None and (args.plot or getattr(args, "region", None)):
            p.error("--plot and --region need --input-img")
        if args.input_img is None:
            return args
        if args.plot and args.plot.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            p.error(f"--plot {args.plot}: give the picture's file name with .png or .jpg")
        # Path() folds "https://" to "https:/": any scheme before ":/" is a URL.
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(args.input_img)):
            p.error(f"--input-img {args.input_img}: a URL; download the image and give its file")
        if args.input_img.is_dir():
            p.error(f"--input-img {args.input_img} is a folder: search takes one image; "
                    "use `batch` for a folder")
    return args


# Why a mark exists, where it is not its picture's decision score (SearchResponse.matched_by).
BY = {"words": " (exists by its words)",
      "keypoints": " (exists by its keypoints, lined up with its first match's)",
      "figure": " (exists by its figure: its picture with the words beside it left out)"}


def _print_answer(result: dict) -> None:
    by = result.get("matched_by")
    if result["exists"]:
        # (by its words: said on the words' line below)
        how = BY[by] if by in ("keypoints", "figure") else ""
        print(f"Trade Mark Existed! - serial number: {result['matched_serial']}{how}")
    else:
        print("Trade Mark Not Existed!")
    print(f"Serial Numbers of similar images: {[m['serial'] for m in result['matches']]}")
    print(f"top score {result['top_score']:.4f}, confidence {result['confidence']:.4f} "
          f"(threshold {result['threshold']:.4f})")
    if result.get("filtered"):
        print(f"among the {result['candidates']} registered marks that pass the filters")
    if result.get("words"):
        how = BY[by] if by == "words" else ""
        print(f"words {result['words']!r}: best match {result['words_score']:.2f} "
              f"(threshold {result['words_threshold'] or 0:.2f}){how}")
    _print_matches(result["matches"])
    # Marks the detector found in a photograph, each with its own answer (a clean image
    # or a region is one mark: the answer above).
    found = found_marks(result)
    if found or result.get("marks") == []:
        print(f"{len(found)} mark{'s' if len(found) != 1 else ''} found in the picture"
              + (":" if found else " (the whole picture was searched)"))
    for n, mark in enumerate(found, start=1):
        x, y, w, h = mark["box"]
        verdict = (f"exists: {mark['matched_serial']}{BY.get(mark.get('matched_by'), '')}"
                   if mark["exists"] else "not registered")
        print(f"  mark {n} at x={x} y={y} w={w} h={h} (detector {mark['detection_score']:.2f}): "
              f"{verdict}, confidence {mark['confidence']:.4f}")
        _print_matches(mark["matches"][:3], indent="    ")


def _print_matches(matches: list[dict], indent: str = "") -> None:
    for rank, m in enumerate(matches, start=1):
        same = "  (same mark)" if m.get("same_mark") and rank > 1 else ""
        # the manifest's other columns; its name is printed already
        extra = {k: v for k, v in (m.get("metadata") or {}).items() if k != "name"}
        meta = "  " + json.dumps(extra, ensure_ascii=False) if extra else ""
        words = f"  words {m['text']!r} {m['text_score']:.2f}" \
            if m.get("text") and m.get("text_score") else ""
        print(f"{indent}{rank:>4}. {m['serial']}  {m['score']:.4f}  {m['name']}{same}{words}"
              f"{meta}")


def cmd_search(args, client: SearchClient) -> int:
    image = args.input_img.read_bytes() if args.input_img else b""
    resp = client.search(image, args.retrievals_num, args.threshold,
                         str(args.input_img or ""), args.region, args.filters, args.text,
                         args.read_words)
    result = {"file": str(args.input_img) if args.input_img else None} | response_to_dict(resp)
    if args.json:
        print(json.dumps(result))
    else:
        _print_answer(result)
    if args.plot:
        from client.plot import save_results, wanted_serials
        thumbs = client.thumbnails(wanted_serials(result))
        path = save_results(args.plot, image, result, thumbs, args.input_img.name)
        print(f"picture written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def batch_inputs(path: Path, images: Path | None = None
                 ) -> tuple[list[Path], list[tuple[int, int, int, int] | None]]:
    """The files to search and each one's region (a CSV's optional `region` column,
    X,Y,W,H; None: the whole image)."""
    if path.is_dir():
        files = iter_image_files(path)
        return files, [None] * len(files)
    rows = read_csv_rows(path, required=("file",))
    root = path.parent if images is None else images
    regions = []
    for line, row in rows:
        text = (row.get("region") or "").strip()
        try:
            regions.append(parse_region(text) if text else None)
        except ValueError as e:
            raise ManifestError(f"{path}, line {line}: {e}") from None
    return [(root / row["file"].strip()) for _, row in rows], regions


def _error_line(file: Path, request_id: str, code: str, message: str) -> dict:
    return {"file": str(file), "request_id": request_id, "exists": False,
            "matched_serial": None, "top_score": 0.0, "confidence": 0.0, "threshold": 0.0,
            "matches": [], "filtered": False, "candidates": None, "marks": [],
            "words": "", "words_score": 0.0, "matched_by": None, "words_threshold": None,
            "error": {"code": code, "message": message}}


# A stream that broke with these is sent again, what it left unanswered only: the replica
# went away (UNAVAILABLE), or was stopped and cancelled its calls after its grace period.
RESEND_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# Streams in a row that may break without answering anything before the batch gives up.
MAX_FRUITLESS_STREAMS = 4


def cmd_batch(args, client: SearchClient) -> int:
    files, regions = batch_inputs(args.input, args.images)
    unread: dict[int, str] = {}
    answers: dict[int, dict] = {}  # answered, not yet written (lines go in input order)

    def requests(todo: list[int]):
        for i in todo:
            try:
                data = files[i].read_bytes()
            except OSError as e:
                unread[i] = str(e)
                continue
            yield search_request(data, args.retrievals_num, args.threshold, str(i), regions[i],
                                 args.filters)

    exists, failures = 0, Counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as out, tqdm(total=len(files), unit="img",
                                          disable=args.no_progress) as bar:
        written = 0  # the next input to write

        def write(line: dict) -> None:
            nonlocal exists
            if line["error"] is not None:
                failures[line["error"]["code"]] += 1
            exists += line["exists"]
            out.write(json.dumps(line) + "\n")
            out.flush()  # an interrupted batch keeps every answer it got
            bar.update(1)

        def flush() -> None:
            # Files that could not be read were never sent: their lines go in their place.
            nonlocal written
            while written < len(files) and (written in answers or written in unread):
                if written in unread:
                    write(_error_line(files[written], str(written), "NOT_FOUND",
                                      f"cannot read file: {unread[written]}"))
                else:
                    write(answers.pop(written))
                written += 1

        todo, fruitless = list(range(len(files))), 0
        while todo:
            before = len(answers) + written
            try:
                for resp in client.search_stream(requests(todo)):
                    i = int(resp.request_id)
                    answers[i] = {"file": str(files[i])} | response_to_dict(resp)
                    flush()
                break
            except grpc.RpcError as e:
                # Every input is answered once: the ones this stream did not answer are
                # sent again (round-robin gives the new stream another replica), or, past
                # MAX_FRUITLESS_STREAMS without an answer, get a line saying why.
                todo = [i for i in todo if i not in answers and i >= written
                        and i not in unread]
                fruitless = 0 if len(answers) + written > before else fruitless + 1
                if e.code() in RESEND_CODES and todo and fruitless < MAX_FRUITLESS_STREAMS:
                    log.warning("stream ended early (%s: %s); sending the %d unanswered "
                                "inputs again", e.code().name, e.details(), len(todo))
                    time.sleep(0.2 * fruitless)
                    continue
                log.error("stream ended early: %s %s", e.code().name, e.details())
                for i in todo:
                    answers[i] = _error_line(files[i], str(i), e.code().name, e.details() or "")
                break
        for i in range(written, len(files)):  # never so with a server that answers all
            if i not in answers and i not in unread:
                answers[i] = _error_line(files[i], str(i), "UNKNOWN",
                                         "the stream ended without an answer for this input")
        flush()
    failed = sum(failures.values())
    reasons = ", ".join(f"{n} {code}" for code, n in failures.most_common())
    print(f"{len(files)} images: {exists} exist, {len(files) - exists - failed} not, "
          f"{failed} failed{f' ({reasons})' if reasons else ''}; results in {args.out}")
    return 1 if failed else 0


def cmd_info(args, client: SearchClient) -> int:
    for name, value in info_to_dict(client.info()).items():
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        elif isinstance(value, float):  # float32 on the wire: 0.3406 prints as 0.340600013...
            value = round(value, 4)
        print(f"{name:>18}: {value}")
    return 0


def cmd_web(args, client: SearchClient) -> int:
    try:
        from client.web.serve import serve
    except ImportError as e:
        raise WebUnavailable(f"the web page needs FastAPI and uvicorn ({e.name} is missing): "
                             'pip install ".[web]"') from e
    return serve(client, args.host, args.port)


class WebUnavailable(RuntimeError):
    """`web` was asked for without its dependencies installed."""


COMMANDS = {"search": cmd_search, "batch": cmd_batch, "info": cmd_info, "web": cmd_web}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        credentials = None
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
            credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        with SearchClient(args.server, args.timeout, read_token(args.token_file),
                          credentials) as client:
            return COMMANDS[args.command](args, client)
    except grpc.RpcError as e:
        hint = (f" (is a server running at {args.server}? --server HOST:PORT)"
                if e.code() == grpc.StatusCode.UNAVAILABLE else "")
        return _fail(args, e.code().name, f"{e.details()}{hint}", 1)
    except (OSError, ManifestError, TokenError, TLSError, WebUnavailable, AddressError) as e:
        return _fail(args, "INVALID_ARGUMENT" if isinstance(e, ManifestError) else "ERROR",
                     str(e), 2)


def _fail(args, code: str, message: str, status: int) -> int:
    """The error on stderr; with `search --json`, also as the JSON object on stdout."""
    print(f"error: {code}: {message}" if code != "ERROR" else f"error: {message}",
          file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(_error_line(args.input_img, "", code, message)))
    return status
