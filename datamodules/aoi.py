"""Areas of interest: GeoJSON (or a vector file) in; a checked CRS84 geometry, its area on the
ellipsoid, and the output grid of a composite out.

GeoJSON is read as RFC 7946 says: positions are longitude, latitude (CRS84) and the lines
between them are straight in longitude/latitude (a box's top edge is a parallel, not a great
circle). Every computation follows that: areas are taken in the WGS84 cylindrical equal-area
projection (EPSG:6933, exact on the ellipsoid) after densifying the edges, and an AOI is
densified before it is projected. A geometry that crosses the antimeridian must be cut at ±180°
into a MultiPolygon (RFC 7946 §3.1.9); its parts are then placed in one local zone.

The grid is the items' CRS, the AOI's UTM zone (UPS near the poles) or a CRS the user names,
with pixels of the resolution in metres on the ground (converted to the CRS's units at the AOI's
centre where the CRS is not true to scale there), its edges on the lattice of an ``anchor``: the
source's origin modulo the pixel size, so that a composite in the source's CRS and resolution
sits on the source's own pixels.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from .errors import UserError
from .imagery import Grid
from .stac import DEFAULT_MAX_AOI_KM2

MAX_VERTICES = 100_000  # an AOI is a few polygons drawn or traced, not a land-cover map
EXTENT_FACTOR = 4  # the AOI's bounding box may cover at most this times the area limit
SCALE_TOLERANCE = 0.01  # a CRS within 1% of true scale at the centre takes metres as its units
EQUAL_AREA = "EPSG:6933"  # WGS84 cylindrical equal-area: areas on the ellipsoid


class AoiError(UserError):
    """The AOI is not a usable polygon; the message says what is wrong."""


class AoiTooLargeError(AoiError):
    """The AOI is larger than the configured limit (``limit_km2``)."""

    def __init__(
        self,
        area_km2: float,
        limit_km2: float,
        what: str = "covers",
        hint: str = "",
        fix: str = " (or raise the limit: --max-aoi-km2)",
    ):
        self.area_km2, self.limit_km2 = area_km2, limit_km2
        super().__init__(
            f"the AOI {what} {area_km2:,.1f} km², more than the limit of {limit_km2:,.0f} km². "
            f"Split it into smaller AOIs{fix}.{hint}"
        )


# -- parsing and checks ---------------------------------------------------------------------------
def parse_aoi(aoi):
    """A valid shapely (Multi)Polygon in CRS84 from a GeoJSON geometry, Feature or
    FeatureCollection (dict or text), a shapely geometry, or a vector file (any CRS; reprojected).
    Anything else, an invalid or non-finite geometry, coordinates outside longitude/latitude or
    more than ``MAX_VERTICES`` vertices is an :class:`AoiError` that names the feature."""
    from shapely.geometry import shape

    if isinstance(aoi, (str, Path)) and not str(aoi).lstrip().startswith("{"):
        return _read_file(Path(aoi))
    if isinstance(aoi, str):
        try:
            aoi = json.loads(aoi)
        except ValueError:
            raise AoiError(
                "the AOI is not valid JSON; give a GeoJSON geometry, Feature or FeatureCollection"
            ) from None
    if hasattr(aoi, "geom_type"):
        return _checked_union([aoi], ["the AOI"])
    if not isinstance(aoi, dict):
        raise AoiError("the AOI must be GeoJSON (a geometry, Feature or FeatureCollection)")
    kind = aoi.get("type")
    if kind == "FeatureCollection":
        features = aoi.get("features")
        if not isinstance(features, list) or not features:
            raise AoiError("the AOI FeatureCollection holds no features")
        raw = [f.get("geometry") if isinstance(f, dict) else None for f in features]
        names = [f"feature {i}" for i in range(len(raw))]
    elif kind == "Feature":
        raw, names = [aoi.get("geometry")], ["the AOI Feature"]
    else:
        raw, names = [aoi], ["the AOI"]
    geoms = []
    for g, name in zip(raw, names, strict=True):
        if not isinstance(g, dict):
            raise AoiError(f"{name} has no GeoJSON geometry")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # NaN positions: refused below
                geoms.append(shape(g))
        except Exception as e:  # shapely: bad nesting, too few positions, non-numbers
            raise AoiError(f"{name} is not a GeoJSON Polygon or MultiPolygon: {e}") from None
    return _checked_union(geoms, names)


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
    geoms = list(gdf.to_crs("OGC:CRS84").geometry)
    names = [f"feature {i} of {path.name}" for i in range(len(geoms))]
    return _checked_union(geoms, names)


def _checked_union(geoms, names):
    """The union of the geometries (2-D), each checked first; ``names`` name them in messages."""
    import shapely
    from shapely.ops import unary_union

    n = sum(int(shapely.get_num_coordinates(g)) for g in geoms if g is not None)
    if n > MAX_VERTICES:
        raise AoiError(
            f"the AOI has {n:,} vertices, more than {MAX_VERTICES:,}; simplify it "
            "(e.g. shapely's simplify or QGIS Simplify) before sending it"
        )
    out = []
    for g, name in zip(geoms, names, strict=True):
        if g is None or g.is_empty or g.geom_type not in ("Polygon", "MultiPolygon"):
            kind = "nothing" if g is None or g.is_empty else g.geom_type
            raise AoiError(f"{name} must be a non-empty Polygon or MultiPolygon (got {kind})")
        g = shapely.force_2d(g)
        xy = shapely.get_coordinates(g)
        if not np.isfinite(xy).all():
            raise AoiError(f"{name} has coordinates that are not finite numbers")
        x0, y0, x1, y1 = g.bounds
        if x0 < -180 or x1 > 180 or y0 < -90 or y1 > 90:
            raise AoiError(
                f"{name}'s coordinates ({x0:g}, {y0:g}, {x1:g}, {y1:g}) are not longitude/latitude; "
                "GeoJSON AOIs are CRS84 (RFC 7946). A polygon crossing the antimeridian is cut "
                "at ±180° into a MultiPolygon"
            )
        if not g.is_valid:
            raise AoiError(
                f"{name} is not a valid polygon ({shapely.is_valid_reason(g)}); fix it, e.g. "
                "with shapely's make_valid or QGIS's Fix geometries"
            )
        out.append(g)
    return out[0] if len(out) == 1 else unary_union(out)


# -- areas ----------------------------------------------------------------------------------------
def densify(geom, max_points: int = 200_000, step: float = 0.05):
    """``geom`` with extra vertices along its edges (straight lines in lon/lat), at most
    ``step`` degrees apart, fewer when that would exceed ``max_points``."""
    import shapely

    length = float(shapely.length(geom))
    step = max(step, length / max_points)
    return shapely.segmentize(geom, step)


def area_km2(geom) -> float:
    """Area of a CRS84 geometry on the WGS84 ellipsoid, in km² (edges straight in lon/lat)."""
    import shapely
    from pyproj import Transformer

    t = Transformer.from_crs("OGC:CRS84", EQUAL_AREA, always_xy=True)
    return float(shapely.area(shapely.transform(densify(geom), _xy(t)))) / 1e6


def _xy(transformer):
    def f(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return f


def check_area(geom, limit_km2: float | None, fix: str | None = None) -> float:
    """The AOI's area in km²; :class:`AoiTooLargeError` when it is over the limit, or when the
    bounding box of its parts in their local zone (which the imagery is read for) is over
    ``EXTENT_FACTOR`` times the limit. ``fix`` replaces the message's hint on raising it."""
    more = {} if fix is None else {"fix": fix}
    km2 = area_km2(geom)
    if limit_km2 is None:
        return km2
    x0, _y0, x1, _y1 = geom.bounds
    hint = (
        " Its longitudes span more than 180°: if it crosses the antimeridian, cut it at ±180° "
        "into a MultiPolygon (RFC 7946 §3.1.9)."
        if x1 - x0 > 180 and geom.geom_type == "Polygon"
        else ""
    )
    if km2 > limit_km2:
        raise AoiTooLargeError(km2, limit_km2, hint=hint, **more)
    box_km2 = extent_km2(geom)
    if box_km2 > EXTENT_FACTOR * limit_km2:
        raise AoiTooLargeError(
            box_km2,
            EXTENT_FACTOR * limit_km2,
            what="is spread over a bounding box of",
            hint=hint,
            **more,
        )
    return km2


