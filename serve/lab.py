"""The Lab at ``/lab``: a web page over the public ``/v1`` API (draw labels, fine-tune, predict,
compare), served as static files from ``serve/static/lab`` (plain ES modules; Leaflet and its
drawing plugin vendored from the npm registry by ``vendor/refresh.sh``).

``/lab/config.json`` tells the page what it cannot ask ``/v1`` without a key: whether the
server runs ``--dev`` (no key) and the optional online basemap (``--basemap-url``). The page's
Content-Security-Policy lets it load code and data from this server only (and tiles from the
basemap's host when one is set).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from .settings import Settings


def lab_dir() -> Path:
    return Path(str(files("serve").joinpath("static", "lab")))


def csp(settings: Settings) -> str:
    img = "'self' data: blob:"
    if settings.basemap_url:  # its origin; a {s} subdomain placeholder becomes a wildcard
        u = urlsplit(settings.basemap_url)
        img += f" {u.scheme}://{u.netloc.replace('{s}', '*')}"
    return (
        f"default-src 'self'; img-src {img}; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


class LabFiles(StaticFiles):
    def __init__(self, *args, policy: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = policy

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = self.policy
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"  # revalidate: a new version shows at once
        return response


def mount_lab(app: FastAPI, settings: Settings) -> None:
    @app.get("/lab", include_in_schema=False)
    def lab_root():
        return RedirectResponse("/lab/", status_code=307)

    @app.get("/lab/config.json", include_in_schema=False)
    def lab_config() -> dict:
        from datamodules.sensors import SENSORS

        return {"dev": settings.dev, "basemap_url": settings.basemap_url, "sensors": list(SENSORS)}

    app.mount("/lab/", LabFiles(directory=lab_dir(), html=True, policy=csp(settings)), name="lab")
