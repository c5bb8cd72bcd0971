"""Files served to their owners with HTTP range reads, and HEAD for every GET endpoint.

GDAL's /vsicurl/ asks a COG's size with HEAD, then reads its tiles with ranges. HEAD is answered
as GET without the body (:class:`HeadAsGet`; the server drops the body, and :class:`Download`
does not read the file for it). A range Starlette's ``FileResponse`` cannot serve is answered in
JSON like every other error (Starlette answers those in plain text)."""

from __future__ import annotations

import os

from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import Headers

from .errors import HEAD, clip, error_body


def range_error(status: int, spec: str, size: int) -> dict:
    if status == 416:
        return error_body(
            "range_not_satisfiable",
            f"the Range {clip(spec)} starts past the file's end: the file has {size:,} bytes; "
            "ask for bytes=0-… within them, or no Range for the whole file",
            size=size,
        )
    return error_body(
        "bad_range",
        f"the Range {clip(spec)} is not a byte range this server reads: send e.g. "
        "Range: bytes=0-16383 (several as bytes=0-99,200-299), or no Range for the whole file",
    )


class HeadAsGet:
    """ASGI middleware: a HEAD request goes to the GET endpoint of its path (FastAPI's routes
    answer only the methods they declare); uvicorn sends the headers only."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET", HEAD: True}
        await self.app(scope, receive, send)


class Download(FileResponse):
    async def __call__(self, scope, receive, send):
        if scope.get(HEAD):  # headers only: the file is not read
            scope = {**scope, "method": "HEAD"}
        replaced = False

        async def as_json(message):
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                replaced = True
                spec = Headers(scope=scope).get("range", "")
                size = os.stat(self.path).st_size
                body = JSONResponse(range_error(message["status"], spec, size)).body
                headers = [
                    (k, v)
                    for k, v in message["headers"]
                    if k.lower() not in (b"content-type", b"content-length")
                ]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ]
                await send(message | {"headers": headers})
                await send({"type": "http.response.body", "body": body})
            elif not replaced:  # Starlette's own plain-text body is dropped
                await send(message)

        await super().__call__(scope, receive, as_json)
