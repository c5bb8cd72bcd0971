"""STAC imagery offline: presets, mask and harmonisation rules, AOIs and grids, and composites
from a static catalog of small COGs written here (the same code path as a remote catalog)."""

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.windows import from_bounds
from stac_synth import CLOUD, aoi, write_items, write_static_catalog

from datamodules.aoi import AoiError, AoiTooLargeError, grid_for, parse_aoi
from datamodules.composite import composite_for_aoi
from datamodules.observe import s2_offset_applies
from datamodules.stac import (
    PRESETS_DIR,
    Found,
    MaskSpec,
    NoImageryError,
    StacError,
    load_catalog,
    presets,
    search_items,
)
from datamodules.stac_access import (
    AccessError,
    EarthdataLogin,
    PlanetaryComputer,
    Public,
    RequesterPays,
)

BANDS = ["blue", "green", "red", "nir08"]
A, B1, B2, C = (
    "S2A_33SVB_20210610_0_L2A",
    "S2B_33SVB_20220615_0_L2A",
    "S2B_33SWB_20220615_0_L2A",
    "S2A_33SVB_20230620_0_L2A",
)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("static")
    items = write_items(tmp)
    return {"dir": tmp, "url": str(write_static_catalog(tmp, items)), "items": items}


def run(catalog, out, **kw):
    args = dict(bands=BANDS, catalog="earth_search", catalog_url=catalog["url"], progress=False)
    return composite_for_aoi(
        aoi(), "2021-01-01", "2023-12-31", "sentinel-2-l2a", out, **(args | kw)
    )


def source(catalog, scene: str, key: str, grid) -> np.ndarray:
    """A scene's stored values on the output grid (10 m bands share its lattice: exact)."""
    with rasterio.open(catalog["dir"] / "assets" / scene / f"{key}.tif") as src:
        win = from_bounds(*grid.bounds, src.transform).round_offsets().round_lengths()
        return src.read(1, window=win, boundless=True, fill_value=0).astype(np.float64)


def test_presets_load_offline_with_bands_from_the_sensor_table():
    assert {"earth_search", "planetary_computer", "earthdata_lpcloud"} <= set(presets())
    es = load_catalog("earth_search")
    assert es.url.startswith("https://") and not es.is_static
    s2 = es.source("sentinel-2-l2a").collections[0]
    assert s2.assets["nir08"] == "nir08" and s2.mask.asset == "scl" and 9 in s2.mask.classes
    assert isinstance(es.access, Public)
    assert isinstance(es.source("landsat-c2-l2").collections[0].access, RequesterPays)
    pc = load_catalog("planetary_computer")
    assert (
        isinstance(pc.access, PlanetaryComputer)
        and pc.source("sentinel-2-l2a").collections[0].assets["blue"] == "B02"
    )
    assert pc.source("sentinel-1-rtc").collections[0].harmonize == "linear-to-db"
    hls = load_catalog("earthdata_lpcloud").source("hls")
    assert isinstance(load_catalog("earthdata_lpcloud").access, EarthdataLogin)
    assert [c.assets["nir08"] for c in hls.collections] == ["B8A", "B05"]
    with pytest.raises(StacError, match="planetary_computer"):
        es.source("sentinel-1-rtc")  # names the catalog that has it
    with pytest.raises(StacError, match="presets: "):
        load_catalog("no-such-catalog")
    assert load_catalog("earth_search", "/data/catalog.json").is_static
    remote = load_catalog("earth_search", "https://example.com/s2/items.parquet")
    assert remote.is_static  # and refused before any request: a bulk copy is read from disk
    with pytest.raises(StacError, match="stac-geoparquet file on another machine; .* download"):
        search_items(remote, remote.source("sentinel-2-l2a"), parse_aoi(aoi()), date(2021, 1, 1),
                     date(2021, 12, 31), max_cloud=None)  # fmt: skip


