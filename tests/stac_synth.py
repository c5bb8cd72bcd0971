"""Test helpers for the STAC path: small Sentinel-2 L2A-like COGs and STAC items (eo, raster and
projection extensions; Earth Search's asset keys) written to a temp dir, a static catalog over
them, and real servers on loopback ports: an asset server with HTTP range requests (Starlette's
FileResponse under uvicorn) that logs every request and can fail, stall or demand credentials,
and a STAC API (stac-fastapi-geoparquet over a stac-geoparquet file)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from synth import SPECTRA, class_map

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 4_200_000.0)  # lon 15.0, lat 37.9: UTM zone 33N
SIZE = 256  # px at 10 m: the truth grid
BANDS = {"blue": 0, "green": 1, "red": 2, "nir08": 3}  # index into synth.SPECTRA
RES = {"blue": 10, "green": 10, "red": 10, "nir08": 20, "scl": 20}  # as Sentinel-2 delivers them
ASSET_KEYS = {"blue": "B02", "green": "B03", "red": "B04", "nir08": "B8A", "scl": "SCL"}
CLOUD = (slice(64, 160), slice(40, 136))  # rows, cols (10 m px) under a cloud on the cloudy date
EXT = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
]


def truth(size: int = SIZE) -> np.ndarray:
    """Surface reflectance x 10000 (old-baseline values), [4, size, size] on the 10 m grid."""
    return SPECTRA[class_map(size, 3)].transpose(2, 0, 1)


@dataclass
class Scene:
    id: str
    when: datetime
    baseline: str
    cloud_cover: float
    offset_in_values: bool  # the -1000 offset still in the stored values
    flag_applied: bool | None = None  # earthsearch:boa_offset_applied
    cloudy: bool = False
    cols: tuple[int, int] = (0, SIZE)  # the tile's extent in 10 m px columns
    width: int = SIZE  # 10 m px; wider than SIZE: the scene reaches past the AOI
    seed: int = 0
    platform: str = "sentinel-2a"
    extra: dict = field(default_factory=dict)


def scenes() -> list[Scene]:
    return [
        # baseline 03.00: stored values are reflectance x 10000
        Scene("S2A_33SVB_20210610_0_L2A", datetime(2021, 6, 10, 10, tzinfo=UTC), "03.00", 3.0,
              False, False, seed=1),
        # baseline 04.00, one overpass cut into two tiles, a cloud over the middle; the offset
        # is still in the values (as ESA delivers them)
        Scene("S2B_33SVB_20220615_0_L2A", datetime(2022, 6, 15, 10, tzinfo=UTC), "04.00", 35.0,
              True, None, cloudy=True, cols=(0, 128), seed=2, platform="sentinel-2b"),
        Scene("S2B_33SWB_20220615_0_L2A", datetime(2022, 6, 15, 10, 0, 3, tzinfo=UTC), "04.00",
              30.0, True, None, cloudy=True, cols=(128, SIZE), seed=3, platform="sentinel-2b"),
        # baseline 05.09 with the offset already subtracted by the provider (Earth Search's flag);
        # the scene is twice as wide as the AOI's area
        Scene("S2A_33SVB_20230620_0_L2A", datetime(2023, 6, 20, 10, tzinfo=UTC), "05.09", 8.0,
              False, True, width=512, seed=4),
        # too cloudy for max_cloud=40, and outside the date range: never used
        Scene("S2A_33SVB_20220701_0_L2A", datetime(2022, 7, 1, 10, tzinfo=UTC), "04.00", 95.0,
              True, None, seed=5),
        Scene("S2A_33SVB_20240610_0_L2A", datetime(2024, 6, 10, 10, tzinfo=UTC), "05.10", 1.0,
              True, None, seed=6),
    ]  # fmt: skip


def write_cog(path: Path, data: np.ndarray, transform, nodata, blocksize: int) -> None:
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(
        tmp, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
        dtype=data.dtype, crs=CRS, transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data, 1)
    rio_copy(tmp, path, driver="COG", blocksize=blocksize, compress="DEFLATE", overviews="NONE")
    tmp.unlink()


def write_scene(folder: Path, s: Scene, blocksize: int = 128) -> dict[str, Path]:
    """The scene's COGs: 4 bands + SCL at their native resolutions; returns key → path."""
    rng = np.random.default_rng(s.seed)
    t = truth(s.width) if s.width != SIZE else truth()
    if s.width != SIZE:  # the same ground: the truth grid is the left part of the wider scene
        t[:, :SIZE, :SIZE] = truth()
        t = t[:, :SIZE, :]
    c0, c1 = s.cols
    out = {}
    d = folder / s.id
    d.mkdir(parents=True, exist_ok=True)
    for name, res in RES.items():
        f = res // 10
        h, w = SIZE // f, s.width // f
        if name == "scl":
            arr = np.full((h, w), 4, dtype=np.uint8)  # vegetation: clear
            if s.cloudy:
                arr[
                    CLOUD[0].start // f : CLOUD[0].stop // f,
                    CLOUD[1].start // f : CLOUD[1].stop // f,
                ] = 9
            nodata = 0
        else:
            base = t[BANDS[name]].reshape(h, f, w, f).mean((1, 3))
            vals = base + rng.normal(0, 40, base.shape) + (1000 if s.offset_in_values else 0)
            if s.cloudy:
                cl = (slice(CLOUD[0].start // f, CLOUD[0].stop // f),
                      slice(CLOUD[1].start // f, CLOUD[1].stop // f))  # fmt: skip
                vals[cl] = 9000 + (1000 if s.offset_in_values else 0)
            arr = np.clip(vals, 1, 30000).astype(np.uint16)
            nodata = 0
        arr[:, : c0 // f] = 0  # outside this tile: no data
        arr[:, c1 // f if c1 < SIZE else w :] = 0
        path = d / f"{ASSET_KEYS[name]}.tif"
        write_cog(path, arr, from_origin(*ORIGIN, res, res), nodata, blocksize)
        out[name] = path
    return out


def footprint(s: Scene) -> dict:
    x0, x1 = ORIGIN[0] + s.cols[0] * 10, ORIGIN[0] + min(s.cols[1], s.width) * 10
    if s.width != SIZE:
        x1 = ORIGIN[0] + s.width * 10
    y1, y0 = ORIGIN[1], ORIGIN[1] - SIZE * 10
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return transform_geom(CRS, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def item_dict(s: Scene, hrefs: dict[str, str]) -> dict:
    geom = footprint(s)
    xs = [p[0] for p in geom["coordinates"][0]]
    ys = [p[1] for p in geom["coordinates"][0]]
    props = {
        "datetime": s.when.isoformat().replace("+00:00", "Z"),
        "platform": s.platform, "constellation": "sentinel-2", "instruments": ["msi"],
        "eo:cloud_cover": s.cloud_cover, "s2:processing_baseline": s.baseline,
        "proj:epsg": 32633, "mgrs:utm_zone": 33, **s.extra,
    }  # fmt: skip
    if s.flag_applied is not None:
        props["earthsearch:boa_offset_applied"] = s.flag_applied
    assets = {}
    for name, href in hrefs.items():
        res = RES[name]
        asset = {
            "href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"] if name != "scl" else ["data", "cloud", "snow-ice"],
            "proj:shape": [SIZE // (res // 10), s.width // (res // 10)],
            "proj:transform": [res, 0, ORIGIN[0], 0, -res, ORIGIN[1]],
            "raster:bands": [{"nodata": 0, "data_type": "uint16" if name != "scl" else "uint8",
                              "spatial_resolution": res}
                             | ({"scale": 0.0001, "offset": -0.1} if name != "scl" else {})],
        }  # fmt: skip
        if name != "scl":
            asset["eo:bands"] = [{"name": ASSET_KEYS[name], "common_name": name}]
        assets[name] = asset
    return {
        "type": "Feature", "stac_version": "1.1.0", "stac_extensions": EXT, "id": s.id,
        "collection": "sentinel-2-l2a", "geometry": geom,
        "bbox": [min(xs), min(ys), max(xs), max(ys)], "properties": props, "links": [],
        "assets": assets,
    }  # fmt: skip


def write_items(folder: Path, base_url: str | None = None) -> list[dict]:
    """COGs for every scene under ``folder/assets``; items whose hrefs are ``base_url/...``
    (served over HTTP) or absolute local paths."""
    items = []
    root = folder / "assets"
    for s in scenes():
        paths = write_scene(root, s)
        hrefs = {
            k: (f"{base_url}/{p.relative_to(root).as_posix()}" if base_url else str(p))
            for k, p in paths.items()
        }
        items.append(item_dict(s, hrefs))
    return items


def write_static_catalog(folder: Path, items: list[dict]) -> Path:
    import pystac

    cat = pystac.Catalog("synthetic", "Synthetic Sentinel-2 L2A scenes for tests")
    bbox = [min(i["bbox"][0] for i in items), min(i["bbox"][1] for i in items),
            max(i["bbox"][2] for i in items), max(i["bbox"][3] for i in items)]  # fmt: skip
    times = sorted(datetime.fromisoformat(i["properties"]["datetime"]) for i in items)
    col = pystac.Collection(
        "sentinel-2-l2a", "Sentinel-2 L2A (synthetic)",
        pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times[0], times[-1]]])),
    )  # fmt: skip
    cat.add_child(col)
    for d in items:
        col.add_item(pystac.Item.from_dict(d))
    cat.normalize_hrefs(str(folder / "catalog"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog" / "catalog.json"


def aoi(cols=(24, 216), rows=(24, 216)) -> dict:
    """A GeoJSON Feature (CRS84) over part of the truth grid, given in 10 m px."""
    x0, x1 = ORIGIN[0] + cols[0] * 10, ORIGIN[0] + cols[1] * 10
    y0, y1 = ORIGIN[1] - rows[1] * 10, ORIGIN[1] - rows[0] * 10
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    geom = transform_geom(CRS, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    return {"type": "Feature", "properties": {}, "geometry": geom}


# -- servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not th.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(10)


class AssetServer:
    """Files under ``root`` with range requests; logs (method, path, range, status). Knobs:
    ``fail[path] = n`` answers the next n requests with 503; ``stall[path] = s`` waits s seconds;
    files under ``/pc/`` need the query ``sig=<token>`` (from ``/api/sas/v1/token/<collection>``),
    files under ``/earthdata/`` need ``Authorization: Bearer <bearer>``."""

    def __init__(self, root: Path, token: str = "sig=let-me-in", bearer: str = "edl-token"):
        self.root, self.token, self.bearer = root, token, bearer
        self.log: list[tuple[str, str, str | None, int]] = []
        self.fail: dict[str, int] = {}
        self.stall: dict[str, float] = {}
        self.token_requests: list[str] = []

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        async def token(request):
            self.token_requests.append(request.path_params["collection"])
            expiry = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            return JSONResponse({"msft:expiry": expiry, "token": self.token})

        files = StaticFiles(directory=self.root)

        async def guarded(scope, receive, send):
            path = scope["path"]
            headers = dict(scope["headers"])
            query = scope.get("query_string", b"").decode()
            status = None
            if self.fail.get(path, 0) > 0:
                self.fail[path] -= 1
                status = 503
            elif path.startswith("/pc/") and self.token not in query:
                status = 403
            elif (
                path.startswith("/earthdata/")
                and headers.get(b"authorization", b"").decode() != f"Bearer {self.bearer}"
            ):
                status = 401
            rng = headers.get(b"range", b"").decode() or None
            if path in self.stall:
                await asyncio.sleep(self.stall[path])
            self.log.append((scope["method"], path, rng, status or 200))
            if status:
                await Response(status_code=status)(scope, receive, send)
                return
            for prefix in ("/pc/", "/earthdata/"):
                if path.startswith(prefix):
                    scope = dict(scope, path=path[len(prefix) - 1 :])
            await files(scope, receive, send)

        return Starlette(
            routes=[Route("/api/sas/v1/token/{collection}", token), Mount("/", app=guarded)]
        )

    def ranges(self, path: str) -> list[tuple[int, int]]:
        out = []
        for _m, p, rng, status in self.log:
            if p == path and rng and status == 200:
                for part in rng.removeprefix("bytes=").split(","):
                    a, b = part.split("-")
                    out.append((int(a), int(b)))
        return out


def stac_api_app(folder: Path, items: list[dict]):
    """stac-fastapi-geoparquet over ``items``, one stac-geoparquet file per collection (the
    server answers a file's rows as the collection it was asked for), DuckDB's spatial
    extension from the rustac-duckdb-extensions wheel (nothing downloaded)."""
    import rustac
    import rustac_duckdb_extensions
    from stac_fastapi.geoparquet import Settings

    by_collection: dict[str, list[dict]] = {}
    for item in items:
        by_collection.setdefault(item["collection"], []).append(item)
    paths = [folder / f"items-{c}.parquet" for c in by_collection]

    async def write():
        for path, group in zip(paths, by_collection.values(), strict=True):
            await rustac.write(str(path), group)

    asyncio.run(write())
    client = rustac.DuckdbClient(
        extension_directory=rustac_duckdb_extensions.extension_directory(),
        install_extensions=False,
    )
    settings = Settings(
        stac_fastapi_landing_id="geotune-test",
        stac_fastapi_title="geotune test catalog",
        stac_fastapi_description="Synthetic Sentinel-2 L2A items",
        stac_fastapi_geoparquet_href=str(paths[0]),
    )
    return _geoparquet_app(settings, client, paths)


def _geoparquet_app(settings, client, paths):
    """``stac_fastapi.geoparquet.api.create`` as written, but for two things this stack's
    newer FastAPI/Starlette need: the app gets its ``extra`` (settings, collections, DuckDB
    client, read by the package's lifespan) as an attribute, since FastAPI no longer takes
    arbitrary keyword arguments; and stac-fastapi's CORS middleware, which passes Starlette 1.x
    its arguments in an old positional order, is left out (no browser calls this server)."""
    from fastapi import FastAPI
    from stac_fastapi.api.app import StacApi
    from stac_fastapi.api.middleware import ProxyHeaderMiddleware
    from stac_fastapi.geoparquet import api as gp
    from stac_fastapi.geoparquet.client import Client
    from stac_fastapi.geoparquet.models import (
        EXTENSIONS,
        GetSearchRequestModel,
        ItemsGetRequestModel,
        PostSearchRequestModel,
    )
    from starlette.middleware import Middleware

    collections = [c for p in paths for c in gp.collections_from_geoparquet_href(str(p), client)]
    app = FastAPI(
        lifespan=gp.lifespan, openapi_url=settings.openapi_url, docs_url=settings.docs_url
    )
    app.extra = {"settings": settings, "collections": collections, "duckdb_client": client}
    api = StacApi(
        settings=settings,
        client=Client(),
        app=app,
        search_get_request_model=GetSearchRequestModel,
        search_post_request_model=PostSearchRequestModel,
        items_get_request_model=ItemsGetRequestModel,
        extensions=EXTENSIONS,
        middlewares=[Middleware(ProxyHeaderMiddleware)],
    )
    return api.app
