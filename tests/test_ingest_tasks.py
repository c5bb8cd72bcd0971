"""Ingestion for scene classification (chips from points/polygons) and change detection (two
dates + change polygons + a background class)."""

import csv

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import shapes
from synth import CLASSES, make_scene

from datamodules.imagery import ImageryError
from datamodules.ingest import ingest
from datamodules.labels import LabelError
from datamodules.manifest import list_datasets


def _points(folder, image, cmap, n=240, seed=0, multi=False, polygons=False, name="points.gpkg"):
    """Labels at random pixels with the class there (multi: every third also names the next)."""
    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    rng = np.random.default_rng(seed)
    rc = rng.integers(0, cmap.shape[0], (n, 2))
    names = []
    for i, (r, c) in enumerate(rc):
        cls = CLASSES[cmap[r, c]]
        names.append(f"{cls};{CLASSES[(cmap[r, c] + 1) % 3]}" if multi and i % 3 == 0 else cls)
    centres = [shapely.Point(*(t @ (c + 0.5, r + 0.5))) for r, c in rc]
    geoms = [p.buffer(15, cap_style="square") for p in centres] if polygons else centres
    path = folder / name
    gpd.GeoDataFrame({"lc": names}, geometry=geoms, crs=crs).to_crs("EPSG:4326").to_file(path)
    return path, rc


def _chips(ds):
    with open(ds.file("chips")) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("polygons", [False, True], ids=["points", "polygons"])
