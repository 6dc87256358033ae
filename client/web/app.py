"""The web app: the page, its assets, and a JSON API, all answered through the gRPC client.

    GET  /                        the page
    GET  /api/info                what the server has loaded (GetIndexInfo)
    POST /api/search              multipart: image, and optional k, threshold, region
                                  ("X,Y,W,H" in the pixels of the image as sent) and
                                  filter ("COLUMN=V1,V2", repeatable)
    GET  /api/thumbnails/SERIAL   a registered mark's small picture (PNG)

Answers of /api/search carry the fields of a `client batch` line. Bad uploads get a 4xx
with {"detail": message}; a server that cannot be reached, 503; never a 500 for the
caller's input.
"""
from __future__ import annotations

import logging
from pathlib import Path

import grpc
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from client.api import (MAX_IMAGE_BYTES, SearchClient, info_to_dict, parse_filters,
                        parse_region, response_to_dict)

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"

# What a gRPC status means for the browser: the caller's fault (4xx) or the service's (5xx).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    # The app's own credentials were refused: a gateway fault, not the user's.
    grpc.StatusCode.UNAUTHENTICATED: 502,
    grpc.StatusCode.PERMISSION_DENIED: 502,
}


def _abort(e: grpc.RpcError) -> HTTPException:
    status = HTTP_STATUS.get(e.code(), 502)
    if status >= 500:
        log.warning("search server: %s %s", e.code().name, e.details())
    return HTTPException(status, f"{e.code().name}: {e.details()}")


def create_app(client: SearchClient, max_upload: int = MAX_IMAGE_BYTES) -> FastAPI:
    app = FastAPI(title="Trademark visual search", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict:
        try:
            reply = client.info()
        except grpc.RpcError as e:
            raise _abort(e) from None
        # Not MessageToDict: that writes int64 as strings, and float32 0.3059 as
        # 0.30590000748634338.
        out = {k: round(v, 6) if isinstance(v, float) else v
               for k, v in info_to_dict(reply).items()}
        out["max_upload_bytes"] = max_upload
        return out

    @app.post("/api/search")
    def search(image: UploadFile | None = File(None, description="the mark: PNG, JPEG, ..."),
               k: int = Form(10, ge=1), threshold: float | None = Form(None, ge=0, le=1),
               region: str | None = Form(None, description="X,Y,W,H in image pixels"),
               filters: list[str] = Form([], alias="filter",
                                         description="COLUMN=V1,V2; every one must hold"),
               text: str = Form("", description="the mark's words (alone: a search by words)"),
               read_words: bool = Form(False, description="read the picture's words anyway")
               ) -> dict:
        data = b""
        if image is not None:
            # Read one byte past the limit: a larger upload is refused without holding it all.
            data = image.file.read(max_upload + 1)
            if not data:
                raise HTTPException(400, "the upload is empty: choose an image file")
            if len(data) > max_upload:
                raise HTTPException(413, f"the image is larger than "
                                         f"{max_upload // (1 << 20)} MB, the most the search "
                                         "server takes")
        elif not text.strip():
            raise HTTPException(400, "give an image, the mark's words, or both")
        try:
            box = parse_region(region) if region else None
            wanted = parse_filters([f for f in filters if f.strip()])
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        name = image.filename or "" if image is not None else ""
        try:
            reply = client.search(data, k, threshold, name, box, wanted, text, read_words)
        except grpc.RpcError as e:
            raise _abort(e) from None
        return {"file": name} | response_to_dict(reply)

    @app.get("/api/thumbnails/{serial}", responses={200: {"content": {"image/png": {}}}})
    def thumbnail(serial: str) -> Response:
        try:
            found = client.thumbnails([serial])
        except grpc.RpcError as e:
            raise _abort(e) from None
        if serial not in found:
            raise HTTPException(404, f"no registered mark with serial {serial!r}")
        return Response(found[serial][1], media_type="image/png",
                        headers={"Cache-Control": "max-age=300"})

    @app.exception_handler(RequestValidationError)
    async def bad_form(request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 lists pydantic's internals; say what was wrong in one sentence.
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"},
                            status_code=400)

    return app
