"""Pixel areas in m² (geodesic on the ellipsoid when the CRS is geographic) and class histograms."""

from __future__ import annotations

import math

import numpy as np


def _zone(phi: np.ndarray, e: float) -> np.ndarray:
    """Ellipsoid zone function: area between the equator and latitude ``phi`` is b²/2·Δλ·f(phi)."""
    s = np.sin(phi)
    return s / (1 - (e * s) ** 2) + np.log((1 + e * s) / (1 - e * s)) / (2 * e)


def pixel_area_rows(grid) -> np.ndarray:
    """Area in m² of one pixel on each row of ``grid`` (constant for projected CRSs)."""
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
    unit = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return np.full(grid.height, abs(t.a * t.e) * unit * unit)


def geometry_areas_m2(geoms: np.ndarray, crs) -> np.ndarray:
    """Areas in m² of an array of shapely geometries in ``crs`` (geodesic on WGS84 for
    geographic CRSs)."""
    if crs.is_geographic:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=float)
    import shapely

    unit = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return shapely.area(geoms) * unit * unit


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