def test_mask_rules():
    scl = MaskSpec("scl", classes=(0, 1, 3, 8, 9, 10))
    v = np.array([np.nan, 0, 3, 4, 5, 6, 8, 9, 10, 11], dtype=np.float32)
    assert scl.invalid(v).tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
        True,
        True,
        True,
        False,
    ]
    qa = MaskSpec("qa_pixel", bits=(0, 1, 2, 3, 4))
    # 21824: clear, low confidences (Landsat 8 clear land); 22280: cloud (bit 3); 23888: shadow;
    # 1: fill; 30048: snow (bit 5, kept)
    v = np.array([21824, 22280, 23888, 1, 30048], dtype=np.float32)
    assert qa.invalid(v).tolist() == [False, True, True, True, False]
    fmask = MaskSpec("Fmask", bits=(0, 1, 2, 3), nodata=255)
    v = np.array([0, 2, 4, 8, 16, 32, 64, 255], dtype=np.float32)
    assert fmask.invalid(v).tolist() == [False, True, True, True, False, False, False, True]


def test_sentinel2_offset_rule():
    def item(**props):
        return pystac.Item("x", None, None, datetime(2023, 1, 1), props)

    assert not s2_offset_applies(item(**{"s2:processing_baseline": "03.01"}))
    assert s2_offset_applies(item(**{"s2:processing_baseline": "04.00"}))
    assert s2_offset_applies(item(**{"s2:processing_baseline": "05.10"}))
    flag = {"s2:processing_baseline": "05.10", "earthsearch:boa_offset_applied": True}
    assert not s2_offset_applies(item(**flag))
    assert s2_offset_applies(item())  # no baseline: ESA's switch date decides (2022-01-25)
    old = pystac.Item("x", None, None, datetime(2021, 6, 1), {})
    assert not s2_offset_applies(old)
    # a reprocessed old date (Collection 1) without its baseline: the band's raster:bands say
    band = pystac.Asset("red.tif", extra_fields={"raster:bands": [{"scale": 1e-4, "offset": -0.1}]})
    assert s2_offset_applies(old, band)
    band.extra_fields["raster:bands"][0]["offset"] = 0
    assert not s2_offset_applies(item(), band)
    assert not s2_offset_applies(item(**{"s2:processing_baseline": "03.01"}), band)


def test_aoi_parsing_limits_and_grid(tmp_path):
    feature = aoi()
    g = parse_aoi(feature)
    assert parse_aoi(feature["geometry"]).equals(g)
    assert parse_aoi({"type": "FeatureCollection", "features": [feature]}).equals(g)
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(feature))
    assert parse_aoi(path).equals_exact(g, 1e-9)
    with pytest.raises(AoiError, match="longitude/latitude"):
        parse_aoi(
            {"type": "Polygon", "coordinates": [[[5e5, 4e6], [6e5, 4e6], [6e5, 5e6], [5e5, 4e6]]]}
        )
    with pytest.raises(AoiError, match="Polygon"):
        parse_aoi({"type": "Point", "coordinates": [15, 38]})
    grid = grid_for(g, 10.0)
    assert grid.crs.to_epsg() == 32633  # the AOI's UTM zone
    assert all(v % 10 == 0 for v in grid.bounds)  # snapped to the resolution
    assert grid_for(g, 10.0, "EPSG:3035").crs.to_epsg() == 3035
    with pytest.raises(AoiTooLargeError, match="more than the limit of 2 km²") as e:
        run({"url": "unused"}, tmp_path / "out", max_aoi_km2=2.0)
    assert e.value.limit_km2 == 2.0 and 3.5 < e.value.area_km2 < 4.0
    assert not (tmp_path / "out").exists()


