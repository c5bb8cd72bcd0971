"""Every error is JSON ``{"error": <code>, "detail": <what is wrong and what to do>}``.

FastAPI's own errors (validation, unknown routes, wrong methods) and unexpected exceptions go
through the same handlers: a client never sees a traceback; the server log keeps it, under a
reference that the answer names.
"""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from datamodules.errors import UserError

log = logging.getLogger("geotune.serve")


class ApiError(Exception):
    """An answer other than success: status, a short code, and a message a person can act on."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers, self.extra = headers, extra


class PayloadTooLarge(ApiError):
    def __init__(self, limit_bytes: int, upload: bool = True):
        mb = limit_bytes / 1024 / 1024
        if upload:
            detail = (
                f"the request body is larger than this server's upload limit of {mb:g} MB; send "
                "a smaller file (crop or compress the GeoTIFF) or ask the operator to raise "
                "`geotune serve --max-upload-mb`"
            )
        else:
            detail = (
                f"a request body that is not a multipart upload may be at most {mb:g} MB; "
                "simplify a large AOI geometry (e.g. ogr2ogr -simplify) or send files as "
                "multipart/form-data (curl -F), as /docs shows"
            )
        super().__init__(413, "payload_too_large", detail, limit_mb=mb)


def clip(value, limit: int = 80) -> str:
    """A client's value as an answer may echo it: its repr, at most ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def not_found(kind: str, ident: str, hint: str) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} {clip(ident)}. {hint}")


def error_body(error: str, detail: str, **extra) -> dict:
    return {"error": error, "detail": detail, **extra}


def _json(status: int, error: str, detail: str, headers=None, **extra) -> JSONResponse:
    return JSONResponse(error_body(error, detail, **extra), status_code=status, headers=headers)


def _field(loc) -> str:
    return ".".join(str(p) for p in loc)


def validation_detail(errors: list[dict]) -> tuple[str, list[dict]]:
    fields = []
    for e in errors:
        loc = _field(e.get("loc", ()))
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing":
            msg = "this field is required"
        elif (
            "input" in e
            and e["type"] not in ("json_invalid",)
            and not isinstance(e["input"], dict | list)
        ):
            msg = f"{msg} (got {clip(e['input'])})"
        fields.append({"field": loc, "message": msg})
    text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return f"the request is not valid: {text}. See /docs for the expected fields.", fields


HEAD = "geotune.head"  # the scope's mark of a HEAD request routed as GET (serve.downloads)
MAX_FILES, MAX_FIELDS = 64, 32  # per multipart request (the predict route's own form limits)


def allowed_methods(app, scope: dict) -> list[str]:
    """Every method some route accepts at the request's path (Starlette's 405 names only one
    route's), found by asking each route whether it would take the request with that method."""
    from starlette.routing import Match

    found = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        trial = {**scope, "method": method}
        if any(route.matches(trial)[0] == Match.FULL for route in app.router.routes):
            found += ["GET", "HEAD"] if method == "GET" else [method]
    return found


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _json(exc.status, exc.error, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        detail, fields = validation_detail(list(exc.errors()))
        return _json(422, "invalid_request", detail, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ApiError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ApiError):  # raised while FastAPI parsed the body (upload limit)
            return _json(cause.status, cause.error, cause.detail, cause.headers, **cause.extra)
        method, path = request.method, request.url.path
        if request.scope.get(HEAD):
            method = "HEAD"
        if exc.status_code == 404:
            return _json(
                404,
                "not_found",
                f"there is no endpoint {method} {clip(path)[1:-1]}. The API lives under /v1 "
                "(datasets, finetunes, jobs, models, predictions, geospatial, scenes, benchmarks, "
                "backbones); /docs lists every endpoint, /lab is the web page.",
            )
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(request.app, request.scope))
            if method == "OPTIONS" and allow:  # what the path accepts, as HTTP's OPTIONS asks
                return Response(status_code=204, headers={"Allow": f"{allow}, OPTIONS"})
            return _json(
                405,
                "method_not_allowed",
                f"{clip(path)[1:-1]} does not accept {method}"
                + (f"; it accepts {allow}" if allow else "")
                + ". /docs lists every endpoint.",
                headers={"Allow": allow},
            )
        if exc.status_code == 400:
            reason = exc.detail if isinstance(exc.detail, str) else ""
            limit = f" ({reason.rstrip('.')})" if reason and reason != "Bad Request" else ""
            return _json(
                400,
                "bad_request",
                f"the request body could not be read{limit}: send JSON with Content-Type "
                "application/json, or a multipart/form-data upload (curl -F) as /docs shows; "
                f"an upload takes at most {MAX_FILES} files and {MAX_FIELDS} fields, each field "
                "at most 1 MB",
            )
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _json(exc.status_code, "http_error", detail, headers=exc.headers)

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError):
        return _json(422, "invalid_input", str(exc))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        # the client left mid-upload: not a server error, and there is nobody to answer
        log.info("the client left during %s %s", request.method, request.url.path)
        return _json(400, "client_disconnected", "the client closed the connection")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        ref = secrets.token_hex(4)
        log.exception("unexpected error %s on %s %s", ref, request.method, request.url.path)
        return _json(
            500,
            "internal_error",
            f"the server failed unexpectedly (reference {ref}); the request may be retried. "
            "If it fails again, report the reference: the server log has the details.",
            reference=ref,
        )
