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


LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _host_name(host: str) -> str:
    """The name in a Host header or an origin's netloc, without its port ("[::1]:80" → "::1")."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SameOrigin:
    """ASGI middleware against other web pages driving the API through a user's browser:

    - a request that changes something (POST, PUT, PATCH, DELETE) sent by a page of another
      origin (its ``Origin`` header, or ``Sec-Fetch-Site: cross-site``) is answered 403: a
      form or fetch from any site a user visits would otherwise reach a ``--dev`` server,
      which takes no key;
    - a ``--dev`` server (no keys, loopback only) answers loopback host names only, so a
      name rebound to 127.0.0.1 (DNS rebinding) gets 403, not the API.
    """

    def __init__(self, app, settings):
        self.app, self.settings = app, settings
        public = settings.public_url.rstrip("/")
        self.public_origin = "/".join(public.split("/")[:3]) if public else ""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        problem = None
        if self.settings.dev and _host_name(host) not in LOOPBACK_NAMES:
            problem = (
                "forbidden_host",
                f"a --dev server answers loopback host names only (127.0.0.1, localhost), not "
                f"{host!r}; open it as http://127.0.0.1:PORT, or run it with API keys for other "
                "names",
            )
        elif scope["method"] in UNSAFE:
            origin = headers.get(b"origin", b"").decode("latin-1")
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1")
            own = {f"http://{host}", f"https://{host}", self.public_origin} - {""}
            if (origin and origin not in own) or site == "cross-site":
                problem = (
                    "cross_origin",
                    f"a request from another site's page ({origin or site}) may not change "
                    "anything here; call the API from the Lab, a script or a server",
                )
        if problem is None:
            return await self.app(scope, receive, send)
        response = JSONResponse(error_body(*problem), 403)
        return await response(scope, receive, send)
