"""Uploaded scenes: a GeoTIFF a person wants to look at (the Lab's base layer), label on, or
predict, kept until its owner deletes it.

``$GEOTUNE_HOME/serve/scenes/<id>/`` holds ``scene.tif`` (the upload, under a name the server
chose; overviews are added to large files so zoomed-out tiles stay cheap) and ``scene.json``
(owner, the client's file name, bands, sensor, nodata, CRS, size, lon/lat bounds, dates).
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds

from datamodules.imagery import ImageryError, open_scenes

from .jobs import now, read_json, write_json
from .untrusted import OPEN_ENV, RASTER_DRIVERS, open_raster

SCENE_ID_RE = re.compile(r"^scn-[0-9a-f]{12}$")
OVERVIEWS_ABOVE = 1024  # px on the long side: smaller scenes are read whole for a tile


class SceneStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def new(self) -> tuple[str, Path]:
        scene_id = f"scn-{secrets.token_hex(6)}"
        folder = self.root / scene_id
        folder.mkdir(parents=True)
        return scene_id, folder

    def get(self, scene_id: str, owner: str) -> dict | None:
        """``owner``'s scene record, or None (anyone else's scene is no scene)."""
        if not SCENE_ID_RE.match(scene_id or ""):
            return None
        rec = read_json(self.root / scene_id / "scene.json")
        return rec if rec is not None and rec.get("owner") == owner else None

    def path(self, scene_id: str) -> Path:
        return self.root / scene_id / "scene.tif"

    def all(self, owner: str) -> list[dict]:
        if not self.root.is_dir():
            return []
        recs = [self.get(p.name, owner) for p in sorted(self.root.iterdir())]
        return sorted((r for r in recs if r), key=lambda r: r["created"], reverse=True)

    def delete(self, scene_id: str) -> None:
        shutil.rmtree(self.root / scene_id, ignore_errors=True)


def describe(path: Path, bands: list[str] | None, sensor: str | None) -> dict:
    """What the Lab and the tiles need to know about a scene; 422 (ImageryError) when it has no
    CRS or its bands do not fit the sensor. Unnamed bands are called band1, band2, ..."""
    try:
        scene = open_scenes([path], bands=bands, sensor=sensor)[0]
        names, named = scene.bands, True
    except ImageryError as e:
        if "cannot tell the bands" not in str(e):
            raise
        with open_raster(path) as src:
            names, named = [f"band{i}" for i in range(1, src.count + 1)], False
        scene = open_scenes([path], bands=names)[0]
    g = scene.grid
    w, s, e, n = transform_bounds(g.crs, "EPSG:4326", *g.bounds, densify_pts=21)
    return {
        "bands": names,
        "bands_named": named,
        "sensor": sensor,
        "nodata": scene.nodata_json,
        "dtype": scene.dtype,
        "crs": g.crs.to_string(),
        "resolution": list(g.res),
        "shape": [g.height, g.width],
        "bounds": [round(v, 7) for v in (w, s, e, n)],
        "date": scene.date.isoformat() if scene.date else None,
    }


def add_overviews(path: Path) -> None:
    """Overviews inside the stored copy (averaged), so zoomed-out tiles read few pixels."""
    with rasterio.Env(**OPEN_ENV), rasterio.open(path, driver=RASTER_DRIVERS[0]) as src:
        if max(src.width, src.height) <= OVERVIEWS_ABOVE or src.overviews(1):
            return  # small, or a COG with its own overviews
    # a COG without overviews is ours to change (GDAL refuses to break its layout unless told)
    with (
        rasterio.Env(**OPEN_ENV),
        rasterio.open(path, "r+", driver=RASTER_DRIVERS[0], IGNORE_COG_LAYOUT_BREAK="YES") as dst,
    ):
        factors, f = [], 2
        while max(dst.width, dst.height) / f >= 256:
            factors.append(f)
            f *= 2
        dst.build_overviews(factors, Resampling.average)


def record(scene_id: str, owner: str, shown: str, info: dict) -> dict:
    return {"id": scene_id, "owner": owner, "name": shown, "created": now(), **info}


def save_record(folder: Path, rec: dict) -> None:
    write_json(folder / "scene.json", rec)
