"""Web-map tiles of geotune's rasters with rio-tiler: imagery as RGB under a stretch, class
rasters in their class colours, confidence on a colour ramp. Web Mercator XYZ tiles, PNG.

Only files the server chose are opened (an uploaded scene, a dataset's image or mask, a
prediction's inputs and outputs): the routes map an owner-checked id and a file name from a
fixed list to a path, so no path or URL ever comes from a client; files are opened as
:mod:`serve.untrusted` opens uploads (the GeoTIFF driver only, no side-car files). Pixels are read with
nearest-neighbour resampling, so a class tile shows the classes the COG holds, each source pixel
where it lies on the globe, and nodata is transparent.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling

from datamodules.errors import UserError
from datamodules.imagery import bound_block_cache

from .untrusted import open_raster

TILE = 256
# what a person expects to see, in the sensor's physical units: reflectance 0-0.3 (natural
# colour), 8-bit 0-255, backscatter -25-0 dB; turned into stored values with the sensor's scale
DISPLAY_RANGE = {
    "sentinel-2-l1c": (0.0, 0.3),
    "sentinel-2-l2a": (0.0, 0.3),
    "landsat-c2-l1": (0.0, 0.3),
    "landsat-c2-l2": (0.0, 0.3),
    "hls": (0.0, 0.3),
    "sentinel-1-rtc": (-25.0, 0.0),
    "naip": (0.0, 255.0),
    "rgb": (0.0, 255.0),
}


class TileError(UserError):
    """A tile request that cannot be answered as asked (unknown band, bad stretch)."""


@contextmanager
def reader(path: Path, nodata: float | None = None):
    """A rio-tiler Reader over a GeoTIFF the server wrote or accepted (GTiff driver only);
    ``nodata`` for files that do not declare the value their sensor uses."""
    from rio_tiler.io import Reader

    # a stored record holds NaN as "nan" (JSON has no NaN)
    options = {"nodata": float(nodata)} if nodata is not None else {}
    bound_block_cache()
    with open_raster(path) as src:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no overviews" is a speed note, not for clients
            with Reader(None, dataset=src, options=options) as r:
                yield r


def below_minzoom(path: Path, z: int) -> bool:
    """Whether zoom ``z`` is below the raster's TileJSON ``minzoom``: such a tile would resample
    the whole raster into a few pixels (minutes of CPU for a z0 tile of a 768² scene without
    overviews), and a map asking the TileJSON never requests it; it is answered empty."""
    return z < _minzoom(str(path), path.stat().st_mtime)


@lru_cache(maxsize=256)
def _minzoom(path: str, mtime: float) -> int:
    with reader(Path(path)) as r:
        return int(r.minzoom)


@lru_cache(maxsize=1)
def empty_png() -> bytes:
    """A fully transparent tile, the answer for tiles outside the raster."""
    from rio_tiler.utils import render

    return render(np.zeros((1, TILE, TILE), np.uint8), np.zeros((TILE, TILE), np.uint8))


def rgb_bands(bands: list[str]) -> list[str]:
    """The bands shown as red, green, blue by default."""
    if {"red", "green", "blue"} <= set(bands):
        return ["red", "green", "blue"]
    if {"vv", "vh"} <= set(bands):
        return ["vv", "vh", "vv"]
    return (bands[:3] + bands[:1] * 2)[:3] if len(bands) < 3 else bands[:3]


def band_indexes(all_bands: list[str], wanted: list[str]) -> tuple[int, ...]:
    missing = [b for b in wanted if b not in all_bands]
    if missing or len(wanted) not in (1, 3):
        raise TileError(
            f"bands must be 1 or 3 of this raster's bands ({', '.join(all_bands)}); got "
            f"{','.join(wanted)}"
        )
    return tuple(all_bands.index(b) + 1 for b in wanted)


def sensor_stretch(sensor: str | None) -> tuple[float, float] | None:
    """The default stretch in stored values for a sensor of the sensor table, or None."""
    from datamodules.sensors import SENSORS

    if sensor not in DISPLAY_RANGE:
        return None
    s = SENSORS[sensor]
    lo, hi = DISPLAY_RANGE[sensor]
    return (lo - s.offset) / s.scale, (hi - s.offset) / s.scale


@lru_cache(maxsize=64)
def _percentiles(
    path: str, mtime: float, indexes: tuple[int, ...], nodata: float | None
) -> tuple[float, float]:
    with open_raster(Path(path)) as src:
        f = max(1, max(src.width, src.height) // 512)
        shape = (len(indexes), max(1, src.height // f), max(1, src.width // f))
        data = src.read(list(indexes), out_shape=shape, masked=True, resampling=Resampling.nearest)
    values = data.compressed()
    if nodata is not None:
        values = values[values != nodata]
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def default_stretch(
    path: Path, indexes: tuple[int, ...], sensor: str | None, nodata: float | None = None
) -> dict:
    """The stretch a layer starts with: the sensor's display range, else the 2-98 % range of
    the shown bands (from a decimated read)."""
    rng = sensor_stretch(sensor)
    if rng is not None:
        lo, hi = DISPLAY_RANGE[sensor]
        return {
            "vmin": round(rng[0], 4),
            "vmax": round(rng[1], 4),
            "source": f"{sensor}: {lo:g} to {hi:g} in physical units",
        }
    lo, hi = _percentiles(str(path), path.stat().st_mtime, indexes, nodata)
    return {"vmin": round(lo, 4), "vmax": round(hi, 4), "source": "2-98 % of the pixels"}


def render_rgb(
    path: Path,
    z: int,
    x: int,
    y: int,
    indexes: tuple[int, ...],
    vmin: float,
    vmax: float,
    nodata: float | None = None,
) -> bytes:
    """Imagery: the bands at ``indexes`` stretched linearly from [vmin, vmax] to 0-255."""
    from rio_tiler.errors import TileOutsideBounds

    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise TileError(f"the stretch needs finite vmin < vmax; got vmin={vmin}, vmax={vmax}")
    with reader(path, nodata) as r:
        try:
            img = r.tile(x, y, z, tilesize=TILE, indexes=indexes, resampling_method="nearest")
        except TileOutsideBounds:
            return empty_png()
    img.rescale(in_range=((vmin, vmax),) * img.count)
    return img.render(img_format="PNG")


def render_classes(
    path: Path,
    z: int,
    x: int,
    y: int,
    colors: dict[int, str] | None = None,
    confidence: Path | None = None,
    threshold: float | None = None,
) -> bytes:
    """A class raster in its class colours (``colors`` by id, else the file's own colour
    table); with ``threshold`` (0-1), pixels whose confidence is below it are transparent."""
    from rio_tiler.errors import TileOutsideBounds

    with reader(path) as r:
        try:
            img = r.tile(x, y, z, tilesize=TILE, indexes=(1,), resampling_method="nearest")
        except TileOutsideBounds:
            return empty_png()
        cmap = {k: _rgba(v) for k, v in colors.items()} if colors else dict(r.colormap or {})
    if threshold is not None and confidence is not None:
        with reader(confidence) as c:
            conf = c.tile(x, y, z, tilesize=TILE, indexes=(1,), resampling_method="nearest")
        low = conf.array.mask[0] | (conf.array.data[0] < round(threshold * 100))
        img.array.mask = img.array.mask | low[None]
    return img.render(img_format="PNG", colormap=cmap)


def render_confidence(path: Path, z: int, x: int, y: int) -> bytes:
    """A confidence raster (0-100 %, 255 nodata) on the viridis ramp."""
    from rio_tiler.colormap import cmap as colormaps
    from rio_tiler.errors import TileOutsideBounds

    ramp = colormaps.get("viridis")
    with reader(path) as r:
        try:
            img = r.tile(x, y, z, tilesize=TILE, indexes=(1,), resampling_method="nearest")
        except TileOutsideBounds:
            return empty_png()
    return img.render(img_format="PNG", colormap={v: ramp[round(v * 2.55)] for v in range(101)})


def file_colors(path: Path) -> dict[int, str]:
    """The colour table of a class raster's first band, as #rrggbb by value."""
    with open_raster(path) as src:
        try:
            table = src.colormap(1)
        except ValueError:  # no colour table
            return {}
    return {int(k): "#{:02x}{:02x}{:02x}".format(*v[:3]) for k, v in table.items()}


def _rgba(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


def tilejson(path: Path, template: str, name: str, **extra) -> dict:
    """A TileJSON 3.0 document for the raster: tile URL template, lon/lat bounds, zooms."""
    from rasterio.crs import CRS

    with reader(path) as r:
        w, s, e, n = r.get_geographic_bounds(CRS.from_epsg(4326))
        minzoom, maxzoom = r.minzoom, r.maxzoom
    return {
        "tilejson": "3.0.0",
        "name": name,
        "tiles": [template],
        "bounds": [round(v, 7) for v in (w, s, e, n)],
        "center": [round((w + e) / 2, 7), round((s + n) / 2, 7), maxzoom],
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        **extra,
    }
