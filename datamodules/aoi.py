"""Areas of interest: GeoJSON (or a vector file) in; a CRS84 geometry, its area, and the output
grid of a composite out.

The grid is the AOI's UTM zone (or a CRS the user names) at the sensor's resolution, its edges
snapped to whole multiples of the resolution, so two requests over neighbouring or overlapping
areas land on the same pixel lattice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from .errors import UserError
from .imagery import Grid
from .stac import DEFAULT_MAX_AOI_KM2


class AoiError(UserError):
    """The AOI is not a usable polygon; the message says what is wrong."""


class AoiTooLargeError(AoiError):
    """The AOI is larger than the configured limit (``limit_km2``)."""

    def __init__(self, area_km2: float, limit_km2: float):
        self.area_km2, self.limit_km2 = area_km2, limit_km2
        super().__init__(
            f"the AOI covers {area_km2:,.1f} km², more than the limit of {limit_km2:,.0f} km². "
            "Split it into smaller AOIs (or raise the limit: --max-aoi-km2)."
        )


def parse_aoi(aoi):
    """A shapely (Multi)Polygon in CRS84 from a GeoJSON geometry, Feature or FeatureCollection
    (dict or text), a shapely geometry, or a vector file (any CRS; reprojected)."""
    from shapely.geometry import shape
    from shapely.ops import unary_union

    if isinstance(aoi, (str, Path)) and not str(aoi).lstrip().startswith("{"):
        return _read_file(Path(aoi))
    if isinstance(aoi, str):
        try:
            aoi = json.loads(aoi)
        except ValueError:
            raise AoiError(
                "the AOI is not valid JSON; give a GeoJSON geometry or Feature"
            ) from None
    if hasattr(aoi, "geom_type"):
        geom = aoi
    elif isinstance(aoi, dict):
        kind = aoi.get("type")
        try:
            if kind == "FeatureCollection":
                geom = unary_union([shape(f["geometry"]) for f in aoi.get("features", [])])
            elif kind == "Feature":
                geom = shape(aoi["geometry"])
            else:
                geom = shape(aoi)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AoiError(f"the AOI is not a GeoJSON geometry or Feature: {e}") from None
    else:
        raise AoiError("the AOI must be GeoJSON (a geometry, Feature or FeatureCollection)")
    return _check(geom)


def _read_file(path: Path):
    import geopandas as gpd

    if not path.is_file():
        raise AoiError(f"AOI file {path} does not exist")
    try:
        gdf = gpd.read_file(path)
    except Exception as e:
        raise AoiError(f"cannot read the AOI file {path}: {e}") from None
    if gdf.crs is None:
        raise AoiError(f"{path.name} has no CRS; GeoJSON is CRS84 (lon, lat) by definition")
    if len(gdf) == 0:
        raise AoiError(f"{path.name} holds no features")
    return _check(gdf.to_crs("OGC:CRS84").geometry.union_all())


def _check(geom):
    if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise AoiError(
            f"the AOI must be a non-empty Polygon or MultiPolygon (got {geom.geom_type})"
        )
    if not geom.is_valid:
        geom = geom.buffer(0)
    x0, y0, x1, y1 = geom.bounds
    if x0 < -180 or x1 > 180 or y0 < -90 or y1 > 90:
        raise AoiError(
            f"the AOI's coordinates ({x0:g}, {y0:g}, {x1:g}, {y1:g}) are not longitude/latitude; "
            "GeoJSON AOIs are CRS84 (RFC 7946)"
        )
    return geom


def area_km2(geom) -> float:
    """Geodesic area (WGS84 ellipsoid) of a CRS84 geometry, in km²."""
    from pyproj import Geod

    return abs(Geod(ellps="WGS84").geometry_area_perimeter(geom)[0]) / 1e6


def check_area(geom, limit_km2: float | None) -> float:
    km2 = area_km2(geom)
    if limit_km2 is not None and km2 > limit_km2:
        raise AoiTooLargeError(km2, limit_km2)
    return km2


def utm_crs(geom) -> CRS:
    """The UTM zone (WGS84) of the AOI's centroid."""
    c = geom.centroid
    zone = min(int((c.x + 180) // 6) + 1, 60)
    return CRS.from_epsg((32600 if c.y >= 0 else 32700) + zone)


def grid_for(geom, resolution: float, crs=None, margin_px: int = 0) -> Grid:
    """The output grid covering the AOI: its bounds in ``crs`` (default: the AOI's UTM zone),
    snapped outward to multiples of ``resolution``, widened by ``margin_px`` on each side."""
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    if resolution <= 0:
        raise AoiError(f"the resolution must be positive, not {resolution}")
    try:
        dst = CRS.from_user_input(crs) if crs else utm_crs(geom)
    except rasterio.errors.CRSError as e:
        raise AoiError(f"unknown CRS {crs!r}: {e}. Give e.g. EPSG:32633") from None
    projected = shape(transform_geom("OGC:CRS84", dst, mapping(geom)))
    x0, y0, x1, y1 = projected.bounds
    r = resolution
    left = (math.floor(x0 / r) - margin_px) * r
    bottom = (math.floor(y0 / r) - margin_px) * r
    right = (math.ceil(x1 / r) + margin_px) * r
    top = (math.ceil(y1 / r) + margin_px) * r
    width, height = round((right - left) / r), round((top - bottom) / r)
    return Grid(dst, from_origin(left, top, r, r), max(width, 1), max(height, 1))


__all__ = [
    "AoiError",
    "AoiTooLargeError",
    "DEFAULT_MAX_AOI_KM2",
    "area_km2",
    "check_area",
    "grid_for",
    "parse_aoi",
    "utm_crs",
]
