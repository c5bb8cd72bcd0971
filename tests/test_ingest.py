import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from synth import CLASSES, make_labels, make_scene

from datamodules.imagery import ImageryError
from datamodules.ingest import ingest
from datamodules.labels import LabelError
from datamodules.manifest import DatasetError, list_datasets, load_dataset
from datamodules.splits import SplitError


def test_polygons_rasterized_once_onto_image_grid(home, scene):
    ds = ingest(
        name="Coast 1",
        images=[scene["image"]],
        labels=scene["labels"],
        class_column="class_name",
        block_size=32,
        progress=False,
    )
    m = ds.manifest
    assert ds.id == "coast_1" and (home / "datasets" / "coast_1" / "dataset.json").is_file()
    assert [c["name"] for c in m["classes"]] == sorted(CLASSES)
    assert m["bands"] == ["blue", "green", "red", "nir08"]
    assert m["crs"] == "EPSG:32633" and m["resolution"] == [10.0, 10.0] and m["shape"] == [128, 128]
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    with rasterio.open(ds.file("units")) as src:
        units = src.read(1)
    labelled = mask != 255
    assert 0.2 < labelled.mean() < 0.95
    assert ((units > 0) == labelled).all()
    # every labelled pixel carries the class of the synthetic region it lies in
    names = [c["name"] for c in m["classes"]]
    truth = np.array([names.index(CLASSES[v]) for v in range(len(CLASSES))])[scene["cmap"]]
    assert (mask[labelled] == truth[labelled]).mean() > 0.99
    assert sum(c["pixels"] for c in m["classes"]) == int(labelled.sum())
    # spatial splits: whole units, all classes in every split
    per_split = m["splits"]["pixels"]
    assert set(per_split) == {"train", "val", "test"}
    assert all(v > 0 for s in per_split.values() for v in s.values())
    # statistics over valid pixels
    with rasterio.open(scene["image"]) as src:
        img = src.read().astype(float)
    np.testing.assert_allclose(m["stats"]["mean"], img.reshape(4, -1).mean(1), rtol=1e-4)
    np.testing.assert_allclose(m["stats"]["std"], img.reshape(4, -1).std(1), rtol=1e-3)


def test_name_clash_and_listing(home, scene):
    kw = dict(
        images=[scene["image"]],
        labels=scene["labels"],
        class_column="class_name",
        block_size=32,
        progress=False,
    )
    ingest(name="a", **kw)
    with pytest.raises(DatasetError, match="already exists"):
        ingest(name="a", **kw)
    assert [d.id for d in list_datasets()] == ["a"]
    assert load_dataset("a").num_classes == 3


def test_missing_class_column_lists_columns(home, scene):
    with pytest.raises(
        LabelError,
        match=r"no column 'crop'; columns are: class_name, geometry.*--class-column class_name",
    ):
        ingest(
            name="x",
            images=[scene["image"]],
            labels=scene["labels"],
            class_column="crop",
            progress=False,
        )
    assert list_datasets() == []


def test_labels_outside_imagery_names_both_extents(home, tmp_path, scene):
    far, cmap = make_scene(tmp_path, size=64, seed=3, origin=(700000.0, 4800000.0), name="far.tif")
    with pytest.raises(
        LabelError,
        match=r"entirely outside the imagery: labels cover lon .* the imagery covers lon",
    ):
        ingest(
            name="x",
            images=[far],
            labels=scene["labels"],
            class_column="class_name",
            progress=False,
        )


def test_raster_without_crs(home, tmp_path, scene):
    bad = tmp_path / "nocrs.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 8, 8), dtype="uint8"))
    with pytest.raises(ImageryError, match="has no CRS"):
        ingest(
            name="x",
            images=[bad],
            labels=scene["labels"],
            class_column="class_name",
            progress=False,
        )


def test_band_count_must_match_sensor(home, scene):
    with rasterio.open(scene["image"], "r+") as dst:
        dst.descriptions = (None, None, None, None)
    with pytest.raises(ImageryError, match="has 4 bands but sensor sentinel-2-l2a has 12"):
        ingest(
            name="x",
            images=[scene["image"]],
            labels=scene["labels"],
            class_column="class_name",
            sensor="sentinel-2-l2a",
            progress=False,
        )


def test_labels_in_one_block_train_every_class_and_say_there_is_no_held_out_metric(home, tmp_path):
    path, cmap = make_scene(tmp_path, size=64, seed=1)
    labels = make_labels(tmp_path, path, cmap, keep=1.0)
    with pytest.warns(UserWarning) as caught:
        ds = ingest(
            name="x",
            images=[path],
            labels=labels,
            class_column="class_name",
            block_size=64,
            progress=False,
        )
    text = [str(w.message) for w in caught]
    sp = ds.manifest["splits"]
    assert sp["units"] == {"train": sum(c["units"] for c in ds.classes), "val": 0, "test": 0}
    for c in ds.classes:
        assert sp["reach"][c["slug"]]["splits"] == ["train"]
        note = sp["reach"][c["slug"]]["note"]
        assert note.startswith(f"{c['name']}: train only, no held-out metric") and note in text
    assert any(
        t.startswith("no validation labels: training runs the configured epochs") for t in text
    )
    assert sp["notes"] == [t for t in text if t.startswith("no ")]


