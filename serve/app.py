"""The FastAPI app: ``create_app(settings)`` wires routes, auth, errors, jobs and the docs page.

The OpenAPI page at ``/docs`` is served entirely from this server: Swagger UI's JavaScript and
CSS come from the ``swagger-ui-bundle-v2`` package (``/static/swagger-ui/``), never from a
CDN, so it works offline and behind firewalls.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from . import errors
from .auth import KeyGate, SameOrigin
from .context import Context
from .downloads import HeadAsGet
from .lab import mount_lab
from .routes import (
    backbones,
    benchmarks,
    datasets,
    embeddings,
    geospatial,
    job_metrics,
    jobs,
    models,
    predict,
    scenes,
    suggestions,
    tiles,
)
from .settings import Settings, serve_dir
from .uploads import BodyLimit

DESCRIPTION = """Fine-tune Clay, Prithvi-EO and ResNet on your labels and predict with every
registered model. Authorize with your API key (`Authorization: Bearer <key>`). Every error is
JSON `{"error", "detail"}`."""


def swagger_assets() -> str:
    from swagger_ui_bundle import swagger_ui_path

    return str(swagger_ui_path)


def file_arrays_as_binary(app: FastAPI) -> dict:
    """The OpenAPI document, with lists of uploaded files as ``format: binary`` items: Swagger
    UI 5 shows a file chooser for those, but a text box for OpenAPI 3.1's ``contentMediaType``
    items, so several files (band files, dates) could not be uploaded from /docs."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for component in schema.get("components", {}).get("schemas", {}).values():
            for prop in component.get("properties", {}).values():
                if prop.get("type") == "array" and "contentMediaType" in prop.get("items", {}):
                    prop["items"] = {"type": "string", "format": "binary"}
        app.openapi_schema = schema
    return app.openapi_schema


def _gates(app: FastAPI, settings: Settings) -> None:
    """What every request passes before a route (the last added runs first): other sites'
    pages and foreign host names, then the API key, then the body's size; HEAD is GET without the
    body before any of them."""
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(KeyGate, settings=settings, keys_factory=lambda: app.state.ctx.keys)
    app.add_middleware(SameOrigin, settings=settings)
    app.add_middleware(HeadAsGet)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx = Context(settings)
        app.state.ctx = ctx
        await run_in_threadpool(ctx.start)
        await run_in_threadpool(ctx.clean_predictions)
        try:
            yield
        finally:
            await run_in_threadpool(ctx.stop)

    app = FastAPI(
        title="geotune",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    _gates(app, settings)
    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_assets()), name="swagger-ui")
    routes = (datasets, jobs, job_metrics, models, backbones, predict, geospatial, scenes, tiles)
    for module in (*routes, embeddings, suggestions, benchmarks):
        app.include_router(module.router)
    app.openapi = lambda: file_arrays_as_binary(app)
    mount_lab(app, settings)

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="geotune API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    # health answers on the event loop and readiness on threads of its own, so neither waits
    # behind requests that hold the shared worker threads
    ready_threads = anyio.CapacityLimiter(2)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Ready: MLflow store, storage and job runner")
    async def readyz() -> JSONResponse:
        return await anyio.to_thread.run_sync(readiness, limiter=ready_threads)

    def readiness() -> JSONResponse:
        ctx: Context = app.state.ctx
        checks = {}
        try:
            ctx.client().search_registered_models(max_results=1)
            checks["mlflow"] = "ok"
        except Exception as e:  # the store is down or unreachable
            checks["mlflow"] = f"unreachable: {e}"
        probe = serve_dir() / ".ready-probe"
        try:
            probe.write_text("ok")
            probe.unlink()
            checks["storage"] = "ok"
        except OSError as e:
            checks["storage"] = f"not writable: {e}"
        checks["jobs"] = "ok" if ctx.scheduler.alive() else "the job runner is not running"
        bad = {k: v for k, v in checks.items() if v != "ok"}
        if bad:
            detail = "; ".join(f"{k}: {v}" for k, v in bad.items())
            return JSONResponse(
                errors.error_body("not_ready", f"not ready: {detail}", checks=checks), 503
            )
        return JSONResponse({"status": "ready", "checks": checks})

    return app
