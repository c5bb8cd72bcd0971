"""Pixel and polygon areas in m² on the WGS84 ellipsoid, whatever the CRS, and class histograms.

In a geographic CRS a pixel's area is exact (the ellipsoid's zone formula). In a projected CRS a
map area is divided by the projection's areal scale there (pyproj's ``get_factors``): Web
Mercator's 35% excess at 30° N goes, and UTM's ±0.1% too.
"""

from __future__ import annotations

import math

import numpy as np


def _zone(phi: np.ndarray, e: float) -> np.ndarray:
    """Ellipsoid zone function: area between the equator and latitude ``phi`` is b²/2·Δλ·f(phi)."""
    s = np.sin(phi)
    return s / (1 - (e * s) ** 2) + np.log((1 + e * s) / (1 - e * s)) / (2 * e)


def pixel_area_rows(grid) -> np.ndarray:
    """Area in m² on the ellipsoid of one pixel on each row of ``grid`` (in a projected CRS,
    averaged along the row)."""
    crs = grid.crs
    t = grid.transform
    if crs.is_geographic:
        from pyproj import CRS

        ell = CRS.from_user_input(crs.to_wkt()).ellipsoid
        a, b = ell.semi_major_metre, ell.semi_minor_metre
        e = math.sqrt(1 - (b / a) ** 2)
        top = t.f + t.e * np.arange(grid.height)
        bottom = top + t.e
        dlon = math.radians(abs(t.a))
        return np.abs(_zone(np.radians(bottom), e) - _zone(np.radians(top), e)) * b * b / 2 * dlon
    if not crs.is_projected:  # an engineering CRS: its units are taken as metres
        return np.full(grid.height, abs(t.a * t.e))
    unit = crs.linear_units_factor[1]
    # the scale varies slowly: sampled on up to 9 columns and 1025 rows, interpolated between
    cols = np.linspace(0.5, grid.width - 0.5, min(grid.width, 9))
    rows = np.linspace(0.5, grid.height - 0.5, min(grid.height, 1025))
    xs = t.a * cols[None, :] + t.b * rows[:, None] + t.c  # pixel centres [rows, cols]
    ys = t.d * cols[None, :] + t.e * rows[:, None] + t.f
    per_row = (1.0 / areal_scale(crs, xs, ys)).mean(axis=1)
    ground = np.interp(np.arange(grid.height) + 0.5, rows, per_row)
    return abs(t.a * t.e) * unit * unit * ground


def areal_scale(crs, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Map area per ground area of a projected ``crs`` at points (x, y) in its units."""
    from pyproj import CRS, Proj, Transformer

    pcrs = CRS.from_user_input(crs.to_wkt())
    lon, lat = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True).transform(x, y)
    scale = np.asarray(Proj(pcrs).get_factors(lon, lat).areal_scale, dtype=float)
    if not np.isfinite(scale).all() or (scale <= 0).any():
        raise ValueError(f"{crs} has no areal scale at some pixels (outside its area of use)")
    return scale


def geometry_areas_m2(geoms: np.ndarray, crs) -> np.ndarray:
    """Areas in m² of an array of shapely geometries in ``crs``: geodesic on WGS84 for
    geographic CRSs; else the map area over the areal scale at each geometry's inside point."""
    if crs.is_geographic:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=float)
    import shapely

    unit = crs.linear_units_factor[1] if crs.is_projected else 1.0
    area = shapely.area(geoms) * unit * unit
    live = ~shapely.is_empty(geoms)
    if crs.is_projected and live.any():
        xy = shapely.get_coordinates(shapely.point_on_surface(geoms[live]))
        area[live] = area[live] / areal_scale(crs, xy[:, 0], xy[:, 1])
    return area


def class_histogram(classes: list[dict], counts: np.ndarray, area_m2: np.ndarray) -> list[dict]:
    total = max(int(counts.sum()), 1)
    return [
        {
            "id": c["id"],
            "name": c["name"],
            "pixels": int(counts[c["id"]]),
            "area_m2": round(float(area_m2[c["id"]]), 2),
            "fraction": round(int(counts[c["id"]]) / total, 6),
        }
        for c in classes
    ]
