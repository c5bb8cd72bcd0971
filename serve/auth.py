"""Who is asking: a Bearer API key names the owner; ``--dev`` is the single local user."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError, error_body
from .owners import LOCAL

bearer = HTTPBearer(
    auto_error=False,
    description="an API key from `geotune keys create --owner NAME` (not needed with --dev)",
)

HOW = (
    "send it as 'Authorization: Bearer <key>'; the server's operator creates keys with "
    "`geotune keys create --owner NAME`"
)


def current_owner(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> str:
    ctx = request.app.state.ctx
    if ctx.settings.dev:
        return LOCAL
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", f"this request needs an API key: {HOW}", challenge)
    owner = ctx.keys.owner_for(credentials.credentials)
    if owner is None:
        raise ApiError(
            401,
            "unauthorized",
            f"the API key is not valid (unknown, mistyped or revoked): {HOW}",
            challenge,
        )
    return owner


class KeyGate:
    """ASGI middleware: without --dev, a /v1 request without a valid key is answered 401 before
    its body is read, so nobody can make the server spool an upload without a key."""

    def __init__(self, app, settings, keys_factory):
        self.app, self.settings, self.keys = app, settings, keys_factory

    async def __call__(self, scope, receive, send):
        if self.settings.dev or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and key and self.keys().owner_for(key.strip()):
            return await self.app(scope, receive, send)
        detail = (
            f"the API key is not valid (unknown, mistyped or revoked): {HOW}"
            if key
            else (f"this request needs an API key: {HOW}")
        )
        response = JSONResponse(
            error_body("unauthorized", detail), 401, headers={"WWW-Authenticate": "Bearer"}
        )
        return await response(scope, receive, send)
