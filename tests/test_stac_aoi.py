"""AOIs as RFC 7946 reads them: areas on the ellipsoid for any valid GeoJSON (compared with a
geodesic computation of the same polygon), hostile AOIs refused with a message, the local zone
(UTM, UPS at the poles, one zone across the antimeridian), metres converted to a CRS's units,
and grids on a source's lattice."""

import json
import math

import numpy as np
import pytest
import shapely
from pyproj import Geod
from shapely.geometry import MultiPolygon, box, mapping

from datamodules.aoi import (
    AoiError,
    AoiTooLargeError,
    area_km2,
    check_area,
    grid_for,
    local_crs,
    parse_aoi,
    pixel_size,
)

GEOD = Geod(ellps="WGS84")
WORLD_KM2 = 510_065_621.724  # the WGS84 ellipsoid's surface


def geodesic_km2(geom, step=0.01) -> float:
    """pyproj's geodesic area of ``geom`` with edges densified along lon/lat lines (RFC 7946's
    straight edges), so the two agree on what the polygon is."""
    return abs(GEOD.geometry_area_perimeter(shapely.segmentize(geom, step))[0]) / 1e6


@pytest.mark.parametrize(
    "geom",
    [
        box(15.0, 37.9, 15.03, 37.92),  # a few km², the usual AOI
        shapely.Polygon([(15, 38), (15.4, 38.1), (15.1, 38.5), (15, 38)]),  # slanted edges
        box(-10, 40, 10, 60),  # a 20° box: its top and bottom are parallels, not geodesics
        MultiPolygon([box(179.5, -17, 180, -16.5), box(-180, -17, -179.5, -16.5)]),  # Fiji
    ],
)
def test_areas_match_a_geodesic_computation(geom):
    assert area_km2(geom) == pytest.approx(geodesic_km2(geom), rel=2e-5)


def test_areas_of_hostile_aois_are_right_and_refused():
    world = {
        "type": "Polygon",
        "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]],
    }
    g = parse_aoi(world)
    assert area_km2(g) == pytest.approx(WORLD_KM2, rel=1e-9)
    with pytest.raises(AoiTooLargeError) as e:
        check_area(g, 10_000)
    assert e.value.area_km2 == pytest.approx(WORLD_KM2, rel=1e-9)
    north = box(-180, 0, 180, 80)  # a band of latitudes: half the world minus the cap
    assert area_km2(north) == pytest.approx(geodesic_km2(north, 0.5), rel=1e-4)
    with pytest.raises(AoiTooLargeError, match="251,1"):
        check_area(north, 10_000)
    cap = box(-180, 89.9, 180, 90)  # a polar cap: ~11 km radius around the pole
    r = 6_399_593.6259 * math.radians(0.1) / 1e3  # polar radius of curvature x 0.1°
    assert area_km2(cap) == pytest.approx(math.pi * r * r, rel=1e-3)
    assert local_crs(cap).to_epsg() == 32661  # UPS North, not a UTM zone
    # crossing the antimeridian without being cut: read as RFC 7946 says (340° wide), refused
    wrong = {
        "type": "Polygon",
        "coordinates": [[[170, 0], [-170, 0], [-170, 10], [170, 10], [170, 0]]],
    }
    with pytest.raises(AoiTooLargeError, match="cut it at ±180°"):
        check_area(parse_aoi(wrong), 10_000)
    # two small squares an ocean apart: small in area, huge as the box read for them
    spread = MultiPolygon([box(2.0, 48.0, 2.05, 48.05), box(-74.0, 40.7, -73.95, 40.75)])
    assert area_km2(spread) < 50
    with pytest.raises(AoiTooLargeError, match="spread over a bounding box"):
        check_area(spread, 10_000)


def test_antimeridian_aoi_gets_one_zone_and_a_compact_grid():
    fiji = MultiPolygon([box(179.9, -17, 180, -16.9), box(-180, -17, -179.9, -16.9)])
    assert local_crs(fiji).to_epsg() == 32760  # zone 60 south
    grid = grid_for(fiji, 30.0)
    km = (grid.width * 30 / 1e3, grid.height * 30 / 1e3)
    assert 20 < km[0] < 23 and 10 < km[1] < 12  # 0.2° x 0.1° at 17° S, not 360° wide
    assert check_area(fiji, 10_000) == pytest.approx(geodesic_km2(fiji), rel=1e-5)


@pytest.mark.parametrize(
    ("aoi", "message"),
    [
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
            "not a valid polygon .*Self-intersection",
        ),
        ({"type": "FeatureCollection", "features": []}, "holds no features"),
        (
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": mapping(box(0, 0, 1, 1)), "properties": {}},
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [0, 0]},
                        "properties": {},
                    },
                ],
            },
            "feature 1 must be a non-empty Polygon",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0]]]}, "not a GeoJSON Polygon"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1e9, 0], [1, 1], [0, 0]]]},
            "not longitude/latitude",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [float("nan"), 0], [1, 1], [0, 0]]]},
            "not finite",
        ),
        ({"type": "Feature", "geometry": None, "properties": {}}, "has no GeoJSON geometry"),
        ("{not json", "not valid JSON"),
        (
            {
                "type": "Polygon",
                "coordinates": [[[0.0001 * i, math.sin(i)] for i in range(100_001)] + [[0, 0]]],
            },
            "more than 100,000",
        ),
    ],
)
def test_invalid_aois_are_refused_with_what_is_wrong(aoi, message):
    with pytest.raises(AoiError, match=message):
        parse_aoi(aoi)


def test_feature_collections_are_the_union_of_their_polygons(tmp_path):
    a, b = box(15, 38, 15.01, 38.01), box(15.01, 38, 15.02, 38.01)
    fc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": mapping(g), "properties": {}} for g in (a, b)],
    }
    g = parse_aoi(fc)
    assert g.equals(box(15, 38, 15.02, 38.01))
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(fc))
    assert parse_aoi(path).equals(g)


def test_metres_become_crs_units_at_the_centre_and_geographic_crss_are_refused():
    g = box(15.0, 30.6, 15.1, 30.8)  # 30.7° N: Web Mercator is 1.163 x true scale there
    size, scale = pixel_size("EPSG:3857", 30.0, g)
    assert scale == pytest.approx(1 / math.cos(math.radians(30.7)), rel=5e-3)
    assert size == pytest.approx(30.0 * scale)
    assert pixel_size("EPSG:32633", 30.0, g)[0] == 30.0  # within 1% of true scale: as given
    assert pixel_size("EPSG:2229", 30.0, box(-118.3, 34.0, -118.2, 34.1))[0] == pytest.approx(
        30.0 / 0.3048006096, rel=1e-6
    )  # a CRS in US survey feet
    with pytest.raises(AoiError, match="geographic CRS .*omit --crs"):
        pixel_size("EPSG:4326", 30.0, g)


def test_grids_follow_the_lattice_of_an_anchor():
    g = box(15.0, 37.9, 15.03, 37.92)
    snapped = grid_for(g, 30.0)
    landsat = grid_for(g, 30.0, anchor=(15.0, 15.0))
    assert snapped.transform.c % 30 == 0 and snapped.transform.f % 30 == 0
    assert landsat.transform.c % 30 == 15 and landsat.transform.f % 30 == 15
    xs = np.array([landsat.bounds[0], landsat.bounds[2]])
    assert (xs <= np.array([snapped.bounds[0] + 15, snapped.bounds[2] + 15])).all()