def extent_km2(geom) -> float:
    """Area of the AOI's bounding box in its local zone (:func:`local_crs`), in km² (inf when
    the AOI cannot be projected there)."""
    try:
        x0, y0, x1, y1 = project(geom, local_crs(geom)).bounds
    except AoiError:
        return math.inf
    return (x1 - x0) * (y1 - y0) / 1e6


# -- CRS and grid ---------------------------------------------------------------------------------
def centre(geom) -> tuple[float, float]:
    """The AOI's centre (lon, lat): parts' centroids weighted by area, longitudes averaged on the
    circle (the parts of an AOI cut at the antimeridian average to ±180°, not to 0°)."""
    parts = list(getattr(geom, "geoms", [geom]))
    w = np.array([max(p.area, 1e-12) for p in parts])
    c = [p.centroid for p in parts]
    lon = np.radians([p.x for p in c])
    mean_lon = math.degrees(math.atan2((w * np.sin(lon)).sum(), (w * np.cos(lon)).sum()))
    return mean_lon, float((w * np.array([p.y for p in c])).sum() / w.sum())


def local_crs(geom) -> CRS:
    """The UTM zone (WGS84) of the AOI's centre; UPS north of 84° N and south of 80° S."""
    lon, lat = centre(geom)
    if lat > 84:
        return CRS.from_epsg(32661)
    if lat < -80:
        return CRS.from_epsg(32761)
    zone = min(int((lon + 180) // 6) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def to_crs(crs) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except rasterio.errors.CRSError as e:
        raise AoiError(f"unknown CRS {crs!r}: {e}. Give e.g. EPSG:32633") from None


def project(geom, crs):
    """The CRS84 AOI in ``crs``, its edges densified first (they are straight in lon/lat)."""
    import shapely
    from pyproj import Transformer

    t = Transformer.from_crs("OGC:CRS84", CRS.from_user_input(crs).to_wkt(), always_xy=True)
    out = shapely.transform(densify(geom, step=0.01), _xy(t))
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise AoiError(
            f"the AOI cannot be drawn in {crs} (it lies outside that CRS's area of use); "
            "choose another --crs, or omit it for the AOI's UTM zone"
        )
    return out if out.is_valid else out.buffer(0)


def pixel_size(crs, resolution_m: float, geom) -> tuple[float, float]:
    """The pixel size in ``crs`` units for ``resolution_m`` metres on the ground at the AOI's
    centre, and the CRS's scale there (map length per ground length). Within
    ``SCALE_TOLERANCE`` of true scale (UTM, most national grids) a metre of the CRS is a metre,
    so grids stay round and on the source's lattice. Geographic CRSs are refused."""
    from pyproj import CRS as PyCRS
    from pyproj import Proj

    if resolution_m <= 0:
        raise AoiError(f"the resolution must be positive, not {resolution_m}")
    crs = to_crs(crs)
    if crs.is_geographic or not crs.is_projected:
        raise AoiError(
            f"{crs.to_string()} is a geographic CRS (degrees): pixels of {resolution_m:g} m have "
            "no single size in it. Give a projected CRS (e.g. the AOI's UTM zone, or EPSG:3857), "
            "or omit --crs for the imagery's own CRS."
        )
    lon, lat = centre(geom)
    f = Proj(PyCRS.from_user_input(crs.to_wkt())).get_factors(lon, lat)
    scale = math.sqrt(f.areal_scale) if math.isfinite(f.areal_scale) else math.nan
    if not math.isfinite(scale) or scale <= 0:
        raise AoiError(f"{crs.to_string()} is not defined at the AOI's centre ({lon:g}, {lat:g})")
    unit = crs.linear_units_factor[1]
    k = 1.0 if abs(scale - 1) <= SCALE_TOLERANCE else scale
    return resolution_m * k / unit, scale


def grid_for(geom, size: float, crs=None, margin_px: int = 0, anchor=(0.0, 0.0)) -> Grid:
    """The grid covering the AOI in ``crs`` (default: its local zone) with square pixels of
    ``size`` CRS units, its edges on the lattice through ``anchor`` (x, y), widened by
    ``margin_px`` on each side."""
    if size <= 0:
        raise AoiError(f"the resolution must be positive, not {size}")
    dst = to_crs(crs) if crs else local_crs(geom)
    x0, y0, x1, y1 = project(geom, dst).bounds
    r, (ax, ay) = size, anchor
    left = (math.floor((x0 - ax) / r) - margin_px) * r + ax
    bottom = (math.floor((y0 - ay) / r) - margin_px) * r + ay
    right = (math.ceil((x1 - ax) / r) + margin_px) * r + ax
    top = (math.ceil((y1 - ay) / r) + margin_px) * r + ay
    width, height = round((right - left) / r), round((top - bottom) / r)
    return Grid(dst, from_origin(left, top, r, r), max(width, 1), max(height, 1))


__all__ = [
    "AoiError",
    "AoiTooLargeError",
    "DEFAULT_MAX_AOI_KM2",
    "area_km2",
    "centre",
    "check_area",
    "extent_km2",
    "grid_for",
    "local_crs",
    "parse_aoi",
    "pixel_size",
    "project",
]
