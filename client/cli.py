"""`python -m client {search,batch,info}`: ask a trademark search server.

Imports neither torch nor faiss: it needs grpcio, protobuf, Pillow (and tqdm).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import grpc
from tqdm import tqdm

from client.api import SearchClient, response_to_dict
from indexer.sources import ManifestError, iter_image_files, read_csv_rows
from proto import trademark_search_pb2 as pb
from server.auth import TokenError, read_token
from server.tls import TLSError, channel_credentials

log = logging.getLogger(__name__)

DEFAULT_SERVER = "127.0.0.1:50051"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client",
                                description="Search a trademark search server.")
    g = p.add_argument_group("connection")
    g.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=30.0,
                   help="seconds per unary call (default: %(default)s)")
    g.add_argument("--token-file", type=Path,
                   help="file holding the server's bearer token (default: $TRADEMARK_TOKEN)")
    g.add_argument("--tls", action="store_true", help="use TLS (implied by the --tls-* flags)")
    g.add_argument("--tls-ca", type=Path, help="PEM CA to trust (default: system roots)")
    g.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    g.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search one image")
    s.add_argument("--input-img", required=True, type=Path, help="image file to look up")
    s.add_argument("--retrievals-num", type=int, default=10, help="similar marks to list (k)")
    s.add_argument("--threshold", type=float, default=None,
                   help="existence threshold for this query (default: the server's)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--plot", type=Path, help="write a PNG of the query beside its matches")

    b = sub.add_parser("batch", help="search a folder or CSV through one SearchStream")
    b.add_argument("input", type=Path, help="folder of images, or CSV with a `file` column "
                                            "(paths relative to the CSV)")
    b.add_argument("--out", required=True, type=Path, help="JSONL file, one object per input")
    b.add_argument("--retrievals-num", type=int, default=10, help="similar marks per image")
    b.add_argument("--threshold", type=float, default=None, help="existence threshold")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("info", help="what the server has loaded")
    return p


def _print_answer(result: dict) -> None:
    if result["exists"]:
        print(f"Trade Mark Existed! - serial number: {result['matched_serial']}")
    else:
        print("Trade Mark Not Existed!")
    print(f"Serial Numbers of similar images: {[m['serial'] for m in result['matches']]}")
    print(f"top score {result['top_score']:.4f}, confidence {result['confidence']:.4f} "
          f"(threshold {result['threshold']:.4f})")
    for rank, m in enumerate(result["matches"], start=1):
        same = "  (same mark)" if m.get("same_mark") and rank > 1 else ""
        print(f"{rank:>4}. {m['serial']}  {m['score']:.4f}  {m['name']}{same}")


def cmd_search(args, client: SearchClient) -> int:
    image = args.input_img.read_bytes()
    resp = client.search(image, args.retrievals_num, args.threshold, str(args.input_img))
    result = {"file": str(args.input_img)} | response_to_dict(resp)
    if args.json:
        print(json.dumps(result))
    else:
        _print_answer(result)
    if args.plot:
        from client.plot import save_results
        thumbs = client.thumbnails([m["serial"] for m in result["matches"]])
        path = save_results(args.plot, image, result, thumbs, args.input_img.name)
        print(f"picture written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def batch_inputs(path: Path) -> list[Path]:
    if path.is_dir():
        return iter_image_files(path)
    rows = read_csv_rows(path, required=("file",))
    return [(path.parent / row["file"].strip()) for _, row in rows]


def _error_line(file: Path, request_id: str, code: str, message: str) -> dict:
    return {"file": str(file), "request_id": request_id, "exists": False,
            "matched_serial": None, "top_score": 0.0, "confidence": 0.0, "threshold": 0.0,
            "matches": [],
            "error": {"code": code, "message": message}}


def cmd_batch(args, client: SearchClient) -> int:
    files = batch_inputs(args.input)
    unread: dict[str, str] = {}

    def requests():
        for i, f in enumerate(files):
            try:
                data = f.read_bytes()
            except OSError as e:
                unread[str(i)] = str(e)
                continue
            req = pb.SearchRequest(request_id=str(i), image=data, k=args.retrievals_num)
            if args.threshold is not None:
                req.threshold = args.threshold
            yield req

    answered, failed, exists = set(), 0, 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as out, tqdm(total=len(files), unit="img",
                                          disable=args.no_progress) as bar:
        def write(line: dict) -> None:
            out.write(json.dumps(line) + "\n")
            out.flush()  # an interrupted batch keeps every answer it got
            bar.update(1)

        try:
            for resp in client.search_stream(requests()):
                line = {"file": str(files[int(resp.request_id)])} | response_to_dict(resp)
                answered.add(resp.request_id)
                failed += line["error"] is not None
                exists += line["exists"]
                write(line)
        except grpc.RpcError as e:
            # Every input still gets a line: the ones the stream did not answer say why.
            log.error("stream ended early: %s %s", e.code().name, e.details())
            for i, f in enumerate(files):
                if str(i) not in answered and str(i) not in unread:
                    failed += 1
                    write(_error_line(f, str(i), e.code().name, e.details() or ""))
        for rid, message in unread.items():
            failed += 1
            write(_error_line(files[int(rid)], rid, "NOT_FOUND", f"cannot read file: {message}"))
    print(f"{len(files)} images: {exists} exist, {len(files) - exists - failed} not, "
          f"{failed} failed; results in {args.out}")
    return 0 if len(answered) + len(unread) == len(files) else 1


def cmd_info(args, client: SearchClient) -> int:
    info = client.info()
    for field in info.DESCRIPTOR.fields:
        print(f"{field.name:>16}: {getattr(info, field.name)}")
    return 0


COMMANDS = {"search": cmd_search, "batch": cmd_batch, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        credentials = None
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
            credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        with SearchClient(args.server, args.timeout, read_token(args.token_file),
                          credentials) as client:
            return COMMANDS[args.command](args, client)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except (OSError, ManifestError, TokenError, TLSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