def test_classification_chips_centred_on_each_label(home, tmp_path, polygons):
    image, cmap = make_scene(tmp_path, size=256, seed=0)
    labels, rc = _points(tmp_path, image, cmap, polygons=polygons)
    ds = ingest(
        name="lc", images=[image], labels=labels, class_column="lc", task="classification",
        chip_size=32, block_size=64, progress=False,
    )  # fmt: skip
    m = ds.manifest
    assert m["task"] == "classification" and m["chip_size"] == 32 and m["multi_label"] is False
    assert "mask" not in m and (ds.path / "chips.csv").is_file()
    rows = _chips(ds)
    assert list(rows[0]) == ["chip_id", "row", "col", "size", "class_id", "split"]
    assert len(rows) == len(rc)
    names = [c["name"] for c in ds.classes]
    for row, (r, c) in zip(rows, rc, strict=True):
        r0, c0 = int(row["row"]), int(row["col"])
        assert int(row["size"]) == 32
        assert r0 <= r < r0 + 32 and c0 <= c < c0 + 32  # the label lies in its chip ...
        if 16 <= r < 256 - 16 and 16 <= c < 256 - 16:  # ... at its centre, but near the edges
            assert (r0, c0) == (r - 16, c - 16)
        assert names[int(row["class_id"])] == CLASSES[cmap[r, c]]
    # splits by blocks of the chip centre: all classes in every split, counts in the manifest
    sp = m["splits"]
    assert set(sp["units"]) == {"train", "val", "test"} and sum(sp["units"].values()) == len(rc)
    for split, per_class in sp["chips"].items():
        assert all(v >= 1 for v in per_class.values()), split
    block = {}
    for row in rows:
        b = ((int(row["row"]) + 16) // 64, (int(row["col"]) + 16) // 64)
        assert block.setdefault(b, row["split"]) == row["split"]  # one split per block
    assert sum(c["units"] for c in m["classes"]) == len(rc)


def test_multi_label_classification(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=256, seed=0)
    labels, rc = _points(tmp_path, image, cmap, multi=True)
    ds = ingest(
        name="tags", images=[image], labels=labels, class_column="lc", task="classification",
        multi_label=True, chip_size=32, block_size=64, progress=False,
    )  # fmt: skip
    assert ds.manifest["multi_label"] is True
    names = [c["name"] for c in ds.classes]
    assert names == sorted(CLASSES)
    rows = _chips(ds)
    for i, (row, (r, c)) in enumerate(zip(rows, rc, strict=True)):
        ids = [int(x) for x in row["class_id"].split(";")]
        expected = {CLASSES[cmap[r, c]]} | (
            {CLASSES[(cmap[r, c] + 1) % 3]} if i % 3 == 0 else set()
        )
        assert {names[k] for k in ids} == expected


def test_classification_drops_nodata_chips_and_checks_coverage(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=256, seed=0, nodata_corner=120)
    labels, rc = _points(tmp_path, image, cmap)
    with pytest.warns(
        UserWarning, match=r"classification chip\(s\) with less than 50% valid pixels"
    ):
        ds = ingest(
            name="lc", images=[image], labels=labels, class_column="lc", task="classification",
            chip_size=32, block_size=64, progress=False,
        )  # fmt: skip
    inside = ((rc[:, 0] < 100) & (rc[:, 1] < 100)).sum()
    assert len(_chips(ds)) <= len(rc) - inside
    with pytest.warns(UserWarning, match=r": (train only|train/\w+ only), no") as caught:
        few = ingest(
            name="few", images=[image], labels=_points(tmp_path, image, cmap, n=4, name="few.gpkg")[0],
            class_column="lc", task="classification", chip_size=32, block_size=64, progress=False,
        )  # fmt: skip
    reach = few.manifest["splits"]["reach"]
    assert all("train" in r["splits"] for r in reach.values())  # every class can be learnt
    notes = {str(w.message) for w in caught}
    assert {r["note"] for r in reach.values() if r["note"]} <= notes


def _change_pair(tmp_path, size=192, maps=False):
    """Two dates: the 'after' scene differs from 'before' where a block of land changed class
    (``maps``: also the class maps of both dates)."""
    before, cmap = make_scene(tmp_path, size=size, seed=0, name="before.tif")
    after_map = cmap.copy()
    changed = np.zeros_like(cmap, dtype=bool)
    for r, c in ((20, 20), (100, 40), (40, 120), (130, 130), (150, 60), (70, 80)):
        changed[r : r + 24, c : c + 24] = True
    after_map[changed] = (cmap[changed] + 1) % 3
    from synth import BANDS, SPECTRA

    rng = np.random.default_rng(5)
    img = SPECTRA[after_map].transpose(2, 0, 1) + rng.normal(0, 120, (len(BANDS), size, size))
    with rasterio.open(before) as src:
        profile = src.profile
    after = tmp_path / "after.tif"
    with rasterio.open(after, "w", **profile) as dst:
        dst.write(np.clip(img, 1, 20000).astype(np.uint16))
        dst.descriptions = tuple(BANDS)
    with rasterio.open(before) as src:
        t, crs = src.transform, src.crs
    polys = [
        shapely.geometry.shape(g)
        for g, v in shapes(changed.astype(np.uint8), mask=changed, transform=t)
    ]
    labels = tmp_path / "change.geojson"
    gpd.GeoDataFrame({"class": ["change"] * len(polys)}, geometry=polys, crs=crs).to_file(labels)
    if maps:
        return before, after, labels, changed, cmap, after_map
    return before, after, labels, changed


def _class_polygons(path, image, class_map, rows, to_crs):
    """Class polygons (column ``lc``) of ``class_map`` over a band of ``rows``, saved in ``to_crs``."""
    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    inside = np.zeros(class_map.shape, dtype=bool)
    inside[rows] = True
    shp = shapes(class_map.astype(np.uint8), mask=inside, transform=t)
    geoms, names = zip(*[(shapely.geometry.shape(g), CLASSES[int(v)]) for g, v in shp], strict=True)
    gpd.GeoDataFrame({"lc": names}, geometry=list(geoms), crs=crs).to_crs(to_crs).to_file(path)
    return path


def test_change_labels_from_before_and_after_class_polygons(home, tmp_path, capsys):
    """Class polygons of each date (different files, formats and CRSs) give change labels where
    both dates are labelled: no_change/change, or one class per transition; elsewhere ignore."""
    from trainer.cli import main

    before, after, _, changed, cmap, after_map = _change_pair(tmp_path, maps=True)
    b = _class_polygons(tmp_path / "lc2021.gpkg", before, cmap, slice(0, 150), "EPSG:4326")
    a = _class_polygons(tmp_path / "lc2023.fgb", before, after_map, slice(40, None), "EPSG:3857")
    ds = ingest(
        name="lc", images=[before, after], labels=b, labels_after=a, class_column="lc",
        task="change", block_size=48, progress=False,
    )  # fmt: skip
    assert [(c["id"], c["name"]) for c in ds.classes] == [(0, "no_change"), (1, "change")]
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    both = np.zeros(mask.shape, dtype=bool)
    both[40:150] = True
    np.testing.assert_array_equal(mask[both], changed[both].astype(np.uint8))
    assert (mask[~both] == 255).all()  # labelled on one date only: change unknown
    m = ds.manifest
    assert m["label_kind"] == "before/after class polygons"
    src = m["source"]
    assert (src["labels"], src["labels_after"], src["change_classes"]) == (
        "lc2021.gpkg", "lc2023.fgb", "binary"
    )  # fmt: skip

    code = main(["data", "add", "--name", "lc-transitions", "--image", str(before), "--image",
                 str(after), "--labels", str(b), "--labels-after", str(a), "--class-column", "lc",
                 "--task", "change", "--change-classes", "transitions", "--block-size", "48",
                 "--min-class-pixels", "0"])  # fmt: skip
    assert code == 0
    assert main(["data", "show", "lc_transitions"]) == 0
    assert "before/after class polygons" in capsys.readouterr().out
    ds = next(d for d in list_datasets() if d.id == "lc_transitions")
    names = {c["id"]: c["name"] for c in ds.classes}
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    assert names[0] == "no_change" and len(names) > 2
    # boundaries reprojected from two CRSs leave slivers; none becomes a class without pixels
    assert ds.manifest["source"]["n_slivers_dropped"] > 0
    assert all(c["pixels"] > 0 for c in ds.classes)
    for r, c in zip(*np.nonzero(both & changed), strict=True):
        assert names[mask[r, c]] == f"{CLASSES[cmap[r, c]]}→{CLASSES[after_map[r, c]]}"
    assert (mask[both & ~changed] == 0).all()


def test_change_labels_from_class_polygons_errors(home, tmp_path):
    before, after, change, _, cmap, after_map = _change_pair(tmp_path, maps=True)
    b = _class_polygons(tmp_path / "b.geojson", before, cmap, slice(0, 60), "EPSG:4326")
    a = _class_polygons(tmp_path / "a.geojson", before, after_map, slice(100, None), "EPSG:4326")
    kw = {"images": [before, after], "class_column": "lc", "progress": False}
    with pytest.raises(LabelError, match=r"--labels-after is for --task change"):
        ingest(name="x", labels=b, labels_after=a, **kw)
    with pytest.raises(LabelError, match=r"do not overlap anywhere; change is known only where"):
        ingest(name="x", labels=b, labels_after=a, task="change", **kw)
    with pytest.raises(LabelError, match=r"--change-classes must be one of binary, transitions"):
        ingest(name="x", labels=b, labels_after=b, task="change", change_classes="all", **kw)
    mask = tmp_path / "mask.tif"
    with rasterio.open(before) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8"}
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(cmap.astype(np.uint8), 1)
    with pytest.raises(LabelError, match=r"must both be class polygons to derive change labels"):
        ingest(name="x", labels=mask, labels_after=a, task="change", **kw)
    assert list_datasets() == []


def test_change_two_dates_change_polygons_and_background(home, tmp_path):
    before, after, labels, changed = _change_pair(tmp_path)
    ds = ingest(
        name="chg", images=[before, after], labels=labels, task="change", background="no_change",
        dates=["2021-06-01", "2023-06-01"], block_size=48, progress=False,
    )  # fmt: skip
    m = ds.manifest
    assert m["task"] == "change" and m["dates"] == ["2021-06-01", "2023-06-01"]
    assert [im["path"] for im in m["images"]] == ["image_t0.tif", "image_t1.tif"]
    assert [(c["id"], c["name"]) for c in ds.classes] == [(0, "no_change"), (1, "change")]
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    np.testing.assert_array_equal(mask, changed.astype(np.uint8))  # every pixel labelled
    with rasterio.open(ds.images[1]) as src, rasterio.open(after) as ref:
        np.testing.assert_array_equal(src.read(), ref.read())
    assert all(v > 0 for s in m["splits"]["pixels"].values() for v in s.values())


def test_task_option_errors(home, tmp_path):
    before, after, labels, _ = _change_pair(tmp_path)
    with pytest.raises(
        ImageryError,
        match=r"--task change needs exactly two dates, got 1: pass --image before.tif --image after.tif",
    ):
        ingest(name="x", images=[before], labels=labels, task="change", progress=False)
    with pytest.raises(ImageryError, match=r"--task classification takes one scene, got 2 dates"):
        ingest(
            name="x", images=[before, after], labels=labels, task="classification", progress=False
        )
    with pytest.raises(
        LabelError,
        match=r"--task must be one of segmentation, classification, change, not 'detection'",
    ):
        ingest(name="x", images=[before], labels=labels, task="detection", progress=False)
    with pytest.raises(LabelError, match=r"--multi-label is for --task classification only"):
        ingest(name="x", images=[before], labels=labels, multi_label=True, progress=False)
    with pytest.raises(
        LabelError, match=r"--background is for segmentation and change, not classification"
    ):
        ingest(
            name="x",
            images=[before],
            labels=labels,
            task="classification",
            background="bg",
            progress=False,
        )
    with pytest.raises(LabelError, match=r"--chip-size is for --task classification"):
        ingest(name="x", images=[before], labels=labels, chip_size=32, progress=False)
    lines = tmp_path / "lines.geojson"
    gpd.GeoDataFrame(
        {"class": ["a"]}, geometry=[shapely.LineString([(0, 0), (1, 1)])], crs="EPSG:4326"
    ).to_file(lines)
    with pytest.raises(
        LabelError,
        match=r"classification labels must be points or polygons; lines.geojson holds LineString",
    ):
        ingest(name="x", images=[before], labels=lines, task="classification", progress=False)
    with pytest.raises(
        LabelError,
        match=r"segmentation and change labels must be polygons; lines.geojson holds LineString",
    ):
        ingest(name="x", images=[before], labels=lines, progress=False)
    assert list_datasets() == []


def test_a_field_survey_table_of_longitudes_and_latitudes_gives_the_same_chips(home, tmp_path):
    """A CSV of points (a survey; ODK/KoboToolbox exports: semicolons, decimal commas, a blank
    row) is read as its longitude/latitude columns in EPSG:4326: the same chips as a GeoPackage
    of the same points."""
    import pandas as pd

    image, cmap = make_scene(tmp_path, size=256, seed=0)
    gpkg, rc = _points(tmp_path, image, cmap, n=60)
    pts = gpd.read_file(gpkg)
    kw = dict(images=[image], class_column="lc", task="classification", chip_size=32,
              block_size=64, progress=False)  # fmt: skip
    ref = _chips(ingest(name="gpkg", labels=gpkg, **kw))
    table = pd.DataFrame({"lat": pts.geometry.y, "lon": pts.geometry.x, "lc": pts["lc"]})
    table.to_csv(tmp_path / "survey.csv", index=False)
    assert _chips(ingest(name="csv", labels=tmp_path / "survey.csv", **kw)) == ref

    odk = pd.DataFrame({
        "start": "2024-05-01",
        "_gps_latitude": [f"{v:.9f}".replace(".", ",") for v in pts.geometry.y],
        "_gps_longitude": [f"{v:.9f}".replace(".", ",") for v in pts.geometry.x],
        "lc": pts["lc"],
    })  # fmt: skip
    odk = pd.concat([odk.iloc[:3], odk.iloc[:1].assign(_gps_latitude=""), odk.iloc[3:]])
    odk.to_csv(tmp_path / "odk.csv", sep=";", index=False)
    with pytest.warns(UserWarning, match=r"1 row\(s\) of odk.csv have no _gps_longitude/_gps_lat"
                      r"itude numbers \(lines 5\); left out"):  # fmt: skip
        assert _chips(ingest(name="odk", labels=tmp_path / "odk.csv", **kw)) == ref

    # projected coordinates in lon/lat columns, and a table with no coordinates, are refused
    xy = pd.DataFrame({"lon": [500100.0], "lat": [4199900.0], "lc": ["water"]})
    xy.to_csv(tmp_path / "utm.csv", index=False)
    with pytest.raises(LabelError, match=r"not longitudes and latitudes. Projected coordinates"):
        ingest(name="utm", labels=tmp_path / "utm.csv", **kw)
    pd.DataFrame({"site": [1], "lc": ["water"]}).to_csv(tmp_path / "bare.csv", index=False)
    with pytest.raises(LabelError, match=r"bare.csv is a table without geometries.*Its columns"):
        ingest(name="bare", labels=tmp_path / "bare.csv", **kw)
    assert [d.id for d in list_datasets()] == ["csv", "gpkg", "odk"]
