"""A thin typed wrapper around the generated stub; results as plain dicts (the JSONL schema)."""
from __future__ import annotations

import json
from typing import Iterable, Iterator, Mapping, Sequence

import grpc

from client import channel
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# The largest image a request can carry: the server's message limit (server.app) less
# room for the request's other fields.
MAX_IMAGE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024


def status_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


def response_to_dict(resp: pb.SearchResponse) -> dict:
    """The JSON object the CLI prints and writes, one per query."""
    error = None
    if resp.HasField("error"):
        error = {"code": status_name(resp.error.code), "message": resp.error.message}
    return {
        "request_id": resp.request_id,
        "exists": resp.exists,
        "matched_serial": resp.matched_serial or None,
        "top_score": round(resp.top_score, 6),
        "confidence": round(resp.confidence, 6),
        "threshold": round(resp.threshold, 6),
        "matches": _matches(resp.matches),
        "filtered": resp.filtered,
        "candidates": resp.candidates if resp.filtered else None,
        "marks": [_mark(m) for m in resp.marks],
        "words": resp.words,
        "words_score": round(resp.words_score, 6),
        "matched_by": resp.matched_by or None,
        "words_threshold": round(resp.words_threshold, 6) or None,
        "error": error,
    }


def found_marks(result: dict) -> list[dict]:
    """The marks of a response dict that the detector found in a photograph (a clean
    image or a region is one mark: the answer itself)."""
    return [m for m in result.get("marks", []) if m.get("detection_score") is not None]


def _matches(matches) -> list[dict]:
    return [{"serial": m.serial, "score": round(m.score, 6), "name": m.name,
             "same_mark": m.same_mark, "metadata": _metadata(m.metadata), "text": m.text,
             "text_score": round(m.text_score, 6)} for m in matches]


def _mark(m: pb.MarkAnswer) -> dict:
    """One mark found in the picture: its box [x, y, w, h] and its own answer."""
    return {
        "box": [m.box.x, m.box.y, m.box.width, m.box.height],
        "exists": m.exists,
        "matched_serial": m.matched_serial or None,
        "top_score": round(m.top_score, 6),
        "confidence": round(m.confidence, 6),
        "detection_score": round(m.detection_score, 6) if m.HasField("detection_score")
        else None,
        "matches": _matches(m.matches),
        "words": m.words,
        "words_score": round(m.words_score, 6),
        "matched_by": m.matched_by or None,
    }


def info_to_dict(info: pb.IndexInfo) -> dict:
    """IndexInfo's fields as plain values (a repeated field as a list); floats as the
    float32 the wire carried, for the caller to round as it shows them."""
    return {f.name: list(getattr(info, f.name)) if f.is_repeated else getattr(info, f.name)
            for f in info.DESCRIPTOR.fields}


def _metadata(text: str) -> dict:
    try:
        return json.loads(text) if text else {}
    except ValueError:  # a server that sent something else: keep it, visibly
        return {"_raw": text}


def parse_region(text: str) -> tuple[int, int, int, int]:
    """"X,Y,W,H" (pixels) -> ints; ValueError saying how to write it."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"a region is X,Y,WIDTH,HEIGHT in whole pixels, got {text!r}") from None
    return x, y, w, h


def parse_filters(texts: Sequence[str]) -> dict[str, list[str]]:
    """["COLUMN=V1,V2", ...] -> {column: [values]}; ValueError saying how to write one.
    The same column twice adds values (any of them passes)."""
    out: dict[str, list[str]] = {}
    for text in texts:
        column, sep, values = text.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not column.strip() or not vals:
            raise ValueError(f"a filter is COLUMN=VALUE[,VALUE...], got {text!r}")
        out.setdefault(column.strip(), []).extend(vals)
    return out


def search_request(image: bytes, k: int = 10, threshold: float | None = None,
                   request_id: str = "", region: Sequence[int] | None = None,
                   filters: Mapping[str, Sequence[str]] | None = None, text: str = "",
                   read_words: bool = False) -> pb.SearchRequest:
    """`image` b"" with `text`: a search by words alone."""
    req = pb.SearchRequest(request_id=request_id, image=image, k=k, text=text,
                           read_words=read_words)
    if threshold is not None:
        req.threshold = threshold
    if region is not None:
        x, y, w, h = region
        req.region.CopyFrom(pb.Region(x=x, y=y, width=w, height=h))
    for column, values in (filters or {}).items():
        req.filters.append(pb.Filter(column=column, values=list(values)))
    return req


class SearchClient:
    """`server`: HOST[:PORT], several of them comma-separated, or a gRPC target such as
    dns:///name:port (client.channel: balanced over the replicas, unary calls retried)."""

    def __init__(self, server: str, timeout: float = 30.0, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None):
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.keepalive_time_ms", 60_000), *channel.options(server)]
        self.target = channel.target(server)
        self.channel = (grpc.secure_channel(self.target, credentials, options) if credentials
                        else grpc.insecure_channel(self.target, options))
        self.stub = pb_grpc.TrademarkSearchStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def search(self, image: bytes, k: int = 10, threshold: float | None = None,
               request_id: str = "", region: Sequence[int] | None = None,
               filters: Mapping[str, Sequence[str]] | None = None, text: str = "",
               read_words: bool = False) -> pb.SearchResponse:
        req = search_request(image, k, threshold, request_id, region, filters, text,
                             read_words)
        return self.stub.Search(req, timeout=self.timeout, metadata=self.metadata)

    def search_stream(self, requests: Iterable[pb.SearchRequest],
                      timeout: float | None = None) -> Iterator[pb.SearchResponse]:
        return self.stub.SearchStream(iter(requests), timeout=timeout, metadata=self.metadata)

    def info(self) -> pb.IndexInfo:
        return self.stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=self.timeout,
                                      metadata=self.metadata)

    def thumbnails(self, serials: list[str]) -> dict[str, tuple[str, bytes]]:
        resp = self.stub.GetThumbnails(pb.GetThumbnailsRequest(serials=serials),
                                       timeout=self.timeout, metadata=self.metadata)
        return {t.serial: (t.name, t.image) for t in resp.thumbnails}
