"""Hostile uploads for the security tests: files that try to make GDAL/OGR read another file or
fetch a URL, bombs that try to exhaust the server, and files cut short. Each is built in the
test (seeded, small on disk) exactly as an attacker would send it.

``canary_url`` is a loopback listener that must never see a request; ``canary_file`` is a
readable labels file outside every owner's folder whose class name must never come back.
"""

from __future__ import annotations

import io
import json
import sqlite3
import stat
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin


def zip_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A zip of ``members``; ``links`` are symbolic-link members (name → target)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def ogr_vrt(source: str, layer: str = "labels") -> bytes:
    return (
        f'<OGRVRTDataSource><OGRVRTLayer name="{layer}"><SrcDataSource>{source}'
        "</SrcDataSource></OGRVRTLayer></OGRVRTDataSource>"
    ).encode()


def gdalg(read: str) -> bytes:
    """A GDAL streamed-algorithm file (starts with '{' like GeoJSON) reading ``read``."""
    return json.dumps(
        {
            "type": "gdal_streamed_alg",
            "command_line": f"gdal vector pipeline ! read {read} ! write streamed_dataset "
            "--output-format=stream",
        }
    ).encode()


def shapefile_members(gdf: gpd.GeoDataFrame, folder: Path, stem: str = "fields") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.shp"
    gdf.to_file(path, driver="ESRI Shapefile")
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.stem == stem and p.suffix in (".shp", ".shx", ".dbf", ".prj", ".cpg")
    }


def boxes(bounds, crs, n: int, cls: str = "field", seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` small squares inside ``bounds`` (in ``crs``), one class."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = bounds
    side = (x1 - x0) / 40
    xs = rng.uniform(x0, x1 - side, n)
    ys = rng.uniform(y0, y1 - side, n)
    geoms = [shapely.box(x, y, x + side, y + side) for x, y in zip(xs, ys, strict=True)]
    return gpd.GeoDataFrame({"class_name": [cls] * n}, geometry=geoms, crs=crs)


def geopackage_with(path: Path, gdf: gpd.GeoDataFrame, *statements: str) -> Path:
    """A real GeoPackage of ``gdf`` with extra SQL run on it (views, forged schema rows)."""
    gdf.to_file(path, driver="GPKG", layer="labels")
    con = sqlite3.connect(path)
    try:
        for sql in statements:
            con.executescript(sql)
        con.commit()
    finally:
        con.close()
    return path


def sparse_tiff(path: Path, size: int) -> Path:
    """A tiled TIFF declaring ``size``² pixels that stores almost none (a few KB on disk)."""
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 4200000, 10, 10), tiled=True,
        blockxsize=512, blockysize=512, sparse_ok=True, nodata=255,
    ) as dst:  # fmt: skip
        dst.write(np.ones((1, 512, 512), dtype=np.uint8), window=((0, 512), (0, 512)))
    return path


def truncated(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def many_vertices(bounds, crs, n: int) -> gpd.GeoDataFrame:
    """One polygon (a circle) with ``n`` vertices inside ``bounds``."""
    x0, y0, x1, y1 = bounds
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.c_[cx + r * np.cos(t), cy + r * np.sin(t)]
    return gpd.GeoDataFrame({"class_name": ["field"]}, geometry=[shapely.Polygon(ring)], crs=crs)