def test_median_composite_masks_clouds_and_harmonises(catalog, tmp_path):
    r = run(catalog, tmp_path / "out")
    p = r.provenance
    assert p["n_items_found"] == 4  # 95% cloud and out-of-range scenes never match
    assert sorted(i["id"] for i in p["items"]) == sorted([A, B1, B2, C])
    harmonised = {i["id"]: i["harmonized"] for i in p["items"]}
    assert harmonised[B1] and harmonised[B2] and not harmonised[A] and not harmonised[C]
    assert json.loads((tmp_path / "out" / "provenance.json").read_text()) == p
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [
        "composite.tif",
        "count.tif",
        "provenance.json",
    ]
    with rasterio.open(r.images[0]) as src:
        comp = src.read().astype(np.float64)
        assert src.descriptions == tuple(BANDS) and src.nodata == 0
        assert src.crs.to_epsg() == 32633 and src.res == (10.0, 10.0)
        # Sentinel-2's lattice (origin 0 modulo 10); 20 m bands and SCL split into 2 x 2 pixels
        assert (src.transform.c % 10, src.transform.f % 10) == (0, 0)
    assert p["resampling"]["blue"] == ["none (the source grid)"]
    assert p["resampling"]["nir08"] == ["nearest (20 → 10, each pixel split 2x2)"]
    assert p["resampling"]["mask"] == ["nearest (20 → 10, each pixel split 2x2)"]
    with rasterio.open(r.count) as src:
        count = src.read(1)
    g = r.grid
    row0 = round((4_200_000 - g.bounds[3]) / 10)
    col0 = round((g.bounds[0] - 500_000) / 10)
    cloud = np.zeros(count.shape, dtype=bool)
    cloud[
        CLOUD[0].start - row0 : CLOUD[0].stop - row0, CLOUD[1].start - col0 : CLOUD[1].stop - col0
    ] = True
    inside = count > 0
    # the cloudy overpass (two tiles mosaicked into one observation) is masked under its cloud
    assert (count[cloud & inside] == 2).all() and (count[~cloud & inside] == 3).all()
    assert inside.mean() > 0.95 and (comp[:, ~inside] == 0).all()
    for b, key in enumerate(["B02", "B03", "B04"]):  # 10 m bands: exact values
        a, c = source(catalog, A, key, g), source(catalog, C, key, g)
        b1, b2 = source(catalog, B1, key, g), source(catalog, B2, key, g)
        bb = np.where(b1 > 0, b1, b2) - 1000  # baseline 04.00: the offset comes off
        want_clear = np.rint(np.median(np.stack([a, bb, c]), axis=0))
        want_cloud = np.rint((a + c) / 2)  # the cloud's 9000s never enter the median
        assert np.array_equal(comp[b][~cloud & inside], want_clear[~cloud & inside])
        assert np.array_equal(comp[b][cloud & inside], want_cloud[cloud & inside])
    assert comp[3][inside].max() < 5000  # nir08 (20 m, resampled): no cloud values either


def test_best_dates_one_per_period(catalog, tmp_path):
    r = run(catalog, tmp_path / "out", frames=3)
    assert r.dates == ["2021-06-10T10:00:00Z", "2022-06-15T10:00:00Z", "2023-06-20T10:00:00Z"]
    assert [p.name for p in r.images] == [
        "frame_1_2021-06-10.tif",
        "frame_2_2022-06-15.tif",
        "frame_3_2023-06-20.tif",
    ]
    g = r.grid
    frames = []
    for path in r.images:
        with rasterio.open(path) as src:
            frames.append(src.read(1).astype(np.float64))
            assert src.tags()["ACQUISITION_DATE"][:10] == path.stem.split("_")[-1]
    with rasterio.open(r.count) as src:
        count = src.read(1)
    inside = count > 0
    a, c = source(catalog, A, "B02", g), source(catalog, C, "B02", g)
    b1, b2 = source(catalog, B1, "B02", g), source(catalog, B2, "B02", g)
    b = np.where(b1 > 0, b1, b2) - 1000
    assert np.array_equal(frames[0][inside], a[inside])
    assert np.array_equal(frames[2][inside], c[inside])  # flagged: the offset is not taken twice
    clear_b = inside & (frames[1] > 0)
    assert np.array_equal(frames[1][clear_b], b[clear_b])
    assert ((frames[1] == 0) & inside).sum() == (count == 2).sum() > 5000  # the cloud is nodata
    with pytest.raises(NoImageryError, match="period 2 of 2"):
        composite_for_aoi(
            aoi(), "2023-01-01", "2023-12-31", "sentinel-2-l2a", tmp_path / "x", bands=BANDS,
            frames=2, catalog="earth_search", catalog_url=catalog["url"], progress=False,
        )  # fmt: skip