def test_a_single_labelled_class_is_refused_with_a_hint_that_works(home, tmp_path, scene):
    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"])
    path = tmp_path / "water.geojson"
    gdf[gdf["class_name"] == "water"].to_file(path)
    with pytest.raises(SplitError, match=r"only one class \('water'\) is labelled.* --background"):
        _add("x", scene["image"], path)
    assert list_datasets() == []
    ds = _add("x", scene["image"], path, background="other")
    assert [c["name"] for c in ds.classes] == ["other", "water"]


def test_mask_labels_keep_zero_as_a_class(home, tmp_path, scene):
    mask_path = tmp_path / "mask.tif"
    with rasterio.open(scene["image"]) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 99}
    m = scene["cmap"].copy()
    m[:10] = 99  # unlabelled
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.write(m, 1)
    ds = ingest(name="m", images=[scene["image"]], labels=mask_path, block_size=32, progress=False)
    assert [c["value"] for c in ds.classes] == [0, 1, 2]
    assert ds.manifest["label_kind"] == "mask"
    units = json.loads((ds.path / "dataset.json").read_text())["splits"]["units"]
    assert sum(units.values()) > 3


# -- helpers ---------------------------------------------------------------------------------------
def _add(name, image, labels, **kw):
    kw = {"class_column": "class_name", "block_size": 32, "progress": False} | kw
    images = image if isinstance(image, list) else [image]
    return ingest(name=name, images=images, labels=labels, **kw)


def _read(path, band=1):
    with rasterio.open(path) as src:
        return src.read(band)


def _truth_ids(ds, cmap):
    names = [c["name"] for c in ds.classes]
    return np.array([names.index(c) for c in CLASSES])[cmap]


# -- every accepted vector format ------------------------------------------------------------------
def _zip_shapefile(tmp_path, scene):
    import zipfile

    shp_dir = tmp_path / "shp"
    shp_dir.mkdir()
    shp = make_labels(shp_dir, scene["image"], scene["cmap"], name="fields.shp")
    out = tmp_path / "fields.zip"
    with zipfile.ZipFile(out, "w") as z:
        for f in shp_dir.iterdir():
            z.write(f, f.name)
    assert shp.is_file()
    return out


def test_every_vector_format_gives_the_same_rasters(home, scene, tmp_path):
    files = {
        "geojson": scene["labels"],
        "gpkg": make_labels(tmp_path, scene["image"], scene["cmap"], name="l.gpkg"),
        "zipped shapefile": _zip_shapefile(tmp_path, scene),
        "geoparquet": make_labels(tmp_path, scene["image"], scene["cmap"], name="l.parquet"),
        "flatgeobuf": make_labels(tmp_path, scene["image"], scene["cmap"], name="l.fgb"),
    }
    masks, units = {}, {}
    for kind, path in files.items():
        ds = _add(kind, scene["image"], path)
        assert ds.manifest["label_kind"] == "polygons"
        assert [c["name"] for c in ds.classes] == sorted(CLASSES), kind
        masks[kind], units[kind] = _read(ds.file("mask")), _read(ds.file("units"))
        labelled = masks[kind] != 255
        assert labelled.mean() > 0.2
        assert (masks[kind][labelled] == _truth_ids(ds, scene["cmap"])[labelled]).mean() > 0.99
    ref = units["geojson"]
    for kind in files:
        np.testing.assert_array_equal(masks[kind], masks["geojson"], err_msg=kind)
        # the same units, numbered in the file's feature order (FlatGeobuf sorts spatially)
        pairs = np.unique(np.stack([units[kind].ravel(), ref.ravel()]), axis=1)
        assert pairs.shape[1] == len(np.unique(ref)) == len(np.unique(units[kind])), kind
    assert len(list_datasets()) == 5


def test_mask_raster_in_another_crs_and_resolution_is_warped_onto_the_image(home, scene, tmp_path):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(scene["image"]) as src:
        src_t, src_crs, w, h, bounds = src.transform, src.crs, src.width, src.height, src.bounds
    dst_t, dw, dh = calculate_default_transform(src_crs, "EPSG:3857", w, h, *bounds, resolution=6.0)
    dst = np.full((dh, dw), 200, dtype=np.uint8)
    reproject(
        scene["cmap"].astype(np.uint8), dst, src_transform=src_t, src_crs=src_crs,
        dst_transform=dst_t, dst_crs="EPSG:3857", resampling=Resampling.nearest, dst_nodata=200,
    )  # fmt: skip
    path = tmp_path / "mask_3857.tif"
    profile = dict(driver="GTiff", width=dw, height=dh, count=1, dtype="uint8", crs="EPSG:3857")
    with rasterio.open(path, "w", transform=dst_t, nodata=200, **profile) as out:
        out.write(dst, 1)
    ds = _add("warped", scene["image"], path, class_column=None)
    m = ds.manifest
    assert m["crs"] == "EPSG:32633" and m["shape"] == [128, 128] and m["label_kind"] == "mask"
    assert [c["value"] for c in ds.classes] == [0, 1, 2]
    mask = _read(ds.file("mask"))
    labelled = mask != 255
    assert labelled.mean() > 0.95
    assert (mask[labelled] == scene["cmap"][labelled]).mean() > 0.95


