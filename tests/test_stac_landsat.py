"""Composites on the source's pixels, from a static Landsat-like catalog with local hrefs read
through the ``earth_search`` preset (whose Landsat assets are requester-pays on AWS): no
credentials asked, the Landsat lattice (15 m modulo 30) kept, stored values unchanged, clouds
masked, lineage recorded; scenes chosen per period; ``--crs`` in metres or refused; AOI edges by
pixel centres."""

import json

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Geod
from rasterio.warp import transform_geom
from stac_synth_landsat import L_ORIGIN, l_aoi, l_scenes, stored, write_landsat_catalog

from datamodules.aoi import AoiError
from datamodules.composite import composite_for_aoi
from datamodules.stac import NoImageryError, StacError
from trainer.areas import pixel_area_rows

L1, L2, L3, L4, L5 = (s.id for s in l_scenes())


@pytest.fixture(scope="module")
def landsat(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("landsat")
    return {"dir": tmp, "url": str(write_landsat_catalog(tmp))}


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def run(landsat, out, start="2023-03-01", end="2023-04-30", aoi=None, **kw):
    args = dict(catalog="earth_search", catalog_url=landsat["url"], progress=False)
    return composite_for_aoi(aoi or l_aoi(), start, end, "landsat-c2-l2", out, **(args | kw))


def on_grid(values: np.ndarray, grid) -> np.ndarray:
    """Source values ([C, L_SIZE, L_SIZE] on the Landsat grid) cut to the output grid."""
    r0 = round((L_ORIGIN[1] - grid.transform.f) / 30)
    c0 = round((grid.transform.c - L_ORIGIN[0]) / 30)
    return values[..., r0 : r0 + grid.height, c0 : c0 + grid.width].astype(np.float64)


def aoi_pixels(grid, cols=(5, 85), rows=(5, 85)) -> np.ndarray:
    """Output pixels whose centres fall inside :func:`l_aoi` (a rectangle of Landsat pixels)."""
    t = grid.transform
    x = t.c + (np.arange(grid.width) + 0.5) * 30
    y = t.f - (np.arange(grid.height) + 0.5) * 30
    in_x = (x > L_ORIGIN[0] + cols[0] * 30) & (x < L_ORIGIN[0] + cols[1] * 30)
    in_y = (y < L_ORIGIN[1] - rows[0] * 30) & (y > L_ORIGIN[1] - rows[1] * 30)
    return in_y[:, None] & in_x[None, :]


def cloud_mask(scene, grid) -> np.ndarray:
    m = np.zeros(stored(scene).shape[1:], dtype=bool)
    if scene.cloud:
        m[scene.cloud] = True
    return on_grid(m, grid).astype(bool)


def test_local_mirror_on_the_source_grid_without_credentials(landsat, tmp_path, no_aws):
    r = run(landsat, tmp_path / "out")
    p = r.provenance
    g = r.grid
    # the output lattice is Landsat's: origin at 15 m modulo 30, no resampling of any band
    assert (
        (g.transform.c % 30, g.transform.f % 30) == (L_ORIGIN[0] % 30, L_ORIGIN[1] % 30) == (15, 15)
    )
    assert p["grid"]["crs_from"] == "the items" and p["crs"] == "EPSG:32633"
    assert set(p["resampling"]) == {"mask", *p["bands"]}
    assert all(v == ["none (the source grid)"] for v in p["resampling"].values())
    # the preset names coastal and lwir11; the mirror's items have neither: left out, said so
    assert p["bands"] == ["blue", "green", "red", "nir08", "swir16", "swir22"]
    assert p["bands_left_out"] == ["coastal", "lwir11"]
    with rasterio.open(r.images[0]) as src:
        comp = src.read().astype(np.float64)
        assert src.transform == g.transform and src.nodata == 0
        assert src.tags()["ACQUISITION_DATE"] == "2023-03-10T09:40:00Z"
        # stored values stay stored values; the file says how they become reflectance
        assert src.scales == (2.75e-5,) * 6 and src.offsets == (-0.2,) * 6
    with rasterio.open(r.count) as src:
        count = src.read(1)
    s1, s2 = l_scenes()[0], l_scenes()[1]
    a, b = on_grid(stored(s1), g), on_grid(stored(s2), g)
    cloud_a, cloud_b = cloud_mask(s1, g), cloud_mask(s2, g)
    inside = aoi_pixels(g)
    assert inside.sum() == 80 * 80  # the AOI's 80 x 80 Landsat pixels, no more
    assert (count[~inside] == 0).all() and (comp[:, ~inside] == 0).all()
    only_b, only_a = inside & cloud_a & ~cloud_b, inside & cloud_b & ~cloud_a
    both_clear, both_cloudy = inside & ~cloud_a & ~cloud_b, inside & cloud_a & cloud_b
    assert only_a.sum() > 100 and only_b.sum() > 100 and both_cloudy.sum() == 15 * 15
    assert np.array_equal(comp[:, only_b], b[:, only_b])  # clear pixels: the stored values
    assert np.array_equal(comp[:, only_a], a[:, only_a])
    assert np.array_equal(comp[:, both_clear], np.rint((a + b) / 2)[:, both_clear])
    assert (comp[:, both_cloudy] == 0).all() and (count[both_cloudy] == 0).all()  # nodata
    # lineage: the scenes that gave pixels, with how many and their item JSON; the fully
    # cloudy scene searched but unused; the unknown cloud cover kept and said
    items = {i["id"]: i for i in p["items"]}
    assert set(items) == {L1, L2} and p["n_items_found"] == 3
    assert items[L1]["pixels"] == int((inside & ~cloud_a).sum())
    assert items[L2]["pixels"] == int((inside & ~cloud_b).sum())
    assert items[L2]["cloud_cover"] == "unknown" and items[L1]["cloud_cover"] == 10.0
    assert [(u["id"], u["reason"]) for u in p["unused_items"]] == [
        (L4, "no clear pixel over the AOI")
    ]
    for rec in [*p["items"], *p["unused_items"]]:
        item = json.loads(open(rec["href"]).read())
        assert (
            item["id"] == rec["id"] and item["collection"] == rec["collection"] == "landsat-c2-l2"
        )
        assert item["properties"]["datetime"] == rec["datetime"]
    # the composite's date is the median of the scenes that gave pixels, not of all found
    assert p["dates"] == ["2023-03-10T09:40:00Z"]


def test_bands_the_items_lack_are_named_with_the_option(landsat, tmp_path, no_aws):
    with pytest.raises(StacError, match=r"coastal \(asset 'coastal'.*--bands.*blue, green"):
        run(landsat, tmp_path / "out", bands=["coastal", "blue"])
    assert not (tmp_path / "out").exists()


def test_scenes_are_chosen_per_period(landsat, tmp_path, no_aws):
    # the two clearest scenes of the year are both in spring: a global cap of 1 would have
    # starved the second half; per period, each keeps its clearest scene
    r = run(landsat, tmp_path / "out", start="2023-01-01", end="2023-12-31", frames=2, max_items=1)
    p = r.provenance
    assert [i["id"] for i in p["items"]] == [L1, L5]
    assert r.dates == ["2023-03-10T09:40:00Z", "2023-08-20T09:42:00Z"]
    assert {u["id"]: u["reason"] for u in p["unused_items"]} == {
        L2: "over --max-items in its period",
        L4: "over --max-items in its period",
    }
    g = r.grid
    aoi = aoi_pixels(g)
    both = aoi & ~cloud_mask(l_scenes()[0], g) & ~cloud_mask(l_scenes()[4], g)
    # usable by the model: clear in both frames, not in either
    assert p["usable_fraction"] == round(both.sum() / aoi.sum(), 4)
    assert p["clear_fraction"] > p["usable_fraction"] > 0.5


def test_a_starved_period_names_the_real_cause(landsat, tmp_path, no_aws):
    with pytest.raises(
        NoImageryError,
        match=r"no landsat-c2-l2 scene between 2023-04-16 and "
        r"2023-05-31 \(period 2 of 2\) with cloud cover at most 40%",
    ):
        run(landsat, tmp_path / "a", start="2023-03-01", end="2023-05-31", frames=2)
    with pytest.raises(NoImageryError, match=r"period 2 of 2: 2023-04-02\) have no clear view"):
        run(landsat, tmp_path / "b", start="2023-03-01", end="2023-04-09", frames=2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_web_mercator_pixels_are_metres_and_reprojection_is_stated(landsat, tmp_path, no_aws):
    clear = l_aoi(cols=(5, 55), rows=(5, 55))  # clear in August
    r = run(
        landsat, tmp_path / "out", crs="EPSG:3857", aoi=clear, start="2023-08-01", end="2023-08-31"
    )
    p = r.provenance
    k = p["grid"]["scale_at_centre"]
    assert 1.26 < k < 1.27  # 1 / cos(37.9°)
    assert r.grid.res[0] == pytest.approx(30.0 * k)  # 30 m on the ground, not 30 Mercator units
    assert p["resampling"]["blue"] == ["bilinear (EPSG:32633 → EPSG:3857)"]
    assert p["resampling"]["mask"] == ["nearest (EPSG:32633 → EPSG:3857)"]
    with rasterio.open(r.count) as src:
        inside = src.read(1) > 0
    # the area of the AOI's pixels, on the ellipsoid, against a geodesic computation
    got = float(inside.sum(axis=1) @ pixel_area_rows(r.grid))
    assert got == pytest.approx(area_of(clear), rel=0.02)
    with pytest.raises(AoiError, match="EPSG:4326 is a geographic CRS"):
        run(landsat, tmp_path / "geo", crs="EPSG:4326")


def area_of(feature) -> float:
    return abs(
        Geod(ellps="WGS84").geometry_area_perimeter(shapely.geometry.shape(feature["geometry"]))[0]
    )


def test_aoi_edges_keep_the_pixels_whose_centres_are_inside(landsat, tmp_path, no_aws):
    # a slanted triangle over clear ground (the August scene's cloud is elsewhere)
    x0, y0 = L_ORIGIN[0] + 3 * 30 + 7, L_ORIGIN[1] - 50 * 30 - 11
    ring = [[x0, y0], [x0 + 1300, y0 - 900], [x0 + 500, y0 + 1250], [x0, y0]]
    geom = transform_geom("EPSG:32633", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    tri = {"type": "Feature", "geometry": geom, "properties": {}}
    r = run(landsat, tmp_path / "out", aoi=tri, start="2023-08-01", end="2023-08-31")
    with rasterio.open(r.count) as src:
        count = src.read(1)
    got = float((count > 0).sum(axis=1) @ pixel_area_rows(r.grid))
    want = area_of(tri)
    px = float(pixel_area_rows(r.grid)[0])
    # pixel centres: off by a few pixels' worth at most (the old rule, every pixel the edge
    # touches, added about half a pixel along the whole perimeter: ~+13% here)
    assert abs(got - want) < 6 * px and abs(got - want) / want < 0.02


def test_the_acquisition_time_of_day_reaches_clay(landsat, tmp_path, no_aws):
    import math
    from datetime import UTC, datetime

    import torch

    from datamodules.imagery import day_number, open_scenes
    from trainer.backbones import build_backbone
    from trainer.heads import _dates

    r = run(landsat, tmp_path / "out")
    (scene,) = open_scenes(r.images)
    assert scene.date == datetime(2023, 3, 10, 9, 40, tzinfo=UTC)  # not midnight
    # the day number the predictor and the data module hand the network keeps the time
    (dates,) = _dates(torch.tensor([[day_number(scene.date)]], dtype=torch.float64))
    assert dates == [scene.date]
    clay = build_backbone("clay_v1_5", checkpoint="random", size="tiny", sensor="landsat-c2-l2")
    time = clay.make_metadata(dates=[dates], lonlat=None, gsd=30.0)["time"][0].tolist()
    hour = 9 * 2 * math.pi / 24
    assert time[2:] == pytest.approx([math.sin(hour), math.cos(hour)], abs=1e-6)


def test_items_stating_other_units_are_put_in_the_sensor_tables(tmp_path, no_aws):
    """A mirror storing reflectance x 10000 (raster:bands scale 1e-4) gives Landsat C2 L2's
    stored values (scale 2.75e-5, offset -0.2), exactly, and says so."""
    scene = l_scenes()[4]
    url = str(write_landsat_catalog(tmp_path / "cat", [scene], scaling=(1e-4, 0.0)))
    area = l_aoi(cols=(5, 55), rows=(5, 55))
    r = composite_for_aoi(
        area,
        "2023-08-01",
        "2023-08-31",
        "landsat-c2-l2",
        tmp_path / "out",
        catalog="earth_search",
        catalog_url=url,
        progress=False,
    )
    (item,) = r.provenance["items"]
    assert item["harmonized"] == [
        "stored x 0.0001 + 0 (raster:bands) as the sensor table's x 2.75e-05 + -0.2"
    ]
    with rasterio.open(r.images[0]) as src:
        comp = src.read().astype(np.float64)
    ok = aoi_pixels(r.grid, (5, 55), (5, 55))
    want = np.rint((on_grid(stored(scene), r.grid) * 1e-4 + 0.2) / 2.75e-5).clip(max=65535)
    diff = np.abs(comp[:, ok] - want[:, ok])  # float32 pixels: a .5 may round either way
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_items_of_platforms_the_catalog_does_not_read_are_said(landsat, tmp_path, no_aws):
    """A local copy of Landsat 7 items: 'widen the dates' would not help, so it is not said."""
    from datamodules.stac_static import static_items

    items = [i.to_dict() for i in static_items(landsat["url"])]
    for item in items:
        item["properties"]["platform"] = "landsat-7"
    copy = tmp_path / "l7.json"
    copy.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with pytest.raises(NoImageryError, match=r"items over the AOI in these dates are from "
                       r"landsat-7; catalog earth_search reads landsat-c2-l2 from landsat-8, "
                       r"landsat-9 only .* --image"):  # fmt: skip
        run({"url": str(copy)}, tmp_path / "out")