def test_clip_to_the_aoi_polygon_and_fewest_clouds_first(catalog, tmp_path):
    tri = aoi()
    ring = tri["geometry"]["coordinates"][0]
    tri["geometry"]["coordinates"] = [[ring[0], ring[1], ring[2], ring[0]]]  # lower-right half
    r = composite_for_aoi(
        tri, "2021-01-01", "2023-12-31", "sentinel-2-l2a", tmp_path / "out", bands=["red"],
        max_items=2, catalog="earth_search", catalog_url=catalog["url"], progress=False,
    )  # fmt: skip
    assert [i["id"] for i in r.provenance["items"]] == [A, C]  # the two clearest scenes
    with rasterio.open(r.count) as src:
        count = src.read(1)
    h, w = count.shape
    assert count[h - 5, w - 5] == 2 and count[5, 5] == 0  # outside the triangle: no data


def test_no_imagery_and_bad_requests_are_messages(catalog, tmp_path):
    with pytest.raises(NoImageryError, match="Widen the dates or raise --max-cloud"):
        run(catalog, tmp_path / "out", max_cloud=1.0)
    with pytest.raises(StacError, match="not available"):
        run(catalog, tmp_path / "out", bands=["blue", "cirrus"])
    # only the cloudy overpass, and an AOI under its cloud
    with pytest.raises(NoImageryError, match="no clear view of the area"):
        composite_for_aoi(
            aoi(cols=(50, 120), rows=(70, 150)), "2022-06-01", "2022-06-30", "sentinel-2-l2a",
            tmp_path / "cloudy", catalog="earth_search", catalog_url=catalog["url"], progress=False,
        )  # fmt: skip
    assert not (tmp_path / "cloudy").exists()  # the folder it made is gone too
    with pytest.raises(StacError, match="after the end date"):
        composite_for_aoi(aoi(), "2023-01-01", "2022-01-01", "sentinel-2-l2a", tmp_path / "o")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_access_rules_belong_to_the_href(monkeypatch, tmp_path):
    """A mirror's local paths and other public URLs need no credentials under any preset."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "EARTHDATA_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    local = str(tmp_path / "LC09_SR_B2.TIF")
    for hook in (RequesterPays(), EarthdataLogin(), PlanetaryComputer("http://127.0.0.1:9/x")):
        assert hook(local, "c") == Public()(local, "c")
        assert hook("https://mirror.example/a.tif", "c").env == {}
    assert RequesterPays()("s3://other-bucket/a.tif", "c").env == {"AWS_NO_SIGN_REQUEST": "YES"}
    assert RequesterPays()(f"file://{local}", "c").href == local


def test_access_hooks_say_which_credentials_to_set(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "EARTHDATA_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    href = "s3://usgs-landsat/collection02/level-2/x_SR_B2.TIF"
    with pytest.raises(AccessError, match="requester-pays.*AWS_ACCESS_KEY_ID"):
        RequesterPays()(href, "landsat-c2-l2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test")
    acc = RequesterPays()(href, "landsat-c2-l2")
    assert acc.href == "/vsis3/usgs-landsat/collection02/level-2/x_SR_B2.TIF"
    assert acc.env["AWS_REQUEST_PAYER"] == "requester"
    assert Public()("s3://sentinel-cogs/a.tif", "x").env == {"AWS_NO_SIGN_REQUEST": "YES"}
    edl = EarthdataLogin()
    lp = "https://data.lpdaac.earthdatacloud.nasa.gov/x/B02.tif"
    with pytest.raises(AccessError, match="EARTHDATA_TOKEN"):
        edl(lp, "HLSS30_2.0")
    (tmp_path / "netrc").write_text("machine urs.earthdata.nasa.gov login me password pw\n")
    assert edl(lp, "HLSS30_2.0").env["GDAL_HTTP_NETRC"] == "YES"
    monkeypatch.setenv("EARTHDATA_TOKEN", "tok")
    assert edl(lp, "c").env == {"GDAL_HTTP_HEADERS": "Authorization: Bearer tok"}
    pc = PlanetaryComputer(token_url="http://127.0.0.1:9/unused")
    assert pc("https://other.example/x.tif", "c").href == "https://other.example/x.tif"  # unsigned


def test_sentinel1_rtc_linear_power_becomes_db_without_a_cloud_mask(tmp_path):
    from stac_synth import ORIGIN, write_cog

    rng = np.random.default_rng(0)
    ground = 10 ** (rng.uniform(-2.5, -0.5, (2, 128, 128)))  # linear gamma0 of vv, vh
    cat = pystac.Catalog("s1", "synthetic Sentinel-1 RTC")
    col = pystac.Collection(
        "sentinel-1-rtc", "S1 RTC", pystac.Extent(pystac.SpatialExtent([[14, 37, 16, 39]]),
                                                  pystac.TemporalExtent([[None, None]])),
    )  # fmt: skip
    cat.add_child(col)
    geom = aoi(cols=(0, 128), rows=(0, 128))["geometry"]
    for d, gain in ((1, 1.0), (13, 1.1), (25, 0.9)):
        item = pystac.Item(f"S1A_IW_2023060{d % 10}_{d}", geom, None, datetime(2023, 6, d), {})
        for b, key in enumerate(("vv", "vh")):
            path = tmp_path / f"{item.id}_{key}.tif"
            write_cog(path, (ground[b] * gain).astype(np.float32),
                      rasterio.transform.from_origin(*ORIGIN, 10, 10), -32768, 64)  # fmt: skip
            item.add_asset(key, pystac.Asset(str(path), media_type=pystac.MediaType.COG))
        col.add_item(item)
    cat.normalize_hrefs(str(tmp_path / "cat"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    assert load_catalog("planetary_computer").source("sentinel-1-rtc").dtype == "float32"
    r = composite_for_aoi(
        aoi(cols=(8, 120), rows=(8, 120)), "2023-06-01", "2023-06-30", "sentinel-1-rtc",
        tmp_path / "out", catalog="planetary_computer",
        catalog_url=str(tmp_path / "cat" / "catalog.json"), progress=False,
    )  # fmt: skip
    assert r.bands == ["vv", "vh"] and len(r.provenance["items"]) == 3
    assert all(i["harmonized"] == ["linear power to dB"] for i in r.provenance["items"])
    with rasterio.open(r.images[0]) as src:
        db = src.read()
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        win = from_bounds(*r.grid.bounds, rasterio.transform.from_origin(*ORIGIN, 10, 10))
    r0, c0 = round(win.row_off), round(win.col_off)
    want = 10 * np.log10(
        ground[:, r0 : r0 + db.shape[1], c0 : c0 + db.shape[2]]
    )  # the median gain is 1
    with rasterio.open(r.count) as src:
        inside = src.read(1) == 3
    assert inside.mean() > 0.9
    assert np.allclose(db[:, inside], want[:, inside], atol=1e-4)


def test_a_local_catalog_that_cannot_be_read_whole_is_a_message(tmp_path):
    # a link out of the local catalog is refused, not fetched; a broken item is named; a
    # missing asset file is said at once (no retries: nothing transient about a local file)
    import shutil

    from datamodules.cog_read import AssetReadError
    from datamodules.stac_cli import percent

    def fresh(name):
        folder = tmp_path / name
        url = write_static_catalog(folder, write_items(folder))
        return folder, url

    folder, url = fresh("remote")
    cat = json.loads(url.read_text())
    cat["links"].append({"rel": "child", "href": "https://example.com/stac/other/collection.json"})
    url.write_text(json.dumps(cat))
    with pytest.raises(StacError, match="links to https://example.com/.*not on this machine"):
        run({"url": str(url)}, tmp_path / "o1")
    folder, url = fresh("broken")
    item = next((folder / "catalog").rglob("S2A_33SVB_20210610_0_L2A.json"))
    item.write_text("{ not json")
    with pytest.raises(StacError, match="cannot read the static catalog"):
        run({"url": str(url)}, tmp_path / "o2")
    folder, url = fresh("missing")
    shutil.rmtree(folder / "assets" / "S2A_33SVB_20210610_0_L2A")
    with pytest.raises(
        AssetReadError, match=r"20210610_0_L2A/\w+.tif does not exist; check the local catalog"
    ):
        run({"url": str(url)}, tmp_path / "o3")
    assert percent("35") == 35.0
    for bad in ("nan", "-5", "150", "x"):
        with pytest.raises(Exception, match="percentage from 0 to 100"):
            percent(bad)


def test_a_local_copy_in_any_of_stacs_shapes_gives_the_same_composite(catalog, tmp_path):
    """A catalog.json, a collection.json, an ItemCollection of relative hrefs (the file a
    search saves, with the API's self links), a stac-geoparquet file and one item's JSON are all
    catalogs; a copy of
    another collection, items naming none and plain GeoJSON are said, each with its fix."""
    import copy

    def composite(url, name, preset="earth_search"):
        r = composite_for_aoi(aoi(), "2021-01-01", "2023-12-31", "sentinel-2-l2a", tmp_path / name,
                              bands=BANDS, catalog=preset, catalog_url=str(url), progress=False)  # fmt: skip
        with rasterio.open(r.images[0]) as src:
            return src.read(), sorted(i["id"] for i in r.provenance["items"])

    want = composite(catalog["url"], "catalog")
    collection = Path(catalog["url"]).parent / "sentinel-2-l2a" / "collection.json"
    folder = catalog["dir"]
    features = []
    for item in copy.deepcopy(catalog["items"]):
        for asset in item["assets"].values():
            asset["href"] = Path(asset["href"]).relative_to(folder).as_posix()
        item["links"] = [{"rel": "self", "href": f"https://example.com/items/{item['id']}"}]
        features.append(item)
    found = folder / "search.json"
    found.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    import rustac  # the stac-geoparquet writer of the STAC tools (a bulk copy of a collection)

    bulk = folder / "items.parquet"
    rustac.write_sync(str(bulk), catalog["items"])
    for url in (collection, found, bulk):
        got = composite(url, url.stem)
        assert got[1] == want[1] and np.array_equal(got[0], want[0])
    one = next(Path(catalog["url"]).parent.rglob(f"{C}.json"))
    assert composite(one, "one")[1] == [C]

    c1 = folder / "c1.json"  # Earth Search's Collection 1 copied to disk: the preset reads it
    for item in features:
        item["collection"] = "sentinel-2-c1-l2a"
    c1.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    got = composite(c1, "c1")
    assert got[1] == want[1] and np.array_equal(got[0], want[0])

    v0 = folder / "v0.json"  # Earth Search v0's collection: not what the preset searches
    for item in features:
        item["collection"] = "sentinel-s2-l2a-cogs"
    v0.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.raises(StacError, match="holds 6 items, none of collection sentinel-2-c1-l2a, "
                       "sentinel-2-l2a") as e:  # fmt: skip
        composite(v0, "v0")
    assert "It holds sentinel-s2-l2a-cogs (6)" in str(e.value)
    # the hint, followed: the preset copied with its collection set
    preset = (PRESETS_DIR / "earth_search.yaml").read_text()
    own = tmp_path / "own.yaml"
    own.write_text(
        preset.replace("- collection: sentinel-2-l2a", "- collection: sentinel-s2-l2a-cogs")
    )
    got = composite(v0, "own", preset=str(own))
    assert got[1] == want[1] and np.array_equal(got[0], want[0])

    for item in features:
        del item["collection"]
    c1.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.raises(StacError, match='6 items name no collection: add "collection": "sentinel'):
        composite(c1, "none")
    plain = folder / "aoi.geojson"
    plain.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": aoi()}]}))  # fmt: skip
    with pytest.raises(StacError, match="GeoJSON, but its features are not STAC items"):
        composite(plain, "plain")


def test_a_copy_with_another_presets_asset_keys_names_that_preset(catalog, tmp_path):
    """Planetary Computer's items (assets B02, ..., SCL) copied to disk and read with the
    default preset: the message names the preset whose keys they are, and it works."""
    import copy

    from stac_synth import ASSET_KEYS

    items = copy.deepcopy(catalog["items"])
    for item in items:
        item["assets"] = {ASSET_KEYS.get(k, k.upper()): v for k, v in item["assets"].items()}
    url = tmp_path / "pc.json"
    url.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with pytest.raises(StacError, match="asset keys are the planetary_computer preset's: pass "
                       "--catalog planetary_computer"):  # fmt: skip
        run({"url": str(url)}, tmp_path / "es")
    r = composite_for_aoi(aoi(), "2021-01-01", "2023-12-31", "sentinel-2-l2a", tmp_path / "pc",
                          bands=BANDS, catalog="planetary_computer", catalog_url=str(url),
                          progress=False)  # fmt: skip
    want = run(catalog, tmp_path / "want")
    with rasterio.open(r.images[0]) as got, rasterio.open(want.images[0]) as src:
        assert np.array_equal(got.read(), src.read())


def test_the_margin_around_labels_is_searched_too(catalog, tmp_path, monkeypatch):
    # `data add --start/--end` composites the labels' extent plus a margin: the items are
    # searched over that margin too (a neighbouring tile that covers only the margin counts)
    import shapely
    from pyproj import Geod

    import datamodules.composite as composite

    geom = shapely.geometry.shape(aoi()["geometry"] if "geometry" in aoi() else aoi())
    wide = composite.widened(geom, 640)
    assert wide.contains(geom)
    lon0, lat0, lon1, lat1 = geom.bounds
    gap = Geod(ellps="WGS84").inv(lon1, lat0, wide.bounds[2], lat0)[2]
    assert 635 < gap < 660  # about 640 m east of the area, on the ground
    seen = []
    real = composite._plan
    monkeypatch.setattr(composite, "_plan", lambda req, *a: seen.append(req.geom) or real(req, *a))
    run(catalog, tmp_path / "margin", clip=False, margin_px=64)
    run(catalog, tmp_path / "clip", clip=True, margin_px=64)
    assert seen[0].contains(geom) and seen[0].area > geom.area and seen[1].equals(geom)


def test_one_acquisition_in_two_collections_is_read_once_and_broken_items_give_way():
    """Twins are told by platform, tile and time (Earth Search's grid:code or mgrs:* fields,
    Planetary Computer's s2:mgrs_tile, Landsat's WRS-2 path/row), else by footprint; default
    bands are not cut down to what a broken item has."""
    from datamodules.stac_source import usable_bands
    from datamodules.stac_twins import one_per_acquisition

    es = load_catalog("earth_search").source("sentinel-2-l2a")
    c1, old = es.collections
    all_keys = [*c1.assets.values(), "scl"]

    def found(spec, id_, minute=0, keys=all_keys, **props):
        when = datetime(2024, 5, 1, 10, tzinfo=UTC) + timedelta(minutes=minute)
        props = {"platform": "sentinel-2a", **props}
        item = pystac.Item(id_, None, [10, 40, 11, 41], when, props)
        for k in keys:
            item.add_asset(k, pystac.Asset(f"{id_}/{k}.tif"))
        return Found(item, spec)

    tile = {"grid:code": "MGRS-33SVB"}
    mgrs = {"mgrs:utm_zone": 33, "mgrs:latitude_band": "S", "mgrs:grid_square": "VB"}
    a = found(old, "old-a", **tile)  # clearest first: the order kept
    b = found(c1, "c1-a", **mgrs)  # the same tile, said the other way
    c = found(old, "old-b", **{"grid:code": "MGRS-33SWB"})  # the neighbouring tile
    d = found(old, "old-c", minute=100, **tile)  # the next orbit
    e = found(old, "old-d", platform="sentinel-2b", **tile)
    kept, twins = one_per_acquisition([a, b, c, d, e], es)
    assert [f.item.id for f in kept] == ["c1-a", "old-b", "old-c", "old-d"]
    assert twins == {"old-a": "the same acquisition as c1-a of sentinel-2-c1-l2a, read from "
                     "there (the catalog config lists sentinel-2-c1-l2a first)"}  # fmt: skip
    # no tile ids: the footprints decide; Planetary Computer's tile field; one collection
    assert len(one_per_acquisition([found(old, "x"), found(c1, "y")], es)[0]) == 1
    pc = {"s2:mgrs_tile": "33SVB"}
    assert len(one_per_acquisition([found(old, "x", **pc), found(c1, "y", **tile)], es)[0]) == 1
    zone5 = {"mgrs:utm_zone": 5, "mgrs:latitude_band": "Q", "mgrs:grid_square": "KB"}
    padded = {"grid:code": "MGRS-05QKB"}  # zone 5 written either way is one tile
    assert (
        len(one_per_acquisition([found(old, "x", **zone5), found(c1, "y", **padded)], es)[0]) == 1
    )
    assert len(one_per_acquisition([found(old, "x", **zone5), found(c1, "y", **tile)], es)[0]) == 2
    landsat = load_catalog("earth_search").source("landsat-c2-l2")
    wrs = {"landsat:wrs_path": "190", "landsat:wrs_row": "31", "platform": "landsat-9"}
    lc = [found(landsat.collections[0], i, keys=["red"], **wrs) for i in ("p", "q")]
    assert len(one_per_acquisition(lc, landsat)[0]) == 2  # one collection: every item kept

    # a broken item (two assets, no SCL) among whole ones: left out, with why; the bands stay
    whole = [found(old, f"w{i}", minute=i * 200, **tile) for i in range(3)]
    broken = found(old, "broken", minute=700, keys=["coastal", "nir09"], **tile)
    bands, left_out, keep, skipped = usable_bands([*whole, broken], "sentinel-2-l2a",
                                                  es.bands(), None, "")  # fmt: skip
    assert (
        bands == es.bands() and left_out == [] and [f.item.id for f in keep] == ["w0", "w1", "w2"]
    )
    assert skipped == {"broken": "lacks its quality-mask asset 'scl'"}
    broken = found(old, "broken", minute=700, keys=["coastal", "nir09", "scl"], **tile)
    bands, _, keep, skipped = usable_bands([*whole, broken], "sentinel-2-l2a", es.bands(), None, "")
    assert bands == es.bands() and skipped["broken"].startswith("lacks the asset(s) 'blue', ")
    # a band only one item has is left out, not the other items
    extra = [found(old, f"e{i}", minute=i * 200, keys=[k for k in all_keys if k != "nir09"])
             for i in range(3)] + [found(old, "e9", minute=900)]  # fmt: skip
    bands, left_out, keep, _ = usable_bands(extra, "sentinel-2-l2a", es.bands(), None, "")
    assert left_out == ["nir09"] and len(keep) == 4
    # a collection's one item is broken (no twin on its date): left out, the others read
    lone = found(c1, "c1-broken", minute=900, keys=["coastal", "nir09"], **tile)
    bands, _, keep, skipped = usable_bands([*whole, lone], "sentinel-2-l2a", es.bands(), None, "")
    assert [f.item.id for f in keep] == ["w0", "w1", "w2"] and "c1-broken" in skipped
    # no item of a collection with its mask: the config's key is wrong, said at once
    two = [found(c1, f"c1-{i}", minute=900 + i * 200, keys=["red"]) for i in range(2)]
    with pytest.raises(StacError, match="item c1-0 of sentinel-2-c1-l2a has no quality-mask"):
        usable_bands([*whole, *two], "sentinel-2-l2a", es.bands(), None, "")
    with pytest.raises(StacError, match="has no quality-mask asset 'scl'"):
        usable_bands([found(old, "z", keys=["red"])], "sentinel-2-l2a", es.bands(), None, "")