# -- band files at different resolutions, dates ----------------------------------------------------
def _band_files(tmp_path, size=128, date_tag=None):
    """Four Sentinel-2 style single-band files: B02, B03 at 10 m; B04, B8A at 20 m."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(7)
    paths, full = [], {}
    for asset, res in (("B02", 10), ("B03", 10), ("B04", 20), ("B8A", 20)):
        n = size * 10 // res
        data = rng.integers(500, 3000, (n, n)).astype(np.uint16)
        full[asset] = data
        path = tmp_path / f"T33UUP_20240612_{asset}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint16", nodata=0,
            crs="EPSG:32633", transform=from_origin(500000, 4200000, res, res),
        ) as dst:  # fmt: skip
            dst.write(data, 1)
            if date_tag:
                dst.update_tags(ACQUISITION_DATE=date_tag)
        paths.append(path)
    return paths, full


def test_band_files_at_different_resolutions_are_stacked_on_the_finest_grid(home, tmp_path, scene):
    paths, full = _band_files(tmp_path)
    ds = _add("s2", paths, scene["labels"], sensor="sentinel-2-l2a")
    m = ds.manifest
    assert m["bands"] == ["blue", "green", "red", "nir08"]
    assert m["resolution"] == [10.0, 10.0] and m["shape"] == [128, 128]
    with rasterio.open(ds.images[0]) as src:
        img = src.read()
        assert src.descriptions == ("blue", "green", "red", "nir08")
    np.testing.assert_array_equal(img[0], full["B02"])  # 10 m bands copied as they are
    # 20 m bands resampled (bilinear) onto the 10 m grid: a 20 m pixel's centre keeps its value
    # on average, and the mean over the scene is preserved
    coarse = img[2].reshape(64, 2, 64, 2).mean((1, 3))
    assert abs(coarse.mean() - full["B04"].mean()) < 0.01 * full["B04"].mean()
    assert np.corrcoef(coarse.ravel(), full["B04"].astype(float).ravel())[0, 1] > 0.5


def test_a_pixel_missing_from_one_band_file_is_nodata_in_every_band(home, tmp_path, scene):
    # the 20 m files cropped one 20 m pixel short of the 10 m ones, and one 20 m pixel of B04 at
    # its fill value: those pixels were stacked with 0 in two bands and counted valid

    from datamodules.imagery import open_scenes
    from datamodules.scene_reader import SceneReader

    paths, full = _band_files(tmp_path)
    for path in paths[2:]:
        with rasterio.open(path) as src:
            data, profile = src.read(1)[:63, :63], src.profile
        if path.name.endswith("B04.tif"):
            data[10, 20] = 0
        with rasterio.open(path, "w", **(profile | {"width": 63, "height": 63})) as dst:
            dst.write(data, 1)
    ds = _add("short", paths, scene["labels"], sensor="sentinel-2-l2a")
    with rasterio.open(ds.images[0]) as src:
        img = src.read()
    missing = np.zeros((128, 128), dtype=bool)
    missing[126:, :] = missing[:, 126:] = True  # beyond the 20 m files
    missing[20:22, 40:42] = True  # B04's fill value, a 20 m pixel
    assert (img[:, missing] == 0).all()  # every band, so the pixel is nodata
    assert (img[:, ~missing] != 0).all()
    np.testing.assert_array_equal(img[0][~missing], full["B02"][~missing])
    # without a nodata value nothing could mark those pixels: refused with a hint
    for path in paths:
        with rasterio.open(path, "r+") as dst:
            dst.nodata = None
    bare = open_scenes(paths, bands=["blue", "green", "red", "nir08"])[0]
    with pytest.raises(ImageryError, match="cover different areas .* rio edit-info --nodata 0"):
        SceneReader(bare)


def test_dates_from_file_metadata_from_the_user_or_unknown(home, tmp_path, scene):
    paths, _ = _band_files(tmp_path, date_tag="2024-06-12T10:30:00")
    tagged = _add("tagged", paths, scene["labels"], sensor="sentinel-2-l2a").manifest["dates"]
    assert tagged == ["2024-06-12T10:30:00+00:00"]  # the time of day is kept (UTC, as satellites)
    given = _add("given", paths, scene["labels"], sensor="sentinel-2-l2a", dates=["2023-01-05"])
    assert given.manifest["dates"] == ["2023-01-05"]
    assert given.manifest["images"][0]["date"] == "2023-01-05"
    unknown = _add("unknown", [scene["image"]], scene["labels"])
    assert unknown.manifest["dates"] == [None]
    with pytest.raises(ImageryError, match="date '12/06/2024' is not an ISO date"):
        _add("bad", [scene["image"]], scene["labels"], dates=["12/06/2024"])


def test_dates_from_the_missions_file_names_where_no_tag_gives_one(home, tmp_path, scene):
    import shutil

    paths, _ = _band_files(tmp_path)
    named = []
    for p in paths:  # as ESA names a granule's band files
        band = p.stem.rsplit("_", 1)[1]
        named.append(shutil.copy(p, tmp_path / f"T33UUP_20240612T101031_{band}_10m.tif"))
    s2 = _add("s2", named, scene["labels"], sensor="sentinel-2-l2a")
    assert s2.manifest["dates"] == ["2024-06-12T10:10:31+00:00"]
    landsat = tmp_path / "LC09_L2SP_191026_20230612_20230620_02_T1_SR.tif"
    shutil.copy(scene["image"], landsat)
    assert _add("ls", [landsat], scene["labels"]).manifest["dates"] == ["2023-06-12"]
    with rasterio.open(landsat, "r+") as dst:
        dst.update_tags(ACQUISITION_DATE="2023-06-13")  # a tag says more than a name
    assert _add("tag", [landsat], scene["labels"]).manifest["dates"] == ["2023-06-13"]
    odd = tmp_path / "LC09_L2SP_191026_20231399_20230620_02_T1_SR.tif"  # no calendar date
    shutil.copy(scene["image"], odd)
    assert _add("odd", [odd], scene["labels"]).manifest["dates"] == [None]


# -- geometries, nodata, bad input -----------------------------------------------------------------
def test_invalid_geometries_are_repaired_with_a_warning_and_counted(home, scene, tmp_path):
    import geopandas as gpd
    import shapely

    gdf = gpd.read_file(scene["labels"])
    x0, y0, x1, y1 = gdf.total_bounds
    cx, cy, d = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 10
    bowties = [  # self-intersecting "figure eight" polygons: invalid, repairable
        shapely.Polygon([(cx, cy), (cx + d, cy + d), (cx + d, cy), (cx, cy + d)]),
        shapely.Polygon([(cx - d, cy - d), (cx, cy), (cx, cy - d), (cx - d, cy)]),
    ]
    bad = gpd.GeoDataFrame({"class_name": ["water", "forest"]}, geometry=bowties, crs=gdf.crs)
    path = tmp_path / "with_invalid.gpkg"
    gpd.pd.concat([gdf, bad]).to_file(path)
    with pytest.warns(UserWarning, match=r"2 invalid geometries repaired \(make_valid\)"):
        ds = _add("repaired", scene["image"], path)
    assert ds.manifest["source"]["n_invalid_repaired"] == 2
    assert ds.manifest["source"]["n_labels"] == len(gdf) + 2


def test_all_nodata_scene_is_refused_and_leaves_nothing(home, tmp_path, scene):
    path = tmp_path / "empty.tif"
    with rasterio.open(scene["image"]) as src:
        profile = src.profile
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((4, 128, 128), dtype=np.uint16))
    with pytest.raises(
        ImageryError, match=r"the imagery is all nodata: every pixel equals the nodata value \(0"
    ):
        _add("empty", path, scene["labels"], bands=["blue", "green", "red", "nir08"])
    assert list_datasets() == []
    assert not any((home / "datasets").glob(".tmp-*"))


def test_unreadable_files_say_what_is_accepted(home, tmp_path, scene):
    junk = tmp_path / "broken.tif"
    junk.write_text("not a GeoTIFF")
    with pytest.raises(ImageryError, match=r"cannot read image .*broken.tif.*Give a GeoTIFF/COG"):
        _add("x", junk, scene["labels"])
    bad_labels = tmp_path / "labels.geojson"
    bad_labels.write_text("{not json")
    with pytest.raises(
        LabelError, match=r"cannot read labels file labels.geojson.*Accepted: GeoJSON"
    ):
        _add("x", scene["image"], bad_labels)
    with pytest.raises(LabelError, match=r"labels file .*missing.gpkg does not exist"):
        _add("x", scene["image"], tmp_path / "missing.gpkg")
    assert list_datasets() == []


def test_labels_without_crs_are_told_the_crs_they_look_like_and_the_fix_works(
    home, tmp_path, scene
):
    """A CSV with a WKT column (QGIS's export) or a shapefile without its .prj has no CRS: the
    message says whether the coordinates look like longitude/latitude or are projected and fall
    on the imagery in its CRS, and its command sets that CRS."""
    import subprocess
    import sys

    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"]).to_crs("EPSG:32633")
    table = gdf.assign(WKT=gdf.geometry.to_wkt()).drop(columns="geometry")
    path = tmp_path / "labels_wkt.csv"
    table[["WKT", "class_name"]].to_csv(path, index=False)
    with pytest.raises(LabelError) as e:
        _add("x", scene["image"], path)
    text = str(e.value)
    assert text.startswith("labels_wkt.csv has no CRS (its coordinates: x ")
    assert "projected coordinates that fall on the imagery read in its CRS (EPSG:32633)" in text
    command = text.split("python -c ", 1)[1].split(", then give")[0].strip('"')
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True)
    _add("x", scene["image"], tmp_path / "labels_wkt_crs.gpkg")
    lonlat = tmp_path / "nocrs.gpkg"
    gdf.to_crs(4326).set_crs(None, allow_override=True).to_file(lonlat)
    with pytest.raises(LabelError, match=r"they look like longitude/latitude \(EPSG:4326\)"):
        _add("y", scene["image"], lonlat)


def test_kml_from_google_earth_names_its_class_column(home, tmp_path, scene):
    # Google Earth keeps a placemark's text in Name; KML's empty id column is no hint
    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"]).to_crs("OGC:CRS84")
    marks = []
    for name, geom in zip(gdf["class_name"], gdf.geometry, strict=True):
        ring = " ".join(f"{x:.7f},{y:.7f},0" for x, y in geom.exterior.coords)
        marks.append(
            f"<Placemark><name>{name}</name><Polygon><outerBoundaryIs><LinearRing><coordinates>"
            f"{ring}</coordinates></LinearRing></outerBoundaryIs></Polygon></Placemark>"
        )
    path = tmp_path / "drawn.kml"
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><kml xmlns="http://www.opengis.net/kml/2.2">'
        f"<Document>{''.join(marks)}</Document></kml>"
    )
    values = ", ".join(sorted(set(gdf["class_name"])))
    with pytest.raises(LabelError) as e:
        _add("x", scene["image"], path)
    assert str(e.value).endswith(f"Pass --class-column Name (its values: {values}).")
    ds = _add("x", scene["image"], path, class_column="Name")  # the hint, as given
    assert sorted(c["name"] for c in ds.classes) == sorted(set(gdf["class_name"]))
    assert ds.manifest["source"]["n_labels"] == len(gdf)


def test_one_polygon_of_a_class_among_many_does_not_block_the_dataset(home, tmp_path, scene):
    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"])
    keep = gdf[gdf["class_name"] != "water"]
    one_water = gdf[gdf["class_name"] == "water"].iloc[:1]
    path = tmp_path / "rare.geojson"
    gpd.pd.concat([keep, one_water]).to_file(path)
    with pytest.warns(UserWarning, match=r"water: train only, no held-out metric \(1 polygon\)"):
        ds = _add("x", scene["image"], path)
    sp = ds.manifest["splits"]
    assert sp["reach"]["water"] == {
        "splits": ["train"],
        "how": "blocks",
        "note": sp["reach"]["water"]["note"],
    }
    assert sp["pixels"]["train"]["water"] > 0
    for slug in ("field", "forest"):  # the other classes keep their held-out splits
        assert sp["reach"][slug]["splits"] == ["train", "val", "test"]
        assert sp["reach"][slug]["note"] is None


# -- user splits and background --------------------------------------------------------------------
def test_split_column_fixes_every_polygons_split(home, tmp_path, scene):
    import csv

    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"])
    gdf["fold"] = ["train", "val", "test", "train", "Validation"] * (len(gdf) // 5) + ["train"] * (
        len(gdf) % 5
    )
    path = tmp_path / "with_split.gpkg"
    gdf.to_file(path)
    ds = _add("user", scene["image"], path, split_column="fold", min_class_pixels=1)
    assert ds.manifest["splits"]["method"] == "column"
    with open(ds.file("units_table")) as f:
        rows = list(csv.DictReader(f))
    expected = gdf["fold"].str.lower().replace({"validation": "val"}).tolist()
    assert len(rows) > 0.9 * len(gdf)
    for r in rows:  # unit ids are 1 + the label's row
        assert r["split"] == expected[int(r["unit_id"]) - 1]

    gdf.loc[3, "fold"] = "holdout"
    gdf.to_file(path)
    with pytest.raises(
        LabelError,
        match=r"1 label\(s\) in with_split.gpkg have a split value in 'fold' that is not train, val or test: holdout",
    ):
        _add("bad", scene["image"], path, split_column="fold")
    with pytest.raises(
        LabelError, match=r"no column 'folds'; columns are: class_name, fold, geometry"
    ):
        _add("bad", scene["image"], path, split_column="folds")


def test_background_class_covers_every_valid_unlabelled_pixel(home, tmp_path):
    path, cmap = make_scene(tmp_path, size=128, seed=0, nodata_corner=20)
    labels = make_labels(tmp_path, path, cmap, keep=0.5)
    ds = _add("bg", path, labels, background="other")
    bg = ds.classes[0]
    assert bg["name"] == "other" and bg.get("background") is True
    assert [c["name"] for c in ds.classes[1:]] == sorted(CLASSES)
    assert ds.manifest["background"] == "other"
    mask, units = _read(ds.file("mask")), _read(ds.file("units"))
    nodata = np.zeros((128, 128), dtype=bool)
    nodata[:20, :20] = True
    assert (mask[nodata] == 255).all() and (units[nodata] == 0).all()
    assert (mask[~nodata] != 255).all() and (units[~nodata] > 0).all()
    # the polygons keep their classes; background units are regions within split blocks
    plain = _add("plain", path, labels)
    pm = _read(plain.file("mask"))
    np.testing.assert_array_equal(mask[pm != 255], pm[pm != 255] + 1)
    assert (mask[(pm == 255) & ~nodata] == 0).all()
    assert bg["units"] >= 16 and bg["pixels"] == int(((pm == 255) & ~nodata).sum())


def test_class_table_file_places_the_background_class(home, tmp_path, scene):
    table = tmp_path / "classes.json"
    table.write_text(
        json.dumps(
            [
                {"id": 0, "name": "Water", "value": "water", "color": "#0000ff"},
                {"id": 1, "name": "Forest", "value": "forest"},
                {"id": 2, "name": "Field", "value": "field"},
                {"id": 3, "name": "other"},
            ]
        )
    )
    ds = _add("tbl", scene["image"], scene["labels"], classes_file=table, background="other")
    assert [(c["id"], c["name"], c.get("background", False)) for c in ds.classes] == [
        (0, "Water", False), (1, "Forest", False), (2, "Field", False), (3, "other", True),
    ]  # fmt: skip
    assert ds.classes[0]["color"] == "#0000ff" and ds.manifest["num_classes"] == 4
    mask = _read(ds.file("mask"))
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}
    with pytest.raises(LabelError, match=r"--background 'rest' is not a class of .*classes.json"):
        _add("tbl2", scene["image"], scene["labels"], classes_file=table, background="rest")


# -- class values as other tools and people write them ---------------------------------------------
def _renamed(scene, tmp_path, rename):
    """The scene's labels with each polygon's class value replaced by ``rename(i, value)``."""
    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"])
    gdf["class_name"] = [rename(i, v) for i, v in enumerate(gdf["class_name"])]
    path = tmp_path / "renamed.gpkg"
    gdf.to_file(path)
    return path


def test_class_names_differing_in_case_or_spaces_are_one_class_and_blank_is_no_class(
    home, scene, tmp_path
):
    base = _add("base", scene["image"], scene["labels"])

    def rename(i, v):
        return ["", "  "][i % 2] if i % 11 == 0 else [v, f" {v}", v.capitalize(), f"{v} "][i % 4]

    with pytest.warns(UserWarning) as caught:
        ds = _add("spelled", scene["image"], _renamed(scene, tmp_path, rename))
    text = [str(w.message) for w in caught]
    assert any("without a class value (missing or blank)" in t for t in text)
    assert sum("differ only in case: taken as one class" in t for t in text) == len(CLASSES)
    assert [c["name"].casefold() for c in ds.classes] == sorted(CLASSES)
    # the blank ones dropped, every other pixel as in the plain file
    mask, ref = _read(ds.file("mask")), _read(base.file("mask"))
    assert ((mask == ref) | (mask == 255)).all() and (mask != 255).sum() > 0.8 * (ref != 255).sum()
    slugs = [c["slug"] for c in ds.classes]
    assert len(set(slugs)) == len(slugs) and set(ds.manifest["splits"]["reach"]) == set(slugs)


def test_names_without_ascii_letters_keep_a_slug_of_their_own(home, scene, tmp_path):
    names = dict(zip(sorted(CLASSES), ["水", "forêt", "森"], strict=True))
    ds = _add("cjk", scene["image"], _renamed(scene, tmp_path, lambda i, v: names[v]))
    by_name = {c["name"]: c for c in ds.classes}
    assert set(by_name) == set(names.values())
    slugs = [c["slug"] for c in ds.classes]
    assert by_name["forêt"]["slug"] == "foret" and len(set(slugs)) == 3
    assert {by_name["水"]["slug"], by_name["森"]["slug"]} <= {"class_0", "class_1", "class_2"}
    # per-class figures are each class's own (once all were summed under one slug "class")
    reach = ds.manifest["splits"]["pixels"]
    for c in ds.classes:
        assert sum(reach[s][c["slug"]] for s in reach) == c["pixels"], c


def test_float_masks_with_nan_or_negative_nodata_and_fractional_values(home, scene, tmp_path):
    with rasterio.open(scene["image"]) as src:
        profile = src.profile | {"count": 1, "dtype": "float32"}
    truth = scene["cmap"].astype(np.float32)
    for nodata in (float("nan"), -1.0):
        m = truth.copy()
        m[:10] = nodata
        m[:2, :2] = np.inf  # not a class either (was an OverflowError)
        path = tmp_path / f"mask_{nodata}.tif"
        with rasterio.open(path, "w", **(profile | {"nodata": nodata})) as dst:
            dst.write(m, 1)
        ds = _add(f"f{nodata}", scene["image"], path, class_column=None)
        assert [c["value"] for c in ds.classes] == [0, 1, 2]
        mask = _read(ds.file("mask"))
        assert (mask[:10] == 255).all() and (mask[10:] == scene["cmap"][10:]).all()
    m = truth.copy()
    m[50, 50] = 1.5
    path = tmp_path / "fractional.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(m, 1)
    with pytest.raises(LabelError, match=r"not whole numbers \(1.5\).*gdal_translate -ot Int16"):
        _add("frac", scene["image"], path, class_column=None)
    assert not (home / "datasets" / "frac").exists()


def test_geometry_collections_count_as_their_polygons(home, scene, tmp_path):
    import geopandas as gpd
    import shapely

    gdf = gpd.read_file(scene["labels"])
    line = shapely.LineString([(0, 0), (1, 1)])
    gdf.loc[0, "geometry"] = shapely.GeometryCollection([gdf.geometry[0], line])
    gdf.loc[1, "geometry"] = shapely.GeometryCollection([line])
    path = tmp_path / "gc.gpkg"
    gdf.to_file(path)
    with pytest.warns(UserWarning, match="1 GeometryCollection label.*hold no polygon"):
        ds = _add("gc", scene["image"], path)
    base = _add("plain", scene["image"], scene["labels"])
    assert len(ds.classes) == 3
    units, ref = _read(ds.file("units")), _read(base.file("units"))
    # the first polygon kept whole, the second (a line only) dropped
    assert len(np.unique(units)) == len(np.unique(ref)) - 1
    assert ((units > 0) == ((ref > 0) & (ref != 2))).all()


def test_a_file_with_several_layers_reads_the_one_with_the_class_column_or_asks(
    home, scene, tmp_path
):
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    gdf = gpd.read_file(scene["labels"])
    path = tmp_path / "layers.gpkg"
    notes = gdf.iloc[:3][["geometry"]].assign(note="check")
    notes.to_file(path, layer="aaa_notes")  # first in the file, no class column
    gdf.to_file(path, layer="labels")
    # a table without geometries that names the classes too (a legend) holds no labels
    legend = pd.DataFrame({"class_name": sorted(set(gdf["class_name"])), "colour": "#00aa00"})
    pyogrio.write_dataframe(legend, path, layer="legend")
    with pytest.warns(UserWarning, match="holds 3 layers; reading 'labels', the only one"):
        ds = _add("layers", scene["image"], path)
    ref = _add("one_layer", scene["image"], scene["labels"])
    np.testing.assert_array_equal(_read(ds.file("mask")), _read(ref.file("mask")))
    # two layers with the class column: which one is the user's to say
    gdf.iloc[:3].to_file(path, layer="aaa_notes", mode="w")
    with pytest.raises(LabelError, match="holds 3 layers and geotune reads one: .*'aaa_notes' "
                       r".*--labels-layer NAME"):  # fmt: skip
        _add("two", scene["image"], path)
    assert not (home / "datasets" / "two").exists()
    # the hint, followed on the command line; a layer it does not have is named with the others
    from trainer.cli import main

    args = ["data", "add", "--image", str(scene["image"]), "--labels", str(path),
            "--class-column", "class_name", "--block-size", "32"]  # fmt: skip
    assert main([*args, "--name", "two", "--labels-layer", "labels"]) == 0
    two = load_dataset("two")
    np.testing.assert_array_equal(_read(two.file("mask")), _read(ref.file("mask")))
    assert two.manifest["source"]["labels_layer"] == "labels"
    with pytest.raises(
        LabelError, match="has no layer 'Labels'; its layers: 'labels', 'aaa_notes'"
    ):
        _add("three", scene["image"], path, labels_layer="Labels")


def test_labels_in_a_file_geodatabase_folder_or_zipped(home, scene, tmp_path):
    """ArcGIS keeps labels in a File Geodatabase (a .gdb folder) and shares it zipped."""
    import shutil

    import geopandas as gpd

    gdb = tmp_path / "share" / "fields.gdb"
    gdb.parent.mkdir()
    gpd.read_file(scene["labels"]).to_file(gdb, layer="training", driver="OpenFileGDB")
    zipped = shutil.make_archive(str(tmp_path / "fields.gdb"), "zip", tmp_path / "share")
    ref = _add("plain", scene["image"], scene["labels"])
    for name, labels in (("folder", gdb), ("zipped", Path(zipped))):
        ds = _add(name, scene["image"], labels)
        np.testing.assert_array_equal(_read(ds.file("mask")), _read(ref.file("mask")))
    with pytest.raises(LabelError, match="share is a folder, not a labels file.*fields.gdb"):
        _add("other", scene["image"], gdb.parent)


def test_a_zipped_shapefile_in_a_folder_of_its_zip(home, scene, tmp_path):
    import zipfile

    shp_dir = tmp_path / "shp"
    shp_dir.mkdir()
    make_labels(shp_dir, scene["image"], scene["cmap"], name="fields.shp")
    out = tmp_path / "export.zip"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("export/labels/", "")  # a folder entry, as zip -r writes it
        for f in shp_dir.iterdir():
            z.write(f, f"export/labels/{f.name}")
    ds = _add("zipdir", scene["image"], out)
    ref = _add("plain", scene["image"], scene["labels"])
    np.testing.assert_array_equal(_read(ds.file("mask")), _read(ref.file("mask")))
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("readme.txt", "no labels here")
    with pytest.raises(LabelError, match=r"holds no shapefile \(.shp\)"):
        _add("nozip", scene["image"], tmp_path / "empty.zip")


def test_projected_coordinates_in_a_geojson_without_crs_are_named(home, scene, tmp_path):
    import json as _json

    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"]).to_crs(3857)
    raw = _json.loads(gdf.to_json())
    raw.pop("crs", None)  # no crs member: readers take it as EPSG:4326
    path = tmp_path / "nocrs.geojson"
    path.write_text(_json.dumps(raw))
    with pytest.raises(LabelError, match="projected coordinates without their CRS"):
        _add("nocrs", scene["image"], path)


def test_polygons_that_give_no_pixel_are_counted(home, tmp_path):
    import re

    import geopandas as gpd
    import shapely

    image, cmap = make_scene(tmp_path, size=128, seed=0, nodata_corner=40)
    labels = make_labels(tmp_path, image, cmap)
    gdf = gpd.read_file(labels)
    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    x, y = t * (5, 5)  # in the nodata corner: a 10 x 10 px polygon
    on_nodata = shapely.box(x, y - 100, x + 100, y)
    x, y = t * (100.1, 100.1)  # 0.3 x 0.3 px, around no pixel centre
    tiny = shapely.box(x, y - 3, x + 3, y)
    extra = gpd.GeoDataFrame(
        {"class_name": [gdf["class_name"][0]] * 2}, geometry=[on_nodata, tiny], crs=crs
    ).to_crs(gdf.crs)
    path = tmp_path / "more.gpkg"
    gpd.pd.concat([gdf, extra]).to_file(path)

    def unused(name, labels):
        with pytest.warns(UserWarning) as caught:
            _add(name, image, labels)
        found = {}
        for w in caught:
            m = re.match(r"(\d+) label polygon\(s\) (lie wholly on|cover no pixel)", str(w.message))
            if m:
                found[m[2]] = int(m[1])
        return found

    before, after = unused("plain", labels), unused("unused", path)
    assert after["lie wholly on"] == before.get("lie wholly on", 0) + 1
    assert after["cover no pixel"] == before.get("cover no pixel", 0) + 1


def test_a_mask_whose_zero_covers_most_pixels_suggests_ignoring_it(home, tmp_path, scene):
    with rasterio.open(scene["image"]) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
    m = scene["cmap"].astype(np.uint8) + 1
    m[:80] = 0  # most of the mask: 0, as tools write "unlabelled" without a nodata tag
    path = tmp_path / "zero.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(m, 1)
    with pytest.warns(
        UserWarning, match=r"mask value 0 is a class covering 6\d% .*--ignore-values 0"
    ):
        ds = _add("zero", scene["image"], path, class_column=None)
    assert [c["value"] for c in ds.classes] == [0, 1, 2, 3]
    # the hint works: with it, 0 is unlabelled
    ds = _add("ignored", scene["image"], path, class_column=None, mask_ignore_values=[0])
    assert [c["value"] for c in ds.classes] == [1, 2, 3]
    assert (_read(ds.file("mask"))[:80] == 255).all()


def test_a_stray_point_among_polygons_is_dropped_with_a_warning(home, scene, tmp_path):
    import geopandas as gpd
    import shapely

    gdf = gpd.read_file(scene["labels"])
    c = gdf.geometry[0].centroid
    stray = gpd.GeoDataFrame(
        {"class_name": [gdf["class_name"][0]] * 2},
        geometry=[c, shapely.LineString([c, shapely.Point(c.x + 1e-4, c.y)])],
        crs=gdf.crs,
    )
    path = tmp_path / "mixed.gpkg"
    gpd.pd.concat([gdf, stray]).to_file(path)
    with pytest.warns(
        UserWarning, match=r"2 label\(s\) of mixed.gpkg are not polygons \(LineString, Point\)"
    ):
        ds = _add("mixed", scene["image"], path)
    ref = _add("polys", scene["image"], scene["labels"])
    np.testing.assert_array_equal(_read(ds.file("mask")), _read(ref.file("mask")))


def test_an_image_given_as_labels_is_named(home, scene, tmp_path):
    # the image itself (several bands), or one band of it (hundreds of values): not a mask
    with pytest.raises(LabelError, match="has 4 bands; a mask is one band of class values"):
        _add("image_as_labels", scene["image"], scene["image"], class_column=None)
    with rasterio.open(scene["image"]) as src:
        profile, band = src.profile | {"count": 1}, src.read(1)
    one = tmp_path / "one_band.tif"
    with rasterio.open(one, "w", **profile) as dst:
        dst.write(band, 1)
    with pytest.raises(LabelError, match=r"holds \d+ distinct values; .* at most 254 classes"):
        _add("band_as_labels", scene["image"], one, class_column=None)
    assert list_datasets() == []


def test_each_part_of_a_dissolved_class_is_a_label_of_its_own(home, scene, tmp_path):
    """QGIS's Dissolve makes one multi-part feature per class; its parts are still separate
    areas, each a label unit the spatial split places, not one polygon cut across splits."""
    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"])
    dissolved = gdf.dissolve(by="class_name").reset_index()
    path = tmp_path / "dissolved.gpkg"
    dissolved.to_file(path)
    parts = len(dissolved.explode(index_parts=False))
    assert len(dissolved) == 3 < parts
    ds = _add("dissolved", scene["image"], path)
    base = _add("plain", scene["image"], scene["labels"])
    np.testing.assert_array_equal(_read(ds.file("mask")), _read(base.file("mask")))
    assert len(np.unique(_read(ds.file("units")))) - 1 == parts  # 0: no unit
    src = ds.manifest["source"]
    assert (src["n_labels"], src["n_label_parts"]) == (3, parts)
    assert all(ds.manifest["splits"]["pixels"][s] for s in ("train", "val", "test"))


def test_a_url_given_as_image_is_said_to_be_one_and_the_download_hint_works(scene, tmp_path):
    import functools
    import re
    import shlex
    import shutil
    import subprocess
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from datamodules.imagery import open_scenes

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(scene["dir"]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{scene['image'].name}"
        with pytest.raises(
            ImageryError, match=r"--image takes files on this machine, not URL"
        ) as e:
            open_scenes([url])
        line = re.search(r"\((curl -LO \S+)\)", str(e.value))[1]
        get = tmp_path / "download"
        get.mkdir()
        if shutil.which("curl"):  # the hint, followed
            subprocess.run(shlex.split(line), cwd=get, check=True, capture_output=True)
        else:  # the same request without curl
            import httpx

            (get / scene["image"].name).write_bytes(httpx.get(url).content)
        got = get / scene["image"].name
        assert got.read_bytes() == scene["image"].read_bytes()
        assert open_scenes([got])[0].bands == open_scenes([scene["image"]])[0].bands
    finally:
        server.shutdown()
    with pytest.raises(ImageryError, match=r"\(s3://b/x.tif\): copy it to this machine first"):
        open_scenes(["s3://b/x.tif"])


def test_a_scene_in_degrees_gives_a_dataset_without_library_warnings(home, scene, tmp_path):
    """A scene exported in EPSG:4326 (Copernicus Browser's default): its pixel size is said in
    degrees, and no geopandas warning about areas in a geographic CRS reaches the user."""
    import warnings

    from synth import in_crs

    from datamodules.data_cli import describe

    degrees = in_crs(scene["image"], tmp_path / "degrees.tif", "EPSG:4326")
    with rasterio.open(degrees) as src:
        t, w, h = src.transform, src.width, src.height
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ingest(name="deg", images=[degrees], labels=scene["labels"],
                    class_column="class_name", block_size=32, progress=False)  # fmt: skip
    assert not [c for c in caught if "geographic CRS" in str(c.message)]
    assert f"grid: {w}x{h} px at {abs(t.a):g} °, EPSG:4326" in describe(ds)
    assert sum(c["pixels"] for c in ds.manifest["classes"]) > 1000
